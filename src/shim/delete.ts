// `delete`: what containerd runs after every task and after a daemon died, plus the small state
// file runtimes leave in each bundle so that it can clean up without the daemon.
import { readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { DeleteResponseSchema } from "../gen/containerd/task/v2/shim_pb.js";
import type { ShimFlags } from "./flags.js";
import { canConnect } from "./address.js";
import { sweepSpares } from "./spare-pool.js";
import { sweepDeadDaemons } from "./fast-start.js";

/** What a runtime leaves in the bundle so `delete` can clean up without the daemon. */
export interface BundleState {
  mode: string;
  [k: string]: unknown;
}

export const STATE_FILE = "cocoon-state.json";

export function writeBundleState(bundle: string, state: BundleState) {
  const tmp = path.join(bundle, `.${STATE_FILE}`);
  writeFileSync(tmp, JSON.stringify(state));
  renameSync(tmp, path.join(bundle, STATE_FILE));
}

export function readBundleState(bundle: string): BundleState | undefined {
  try {
    return JSON.parse(readFileSync(path.join(bundle, STATE_FILE), "utf8"));
  } catch {
    return undefined;
  }
}

export type Cleanup = (id: string, bundle: string, state: BundleState) => Promise<{ pid: number }>;

/**
 * `delete`: containerd runs this after every task and after a daemon died. It must be idempotent,
 * finish within containerd's 5 s, and print only the raw DeleteResponse on stdout.
 */
export async function deleteCommand(flags: ShimFlags, cleanups: Record<string, Cleanup>): Promise<Uint8Array> {
  const bundle = flags.bundle || process.cwd();
  const state = readBundleState(bundle);
  let pid = 0;
  if (state) {
    const cleanup = cleanups[state.mode];
    if (cleanup) pid = (await cleanup(flags.id, bundle, state)).pid;
  }
  await removeDeadSocket(bundle);
  sweepSpares();
  sweepDeadDaemons();
  const res = create(DeleteResponseSchema, { pid, exitStatus: 128 + 9, exitedAt: timestampFromDate(new Date()) });
  return toBinary(DeleteResponseSchema, res);
}

/** A daemon killed with SIGKILL leaves its socket file behind; remove it once nobody listens there. */
async function removeDeadSocket(bundle: string) {
  let address = "";
  try {
    address = readFileSync(path.join(bundle, "address"), "utf8").trim();
  } catch {
    return;
  }
  const sock = address.replace(/^unix:\/\//, "");
  if (!sock.startsWith("/") || (await canConnect(sock, 100))) return;
  try {
    unlinkSync(sock);
  } catch {}
}

