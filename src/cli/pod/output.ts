// How `cocoon pod` shows things: tables, ages, sizes, states and JSON.
import { ContainerState, PodSandboxState, type PodSandbox } from "../../gen/cri/runtime/v1/api_pb.js";
import type { PodIO } from "./common.js";

export const shortId = (id: string): string => id.slice(0, 12);

export const podState = (s: PodSandboxState): string => (s === PodSandboxState.SANDBOX_READY ? "Ready" : "NotReady");

const CONTAINER_STATES: Record<ContainerState, string> = {
  [ContainerState.CONTAINER_CREATED]: "Created",
  [ContainerState.CONTAINER_RUNNING]: "Running",
  [ContainerState.CONTAINER_EXITED]: "Exited",
  [ContainerState.CONTAINER_UNKNOWN]: "Unknown",
};
export const containerState = (s: ContainerState): string => CONTAINER_STATES[s] ?? String(s);

export const podLabel = (p: PodSandbox): string => `${p.metadata?.namespace ?? "?"}/${p.metadata?.name ?? "?"}`;

/** Columns separated by two spaces; the last column is not padded. */
export function renderTable(header: string[], rows: string[][], indent = ""): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  return [header, ...rows].map((r) => (indent + r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")).trimEnd());
}

/** "3s ago", "5m ago", "2h ago", "4d ago" from a CRI timestamp (ns since the epoch). */
export function age(ns: bigint, nowMs = Date.now()): string {
  const s = Math.max(0, Math.floor((nowMs - Number(ns / 1_000_000n)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86_400)}d ago`;
}

export const isoTime = (ns: bigint): string | null => (ns > 0n ? new Date(Number(ns / 1_000_000n)).toISOString() : null);

export function humanBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v}B` : `${v.toFixed(1)}${units[u]}`;
}

export const json = (io: PodIO, v: unknown) => io.out(`${JSON.stringify(v, null, 2)}\n`);
