// Finds the shim daemons a given containerd started and reads their memory from /proc.
import { readFileSync, readlinkSync } from "node:fs";
import { basename } from "node:path";
import { liveDaemons } from "../src/shim/fast-start.js";
import { cocoonRole, flagValue, listProcesses, type CocoonRole, type ProcInfo } from "../test/helpers/procfs.js";

export type ShimKind = "runc-v2" | "cocoon";

export interface ShimProcess {
  pid: number;
  kind: ShimKind;
  /** A Cocoon spare is an idle process waiting to become a pod's daemon (src/shim/spare.ts). */
  role: CocoonRole;
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

const isCtr = (p: ProcInfo | undefined): boolean => !!p && /(^|\/)ctr$/.test(p.args[0] ?? "");

/** The script a node process runs: its first argument that is not an option (or option value). */
function scriptOf(args: string[]): string {
  for (let i = 1; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith("-")) return a;
    // Node options that take a separate value.
    if (a === "-r" || a === "--require" || a === "--import" || a === "--snapshot-blob") i++;
  }
  return "";
}

function kindOf(p: ProcInfo, daemons: Map<number, string>): { kind: ShimKind; role: CocoonRole } | undefined {
  const args = p.args;
  const program = basename(args[0] ?? "");
  // A daemon has no action word: `start` and `delete` are short-lived bootstrap commands.
  if (program === "containerd-shim-runc-v2") return args.includes("start") || args.includes("delete") ? undefined : { kind: "runc-v2", role: "daemon" };
  // Cocoon daemons run from whichever bundle the launcher picked (the entry, or a split daemon
  // bundle), so match any cocoon script whose action is `daemon` or `spare` (a spare that became a
  // daemon keeps its argv).
  const script = program === "node" || program.startsWith("node") ? basename(scriptOf(args)) : program;
  if (!/cocoon/.test(script)) return undefined;
  const role = cocoonRole(p, daemons);
  return role ? { kind: "cocoon", role } : undefined;
}

/**
 * Shim daemons whose `-address` is `address` (so those of other containerds on the host are left
 * out); with `spares`, Cocoon's idle spares too.
 */
export function findShims(address: string, all: ProcInfo[] = listProcesses(), opts: { spares?: boolean } = {}): ShimProcess[] {
  const byPid = new Map(all.map((p) => [p.pid, p]));
  const daemons = liveDaemons();
  const out: ShimProcess[] = [];
  for (const p of all) {
    const k = kindOf(p, daemons);
    if (!k || (k.role === "spare" && !opts.spares) || flagValue(p.args, "address") !== address || isCtr(byPid.get(p.ppid))) continue;
    out.push({ pid: p.pid, kind: k.kind, role: k.role, args: p.args });
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

/** Resident and proportional KiB of a process's own executable file (its text and read-only data). */
export function readExeMemory(pid: number): { exe: string; rss: number; pss: number } | undefined {
  let exe: string;
  let text: string;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
    text = readFileSync(`/proc/${pid}/smaps`, "utf8");
  } catch {
    return undefined;
  }
  let inExe = false;
  let rss = 0;
  let pss = 0;
  for (const line of text.split("\n")) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) inExe = header[1] === exe;
    else if (inExe && line.startsWith("Rss:")) rss += Number(line.split(/\s+/)[1]);
    else if (inExe && line.startsWith("Pss:")) pss += Number(line.split(/\s+/)[1]);
  }
  return { exe, rss, pss };
}

/** Number of threads, from /proc/<pid>/status. */
export function threadCount(pid: number): number {
  try {
    return Number(/^Threads:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** One mapping of /proc/<pid>/smaps, sizes in KiB. */
export interface Mapping {
  perms: string;
  /** The path or pseudo-name ("" for anonymous memory). */
  name: string;
  size: number;
  rss: number;
  pss: number;
  anon: number;
}

export function readMappings(pid: number): Mapping[] {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/smaps`, "utf8");
  } catch {
    return [];
  }
  const out: Mapping[] = [];
  let cur: Mapping | undefined;
  for (const line of text.split("\n")) {
    const header = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) {
      cur = { perms: header[1]!, name: header[2] ?? "", size: 0, rss: 0, pss: 0, anon: 0 };
      out.push(cur);
      continue;
    }
    const field = /^(Size|Rss|Pss|Anonymous):\s+(\d+) kB/.exec(line);
    if (!cur || !field) continue;
    const v = Number(field[2]);
    if (field[1] === "Size") cur.size = v;
    else if (field[1] === "Rss") cur.rss = v;
    else if (field[1] === "Pss") cur.pss = v;
    else cur.anon = v;
  }
  return out;
}
