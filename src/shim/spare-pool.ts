// The pool of spare daemons (see spare.ts): where idle spares register so that the launcher script can
// claim one, and how a daemon tops the pool up. A pool is per key, which the launcher computes from
// containerd's address and its own install (docs/start-protocol.md) and passes down in
// SPARE_KEY_ENV, so a spare only serves the containerd and the install it was started for.
//
//   $RUN_DIR/spares/<key>/<pid>-<start>/          a spare: FIFOs `req` (it reads) and `reply`; the
//                                                 launcher that creates `claim` (O_EXCL) has it
//   $RUN_DIR/spares/<key>/.new-<pid>-<start>/     being built by the spare, renamed when complete
//   $RUN_DIR/spares/<key>.starting                pid of the spare being booted (one at a time)
import { closeSync, constants, existsSync, lstatSync, openSync, readdirSync, readFileSync, rmdirSync, rmSync, writeSync } from "node:fs";
import path from "node:path";
import { spawnChild } from "../sys/children.js";
import { processStartTime, RUN_DIR, runSubdir } from "./fast-start.js";
import { RUN_SUBDIRS, SPARE_FILES, SPARE_KEY_ENV, START_KEYS_ENV } from "./start-protocol.js";
import { readStateFileOrUndefined } from "./statefs.js";

export const SPARES_DIR = path.join(RUN_DIR, RUN_SUBDIRS.spares);

/** Environment of a spare (and of daemons, which top the pool up): its pool, containerd, pool size. */
export { SPARE_KEY_ENV };
export const SPARE_WATCH_ENV = "COCOON_SPARE_WATCH";
export const SPARE_WANT_ENV = "COCOON_SPARE_WANT";

export const isSpareKey = (k: string | undefined): k is string => !!k && /^[0-9a-f]{64}$/.test(k);
export const poolDir = (key: string) => path.join(SPARES_DIR, key);
const markerPath = (key: string) => path.join(SPARES_DIR, `${key}.starting`);

/** A process that must stay alive for a spare to be useful (containerd), as "<pid>:<start time>". */
export function watchOf(pid: number): string | undefined {
  const start = processStartTime(pid);
  return start ? `${pid}:${start}` : undefined;
}

export function watchAlive(watch: string): boolean {
  const [pid, start] = watch.split(":");
  return !!pid && !!start && processStartTime(Number(pid)) === start;
}

/** The registration name of a live spare, "<pid>-<start time>"; undefined if that process is gone. */
export function parseSpareName(name: string): number | undefined {
  const m = /^(\d+)-(\d+)$/.exec(name);
  return m && processStartTime(Number(m[1])) === m[2] ? Number(m[1]) : undefined;
}

/** The spare an entry of a pool dir belongs to ("<pid>-<start>"), registered or being built. */
export function spareOfEntry(name: string): string {
  return name.startsWith(".new-") ? name.slice(5) : name;
}

/** Idle (unclaimed) spares of this pool; entries of dead spares (SIGKILL leaves them) are removed on the way. */
export function liveSpares(key: string): number[] {
  const out: number[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(poolDir(key));
  } catch {
    return out;
  }
  for (const n of names) {
    const pid = parseSpareName(spareOfEntry(n));
    if (!pid) rmSync(path.join(poolDir(key), n), { recursive: true, force: true });
    else if (!n.startsWith(".") && !existsSync(path.join(poolDir(key), n, SPARE_FILES.claim))) out.push(pid);
  }
  return out;
}

/**
 * The pool that serves this containerd, found through a spare registered in it (its argv names the
 * containerd): the key is the launcher's to compute, and only it does. Undefined while no spare is there.
 */
export function poolOf(containerdAddress: string): string | undefined {
  const list = (dir: string) => {
    try {
      return readdirSync(dir);
    } catch {
      return [];
    }
  };
  for (const key of list(SPARES_DIR).filter(isSpareKey)) {
    for (const n of list(poolDir(key))) {
      const pid = parseSpareName(spareOfEntry(n));
      let argv: string[] = [];
      try {
        argv = pid ? readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0") : [];
      } catch {}
      const i = argv.indexOf("-address");
      if (i >= 0 && argv[i + 1] === containerdAddress) return key;
    }
  }
  return undefined;
}

/** Whether a spare of this pool is booting now: the marker names a live process, or was just made. */
export function spareBooting(key: string): boolean {
  try {
    const text = (readStateFileOrUndefined(markerPath(key)) ?? "").trim();
    if (text) return processStartTime(Number(text)) !== undefined;
    return Date.now() - lstatSync(markerPath(key)).mtimeMs < 5_000;
  } catch {
    return false;
  }
}

/** Removes the boot marker if it names this process (a spare calls this once registered, or on exit). */
export function clearBootMarker(key: string, pid = process.pid) {
  try {
    if ((readStateFileOrUndefined(markerPath(key)) ?? "").trim() === String(pid)) rmSync(markerPath(key), { force: true });
  } catch {}
}

/**
 * Removes what dead spares left in every pool: a spare SIGKILLed while booting leaves its boot marker,
 * one killed while idle its registration (when its containerd is gone too, no top-up ever replaces
 * them). `delete`, which containerd runs after every task and every dead shim, calls this.
 */
export function sweepSpares() {
  let names: string[];
  try {
    names = readdirSync(SPARES_DIR);
  } catch {
    return;
  }
  for (const n of names) {
    if (n.endsWith(".starting")) {
      const key = n.slice(0, -".starting".length);
      if (isSpareKey(key) && !spareBooting(key)) rmSync(markerPath(key), { force: true });
    } else if (isSpareKey(n)) {
      liveSpares(n);
      removeEmptyPoolDirs(n);
    }
  }
}

/** Removes the pool's directories once empty (no spare, no claim, no boot), so nothing stays behind. */
export function removeEmptyPoolDirs(key: string) {
  for (const d of [poolDir(key), SPARES_DIR]) {
    try {
      rmdirSync(d);
    } catch {}
  }
}

export interface TopUp {
  key: string;
  /** Idle spares the pool should have (the config's spare_daemons). */
  want: number;
  /** containerd's address: the spare's argv carries it, and nothing is started while it is gone. */
  address: string;
  watch: string;
  /** Node arguments: V8 flags, then the full bundle. */
  nodeArgs: string[];
  env: NodeJS.ProcessEnv;
}

/**
 * Starts one spare if the pool is short and none is booting; a spare that registers calls this again,
 * so a pool of several fills one Node start-up at a time. Returns the new spare's pid, or 0.
 */
export function topUpSpares(t: TopUp): number {
  if (t.want <= 0 || !isSpareKey(t.key) || !existsSync(t.address) || !watchAlive(t.watch)) return 0;
  if (liveSpares(t.key).length >= t.want || spareBooting(t.key)) return 0;
  let fd: number;
  try {
    fd = openMarker(t.key);
  } catch {
    return 0;
  }
  try {
    const env: NodeJS.ProcessEnv = { ...t.env, [SPARE_KEY_ENV]: t.key, [SPARE_WATCH_ENV]: t.watch, [SPARE_WANT_ENV]: String(t.want) };
    delete env["COCOON_OPTIONS"];
    delete env["COCOON_SOCKET"];
    delete env[START_KEYS_ENV];
    // Detached, no stdio, cwd /: like a daemon, it must hold nothing of whoever started it.
    const child = spawnChild(process.execPath, [...t.nodeArgs, "-address", t.address, "spare"], { cwd: "/", detached: true, stdio: "ignore", env });
    child.unref();
    if (!child.pid) {
      rmSync(markerPath(t.key), { force: true });
      return 0;
    }
    writeSync(fd, String(child.pid));
    return child.pid;
  } finally {
    closeSync(fd);
  }
}

/** Creates the boot marker exclusively; a stale one (its spare died while booting) is replaced. */
function openMarker(key: string): number {
  const p = markerPath(key);
  for (let attempt = 0; ; attempt++) {
    try {
      return openSync(p, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (attempt > 2 || (code !== "ENOENT" && code !== "EEXIST")) throw err;
      // mkdir only now: an exiting spare removes the pool's dirs once they are empty.
      if (code === "ENOENT") runSubdir("spares");
      else if (spareBooting(key)) throw err;
      else rmSync(p, { force: true });
    }
  }
}
