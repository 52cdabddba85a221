// A memo that lets the launcher script answer `start` without starting Node when the container's
// daemon already runs (the second and later containers of a pod, every container with node
// grouping): Node's own start-up costs more than runc-v2's whole `start`. The launcher computes the
// memo keys and passes them to Node (start-protocol.ts), which records "this key led to this
// address"; each daemon records its pid, and the launcher trusts a memo only while that daemon is
// alive and owns the socket. A daemon's record is "<pid> <start time> <socket>", so that a reused pid
// never passes for it. docs/start-protocol.md has the whole protocol.
import { lstatSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";
import { procStat } from "../sys/procstat.js";
import { DEFAULT_RUN_DIR, RUN_DIR_ENV, RUN_SUBDIRS } from "./start-protocol.js";
import { ensurePrivateDir, isPrivateDir, readStateFileOrUndefined, writeStateFile } from "./statefs.js";

/** Root's alone (0700, checked): the launcher trusts what it finds here only after checking that too. */
export const RUN_DIR = process.env[RUN_DIR_ENV] || DEFAULT_RUN_DIR;

/** Whether RUN_DIR exists and is root's alone (nothing in it can be another user's). */
export function runDirTrusted(): boolean {
  return isPrivateDir(RUN_DIR);
}

/** Creates or checks RUN_DIR and one of its subdirectories; throws UnsafePathError if either is not root's alone. */
export function runSubdir(...names: string[]): string {
  ensurePrivateDir(RUN_DIR);
  const dir = path.join(RUN_DIR, ...names);
  ensurePrivateDir(dir);
  return dir;
}

/**
 * Where the launcher keeps one `start`'s stdin and key inputs while it hashes them
 * ("<its pid>.in|.pod|.node|.pool"). It only uses RUN_DIR once this made both root's alone.
 */
export function ensureStartDirs() {
  runSubdir(RUN_SUBDIRS.start);
}

/** Removes the inputs of launchers that were killed before they could (their pid is gone). */
export function sweepStartInputs() {
  const dir = path.join(RUN_DIR, RUN_SUBDIRS.start);
  for (const n of listNames(dir)) {
    const pid = Number(n.split(".")[0]);
    if (!Number.isInteger(pid) || pid <= 0 || processStartTime(pid) === undefined) rmSync(path.join(dir, n), { force: true });
  }
}

/** Records that the launcher's memo key `key` leads to `address`. */
export function rememberStart(key: string, address: string) {
  try {
    writeStateFile(path.join(runSubdir(RUN_SUBDIRS.memos), key), address);
  } catch {
    // Only an optimisation: the next start takes the Node path again.
  }
}

export function daemonPidFile(socket: string): string {
  return path.join(RUN_DIR, RUN_SUBDIRS.daemons, path.basename(socket));
}

/**
 * Field 22 of /proc/<pid>/stat (clock ticks after boot): with the pid, it names one process for good.
 * Undefined for a process that is gone, a zombie included (a killed daemon stays one until reaped).
 */
export function processStartTime(pid: number): string | undefined {
  const st = procStat(pid);
  return st && st.state !== "Z" && st.state !== "X" ? st.startTime : undefined;
}

export function recordDaemon(socket: string) {
  try {
    runSubdir(RUN_SUBDIRS.daemons);
    writeStateFile(daemonPidFile(socket), `${process.pid} ${processStartTime(process.pid) ?? "?"} ${socket}`);
  } catch {}
}

/** A daemon's record: the file (named after its socket) and whether that very process still runs. */
interface DaemonRecord {
  file: string;
  pid: number;
  socket: string;
  alive: boolean;
}

function daemonRecords(): DaemonRecord[] {
  const dir = path.join(RUN_DIR, RUN_SUBDIRS.daemons);
  const out: DaemonRecord[] = [];
  for (const n of listNames(dir)) {
    const text = readStateFileOrUndefined(path.join(dir, n));
    if (text === undefined) {
      // Not ours to trust (a symlink, a FIFO): gone, so the launcher cannot trip over it either.
      rmSync(path.join(dir, n), { force: true });
      continue;
    }
    const [pid, start, socket] = text.trim().split(" ");
    out.push({ file: path.join(dir, n), pid: Number(pid), socket: socket ?? "", alive: !!pid && !!start && processStartTime(Number(pid)) === start });
  }
  return out;
}

/** Live daemons (pid → socket), from their records (whichever way they were started: spawned, or a spare). */
export function liveDaemons(): Map<number, string> {
  return new Map(daemonRecords().filter((r) => r.alive && r.socket).map((r) => [r.pid, r.socket]));
}

/** On exit: no memo may point at this daemon any more. */
export function forgetDaemon(socket: string) {
  rmSync(daemonPidFile(socket), { force: true });
  const dir = path.join(RUN_DIR, RUN_SUBDIRS.memos);
  const address = `unix://${socket}`;
  for (const n of listNames(dir)) {
    if (readStateFileOrUndefined(path.join(dir, n)) === address) rmSync(path.join(dir, n), { force: true });
  }
}

/**
 * Removes the records of daemons that are gone without saying so (SIGKILL, a crash) and every memo
 * that no live daemon backs: nothing else would, and they would pile up in /run for the node's
 * lifetime. Memos younger than a few seconds stay: their daemon may still be booting. `delete`,
 * which containerd runs after every task and every dead shim, calls this.
 */
export function sweepDeadDaemons(now = Date.now()) {
  const live = new Set<string>();
  for (const r of daemonRecords()) {
    if (r.alive) live.add(path.basename(r.file));
    else rmSync(r.file, { force: true });
  }
  const memos = path.join(RUN_DIR, RUN_SUBDIRS.memos);
  for (const n of listNames(memos)) {
    const file = path.join(memos, n);
    try {
      if (now - lstatSync(file).mtimeMs < MEMO_GRACE_MS) continue;
      const sock = (readStateFileOrUndefined(file) ?? "").trim().replace(/^unix:\/\//, "");
      if (!sock || !live.has(path.basename(sock))) rmSync(file, { force: true });
    } catch {}
  }
}

const MEMO_GRACE_MS = 10_000;

/** Entries of a state dir, less the files writeStateFile is still writing (".<name>.<pid>.<rand>"). */
function listNames(dir: string): string[] {
  try {
    return readdirSync(dir).filter((n) => !n.startsWith("."));
  } catch {
    return [];
  }
}
