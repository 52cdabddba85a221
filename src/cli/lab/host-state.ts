// What a private containerd may leave on the host if it does not shut down cleanly: processes that refer to
// its directory (shim daemons carry its socket path in their arguments) with their children, and mounts
// below its directory (container rootfs, network namespaces). Read from /proc.
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { procStat } from "../../sys/procstat.js";

export interface Proc {
  pid: number;
  ppid: number;
  args: string[];
  cwd: string;
}

function readProc(pid: number): Proc | undefined {
  try {
    const stat = procStat(pid);
    if (!stat) return undefined;
    const ppid = stat.ppid;
    const args = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    if (args[args.length - 1] === "") args.pop();
    let cwd = "";
    try {
      cwd = readlinkSync(`/proc/${pid}/cwd`);
    } catch {
      // not permitted or gone
    }
    return { pid, ppid, args, cwd };
  } catch {
    return undefined;
  }
}

/** Every process with a command line (kernel threads have none). */
export function listProcesses(): Proc[] {
  const out: Proc[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const p = readProc(Number(name));
    if (p?.args.length) out.push(p);
  }
  return out;
}

export const isUnder = (path: string, dir: string) => path === dir || path.startsWith(dir.endsWith("/") ? dir : dir + "/");

/** Processes (other than this one) whose arguments or cwd mention `dir`, plus all their descendants. */
export function processesUsing(dir: string, all: Proc[] = listProcesses()): Proc[] {
  const roots = all.filter((p) => p.pid !== process.pid && (isUnder(p.cwd, dir) || p.args.some((a) => a.includes(dir))));
  const found = new Map(roots.map((p) => [p.pid, p]));
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of all) {
      if (!found.has(p.pid) && found.has(p.ppid)) {
        found.set(p.pid, p);
        grew = true;
      }
    }
  }
  return [...found.values()];
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
const unescapeMountPath = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Mount points at or below `dir`, deepest first (the order to unmount them in). */
export function mountsUnder(dir: string): string[] {
  let text = "";
  try {
    text = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const points = text
    .split("\n")
    .map((l) => l.split(" ")[4])
    .filter((p): p is string => !!p)
    .map(unescapeMountPath)
    .filter((p) => isUnder(p, dir));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}
