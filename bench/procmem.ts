// Finds the shim daemons a given containerd started and reads their memory from /proc.
import { readFileSync } from "node:fs";
import { listProcesses, type ProcInfo } from "../test/helpers/procfs.js";

export type ShimKind = "runc-v2" | "cocoon";

export interface ShimProcess {
  pid: number;
  kind: ShimKind;
  args: string[];
}

/** Memory of one process in KiB, from smaps_rollup (and VmRSS-style totals). */
export interface ProcMemory {
  rss: number;
  pss: number;
  /** Private_Clean + Private_Dirty: what the process alone keeps resident. */
  uss: number;
  pssAnon: number;
  pssFile: number;
}

const flagValue = (args: string[], name: string): string | undefined => {
  const i = args.findIndex((a) => a === `-${name}` || a === `--${name}`);
  if (i >= 0) return args[i + 1];
  const eq = args.find((a) => a.startsWith(`-${name}=`) || a.startsWith(`--${name}=`));
  return eq?.slice(eq.indexOf("=") + 1);
};

const isCtr = (p: ProcInfo | undefined): boolean => !!p && /(^|\/)ctr$/.test(p.args[0] ?? "");

function kindOf(args: string[]): ShimKind | undefined {
  const joined = args.join(" ");
  // A daemon has no action word: `start` and `delete` are short-lived bootstrap commands.
  if (/(^|\/)containerd-shim-runc-v2$/.test(args[0] ?? "") && !args.includes("start") && !args.includes("delete")) return "runc-v2";
  if (joined.includes("containerd-shim-cocoon-v2") && args.includes("daemon")) return "cocoon";
  return undefined;
}

/** Shim daemons whose `-address` is `address` (so those of other containerds on the host are left out). */
export function findShims(address: string, all: ProcInfo[] = listProcesses()): ShimProcess[] {
  const byPid = new Map(all.map((p) => [p.pid, p]));
  const out: ShimProcess[] = [];
  for (const p of all) {
    const kind = kindOf(p.args);
    if (!kind || flagValue(p.args, "address") !== address || isCtr(byPid.get(p.ppid))) continue;
    out.push({ pid: p.pid, kind, args: p.args });
  }
  return out;
}

export function readMemory(pid: number): ProcMemory | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  } catch {
    return undefined;
  }
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? 0);
  return {
    rss: field("Rss"),
    pss: field("Pss"),
    uss: field("Private_Clean") + field("Private_Dirty"),
    pssAnon: field("Pss_Anon"),
    pssFile: field("Pss_File"),
  };
}

/** Number of threads, from /proc/<pid>/status. */
export function threadCount(pid: number): number {
  try {
    return Number(/^Threads:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
  } catch {
    return 0;
  }
}
