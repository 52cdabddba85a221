// A memo that lets the launcher script answer `start` without starting Node when the container's
// daemon already runs (the second and later containers of a pod, every container with node
// grouping): Node's own start-up costs more than runc-v2's whole `start`. The Node path records
// "these inputs led to this address" and each daemon records its pid; the launcher recomputes the
// same key with sha256sum and trusts the memo only while that daemon is alive and owns the socket.
// A daemon's record is "<pid> <start time> <socket>", so that a reused pid never passes for it.
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { procStat } from "../sys/procstat.js";

export const RUN_DIR = process.env["COCOON_RUN_DIR"] || "/run/cocoon";

/** sha256 of "<address>\n<namespace>\n<group>\n" followed by the raw `start` stdin (the options). */
export function fastStartKey(address: string, namespace: string, group: string, stdin: Uint8Array): string {
  return createHash("sha256").update(`${address}\n${namespace}\n${group}\n`).update(stdin).digest("hex");
}

function writeAtomic(file: string, text: string) {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}`;
  writeFileSync(tmp, text, { mode: 0o600 });
  renameSync(tmp, file);
}

export function rememberStart(key: string, address: string) {
  try {
    writeAtomic(path.join(RUN_DIR, "start-cache", key), address);
  } catch {
    // Only an optimisation: the next start takes the Node path again.
  }
}

export function daemonPidFile(socket: string): string {
  return path.join(RUN_DIR, "daemons", path.basename(socket));
}

/** Field 22 of /proc/<pid>/stat (clock ticks after boot): with the pid, it names one process for good. */
export function processStartTime(pid: number): string | undefined {
  return procStat(pid)?.startTime;
}

export function recordDaemon(socket: string) {
  try {
    writeAtomic(daemonPidFile(socket), `${process.pid} ${processStartTime(process.pid) ?? "?"} ${socket}`);
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
  const dir = path.join(RUN_DIR, "daemons");
  const out: DaemonRecord[] = [];
  for (const n of listNames(dir)) {
    try {
      const [pid, start, socket] = readFileSync(path.join(dir, n), "utf8").trim().split(" ");
      out.push({ file: path.join(dir, n), pid: Number(pid), socket: socket ?? "", alive: !!pid && !!start && processStartTime(Number(pid)) === start });
    } catch {}
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
  const dir = path.join(RUN_DIR, "start-cache");
  const address = `unix://${socket}`;
  for (const n of listNames(dir)) {
    try {
      if (readFileSync(path.join(dir, n), "utf8") === address) rmSync(path.join(dir, n), { force: true });
    } catch {}
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
  const memos = path.join(RUN_DIR, "start-cache");
  for (const n of listNames(memos)) {
    const file = path.join(memos, n);
    try {
      if (now - statSync(file).mtimeMs < MEMO_GRACE_MS) continue;
      const sock = readFileSync(file, "utf8").trim().replace(/^unix:\/\//, "");
      if (!live.has(path.basename(sock))) rmSync(file, { force: true });
    } catch {}
  }
}

const MEMO_GRACE_MS = 10_000;

function listNames(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
