// Read-only views of host state from /proc, used by the harness teardown and the leak checker.
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { liveDaemons } from "../../src/shim/fast-start.js";
import { procStat } from "../../src/sys/procstat.js";

export interface ProcInfo {
  pid: number;
  ppid: number;
  /** Clock ticks since boot; with pid it identifies a process across pid reuse. */
  startTime: string;
  args: string[];
  /** Empty when unreadable (process exited, or a kernel thread). */
  cwd: string;
  /** Target of /proc/<pid>/ns/pid, e.g. `pid:[4026531836]`; empty when unreadable. */
  pidNs: string;
}

function readLink(path: string): string {
  try {
    return readlinkSync(path);
  } catch {
    // exited or not permitted
    return "";
  }
}

function readProc(pid: number): ProcInfo | undefined {
  try {
    const stat = procStat(pid);
    if (!stat) return undefined;
    const { ppid, startTime } = stat;
    const raw = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    const args = raw.split("\0");
    if (args.length && args[args.length - 1] === "") args.pop();
    const cwd = readLink(`/proc/${pid}/cwd`);
    return { pid, ppid, startTime, args, cwd, pidNs: readLink(`/proc/${pid}/ns/pid`) };
  } catch {
    return undefined;
  }
}

/** Every live process except kernel threads (which have an empty cmdline). */
export function listProcesses(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const p = readProc(Number(name));
    if (p && p.args.length) out.push(p);
  }
  return out;
}

export function processKey(p: ProcInfo): string {
  return `${p.pid}@${p.startTime}`;
}

export function describeProcess(p: ProcInfo): string {
  const cmd = p.args.join(" ");
  return `pid ${p.pid}: ${cmd.length > 300 ? cmd.slice(0, 300) + "…" : cmd}${p.cwd ? ` (cwd ${p.cwd})` : ""}`;
}

/** True while the process exists and is not a zombie (a zombie has exited; only its parent's reaping is left). */
export function isAlive(pid: number): boolean {
  const state = procStat(pid)?.state;
  return state !== undefined && state !== "Z";
}

export interface MountInfo {
  id: string;
  mountPoint: string;
  fsType: string;
  source: string;
}

// mountinfo escapes space, tab, newline and backslash as three-digit octal.
const unescapeMount = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

export function readMountinfo(): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    if (!line) continue;
    const f = line.split(" ");
    const sep = f.indexOf("-", 6);
    out.push({
      id: f[0]!,
      mountPoint: unescapeMount(f[4]!),
      fsType: sep > 0 ? (f[sep + 1] ?? "") : "",
      source: sep > 0 ? unescapeMount(f[sep + 2] ?? "") : "",
    });
  }
  return out;
}

export function describeMount(m: MountInfo): string {
  return `${m.mountPoint} (${m.fsType} from ${m.source})`;
}

/** True when `path` is `dir` or lies below it. */
export function isUnder(path: string, dir: string): boolean {
  const d = dir.endsWith("/") ? dir : dir + "/";
  return path === dir || path.startsWith(d);
}

/** The given processes plus all their descendants (by parent pid), from one listing. */
export function withDescendants(roots: ProcInfo[], all: ProcInfo[]): ProcInfo[] {
  const byPid = new Map(roots.map((p) => [p.pid, p]));
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of all) {
      if (!byPid.has(p.pid) && byPid.has(p.ppid)) {
        byPid.set(p.pid, p);
        grew = true;
      }
    }
  }
  return [...byPid.values()];
}

/** The value of a Go-style flag (`-name value`, `--name value`, `-name=value`) in an argv. */
export function flagValue(args: string[], name: string): string | undefined {
  const i = args.findIndex((a) => a === `-${name}` || a === `--${name}`);
  if (i >= 0) return args[i + 1];
  const eq = args.find((a) => a.startsWith(`-${name}=`) || a.startsWith(`--${name}=`));
  return eq?.slice(eq.indexOf("=") + 1);
}

export type CocoonRole = "daemon" | "spare";

/**
 * What a long-lived Cocoon shim process is: a daemon serving containers, or an idle spare waiting to
 * become one. A spare keeps its argv (action `spare`) when it becomes a daemon, so that is told by
 * the daemon records (src/shim/fast-start.ts), which name the pid once it serves.
 */
export function cocoonRole(p: ProcInfo, daemons: Map<number, string> = liveDaemons()): CocoonRole | undefined {
  if (!p.args.some((a) => a.includes("containerd-shim-cocoon"))) return undefined;
  const action = p.args[p.args.length - 1];
  if (action === "daemon") return "daemon";
  if (action === "spare") return daemons.has(p.pid) ? "daemon" : "spare";
  return undefined;
}

/** Pids of the Cocoon shims of the containerd at `address` in this role. */
export function cocoonShims(address: string, role: CocoonRole, all: ProcInfo[] = listProcesses()): number[] {
  const daemons = liveDaemons();
  return all.filter((p) => flagValue(p.args, "address") === address && cocoonRole(p, daemons) === role).map((p) => p.pid);
}
