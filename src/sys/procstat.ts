// /proc/<pid>/stat, read the one safe way: the command name may hold spaces and parentheses, so the
// fields are counted after the last ")".
import { readFileSync } from "node:fs";

export interface ProcStat {
  /** R, S, D, Z, T, … */
  state: string;
  ppid: number;
  /** Clock ticks after boot: with the pid, it names one process for good (pids are reused). */
  startTime: string;
}

export function procStat(pid: number): ProcStat | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { state: f[0] ?? "", ppid: Number(f[1]), startTime: f[19] ?? "" };
}
