// Collects exit statuses of processes re-parented to the shim (it is a child subreaper): container
// init and exec processes. Pids are registered once known (from runc's pid files); an exit that
// happens before registration is kept in a short-lived cache so it is never lost, and zombies that
// nobody claims are reaped so they do not pile up. Node's own children are left to libuv.
import { readdirSync, readFileSync } from "node:fs";
import type { ExitStatus, Sys } from "./types.js";
import { isOwnChild } from "./children.js";
import { procStat } from "./procstat.js";

export interface Exit {
  pid: number;
  /** Exit code, or 128 + signal number for a signalled process (the shell/containerd convention). */
  status: number;
  at: Date;
}

const UNCLAIMED_TTL_MS = 60_000;

export function exitCodeOf(s: ExitStatus): number {
  return s.signal !== null ? 128 + s.signal : (s.code ?? 0);
}

export class Reaper {
  private watched = new Map<number, (e: Exit) => void>();
  private unclaimed = new Map<number, Exit>();
  private stopSignals: (() => void) | undefined;

  constructor(private readonly sys: Sys) {}

  start() {
    if (this.stopSignals) return;
    this.sys.setChildSubreaper();
    this.stopSignals = this.sys.onSigchld(() => this.reapAll());
  }

  stop() {
    this.stopSignals?.();
    this.stopSignals = undefined;
  }

  /** Calls onExit once when pid exits (immediately if it already did). */
  watch(pid: number, onExit: (e: Exit) => void) {
    const early = this.unclaimed.get(pid);
    if (early) {
      this.unclaimed.delete(pid);
      queueMicrotask(() => onExit(early));
      return;
    }
    this.watched.set(pid, onExit);
    this.tryOne(pid);
  }

  unwatch(pid: number) {
    this.watched.delete(pid);
  }

  private tryOne(pid: number): boolean {
    let st: ExitStatus | null;
    try {
      st = this.sys.tryReap(pid);
    } catch (err) {
      // Not our child (any more): nothing will ever report it. Surface as a lost process.
      if ((err as NodeJS.ErrnoException).code === "ECHILD") {
        const cb = this.watched.get(pid);
        if (cb && !isAlive(pid)) {
          this.watched.delete(pid);
          cb({ pid, status: 255, at: new Date() });
          return true;
        }
      }
      return false;
    }
    if (!st) return false;
    const exit = { pid, status: exitCodeOf(st), at: new Date() };
    const cb = this.watched.get(pid);
    if (cb) {
      this.watched.delete(pid);
      cb(exit);
    } else {
      this.unclaimed.set(pid, exit);
      setTimeout(() => this.unclaimed.delete(pid), UNCLAIMED_TTL_MS).unref();
    }
    return true;
  }

  /** On SIGCHLD: reap watched pids, then any other zombie child that is not Node's own. */
  reapAll() {
    for (const pid of [...this.watched.keys()]) this.tryOne(pid);
    for (const pid of zombieChildren()) {
      if (!this.watched.has(pid) && !isOwnChild(pid)) this.tryOne(pid);
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Zombie children of this process, from /proc (threads can have children too). */
function zombieChildren(): number[] {
  const out: number[] = [];
  let tasks: string[];
  try {
    tasks = readdirSync("/proc/self/task");
  } catch {
    return out;
  }
  for (const t of tasks) {
    let list: string;
    try {
      list = readFileSync(`/proc/self/task/${t}/children`, "utf8");
    } catch {
      continue;
    }
    for (const s of list.split(" ")) {
      const pid = Number(s);
      if (!pid) continue;
      if (procStat(pid)?.state === "Z") out.push(pid);
    }
  }
  return out;
}
