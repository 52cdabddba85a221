// Compares host state before and after a test to find what the runtime under test left behind.
import { canConnect } from "../../src/shim/address.js";
import { readdirSync, readlinkSync } from "node:fs";
import { basename, join } from "node:path";
import { HARNESS_DIR_PREFIX, liveContainerdPids, ownHarnessDirs, SHIM_SOCKET_DIR, type Containerd } from "./containerd.js";
import { cocoonRole, describeMount, describeProcess, flagValue, listProcesses, processKey, readMountinfo, type ProcInfo } from "./procfs.js";
import { liveDaemons } from "../../src/shim/fast-start.js";
import { parseSpareName, spareBooting, spareOfEntry, SPARES_DIR } from "../../src/shim/spare-pool.js";
import { existsSync } from "node:fs";
import { run, sleep } from "./util.js";

/** Substrings of a program's file name that mark it as part of a container runtime. */
const RUNTIME_PROGRAM_MARKERS = ["containerd-shim-cocoon", "runc", "crun", "qemu-system", "cocoon-agent"];

/** Directories whose entries are runtime state: one per container. */
const RUNTIME_STATE_DIRS = ["/run/containerd/runc", "/run/runc", "/run/crun"];

export interface SnapshotOptions {
  /** More directories whose new entries count as leaks (e.g. a runtime's own state dir). */
  watchDirs?: string[];
}

export interface HostSnapshot {
  /** Keys (pid@starttime) of every process, to tell pre-existing work apart from what the test started. */
  allProcesses: Set<string>;
  mounts: Map<string, string>;
  shimSockets: Set<string>;
  netns: Set<string>;
  taps: Set<string>;
  stateEntries: Set<string>;
  spareEntries: Set<string>;
  watchDirs: string[];
}

export interface LeakOptions {
  /** Keep polling this long for leaks to disappear (processes take a moment to exit); default 5 s. */
  graceMs?: number;
  /** Harness instances that were stopped: their StopReport leftovers count as leaks too. */
  harness?: Containerd | Containerd[];
  /** Leak descriptions matching any of these are ignored. */
  ignore?: RegExp[];
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** The program a process runs: argv[0], and the script for interpreters (first argument not starting with '-'). */
function programNames(args: string[]): string[] {
  const script = args.slice(1).find((a) => !a.startsWith("-"));
  return [args[0], script].filter((a): a is string => !!a).map((a) => basename(a));
}

/** The harness dirs a process refers to (in its arguments or as its cwd). */
function harnessDirsOf(p: ProcInfo): string[] {
  const out: string[] = [];
  for (const s of [...p.args, p.cwd]) {
    for (let i = s.indexOf(HARNESS_DIR_PREFIX); i >= 0; i = s.indexOf(HARNESS_DIR_PREFIX, i + 1)) {
      // mkdtemp appends six characters
      out.push(s.slice(i, i + HARNESS_DIR_PREFIX.length + 6));
    }
  }
  return out;
}

const ownPidNs = (() => {
  try {
    return readlinkSync("/proc/self/ns/pid");
  } catch {
    return "";
  }
})();

/** Runtime components, anything using a harness dir, and container processes (another pid namespace). */
function isRuntimeProcess(p: ProcInfo): boolean {
  return (
    programNames(p.args).some((n) => RUNTIME_PROGRAM_MARKERS.some((m) => n.includes(m))) ||
    harnessDirsOf(p).length > 0 ||
    (p.pidNs !== "" && p.pidNs !== ownPidNs)
  );
}

/** This process and its ancestors. */
function ownLineage(byPid: Map<number, ProcInfo>): Set<number> {
  const out = new Set<number>();
  for (let pid: number | undefined = process.pid; pid && !out.has(pid); pid = byPid.get(pid)?.ppid) out.add(pid);
  return out;
}

/**
 * True when `p` belongs to someone else's work on the same host (another test process, a developer's
 * shell): it, or an ancestor, uses a harness dir this process did not create, or it descends from a process
 * that predates the snapshot and is not our ancestor. Our leaks descend from this process or were orphaned
 * to pid 1 (shim daemons always are).
 */
function startedBySomeoneElse(p: ProcInfo, byPid: Map<number, ProcInfo>, lineage: Set<number>, preexisting: Set<string>): boolean {
  const seen = new Set<number>();
  for (let cur: ProcInfo | undefined = p; cur && !seen.has(cur.pid); cur = byPid.get(cur.ppid)) {
    seen.add(cur.pid);
    if (harnessDirsOf(cur).some((d) => !ownHarnessDirs.has(d))) return true;
    if (cur === p) continue;
    if (cur.pid === 1 || lineage.has(cur.pid)) return false;
    if (preexisting.has(processKey(cur))) return true;
  }
  return false;
}

function runtimeMounts(): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of readMountinfo()) {
    const harnessDir = m.mountPoint.startsWith(HARNESS_DIR_PREFIX) ? m.mountPoint.slice(0, HARNESS_DIR_PREFIX.length + 6) : undefined;
    if (harnessDir && !ownHarnessDirs.has(harnessDir)) continue; // another test process's instance
    if (harnessDir || m.mountPoint.includes("cocoon") || m.source.includes("cocoon")) {
      out.set(`${m.id} ${m.mountPoint}`, describeMount(m));
    }
  }
  return out;
}

async function networkNamespaces(): Promise<Set<string>> {
  const names = new Set(listDir("/var/run/netns"));
  const res = await run("ip", ["netns", "list"], { timeoutMs: 5_000 }).catch(() => undefined);
  // Lines look like "name (id: 3)" or just "name".
  for (const line of res?.stdout.split("\n") ?? []) if (line.trim()) names.add(line.trim().split(/\s+/)[0]!);
  return names;
}

async function tapDevices(): Promise<Set<string>> {
  const res = await run("ip", ["-o", "link"], { timeoutMs: 5_000 }).catch(() => undefined);
  const taps = new Set<string>();
  for (const line of res?.stdout.split("\n") ?? []) {
    // "12: tap0@if3: <...>" -> "tap0"
    const name = line.split(":")[1]?.trim().split("@")[0];
    if (name?.startsWith("tap")) taps.add(name);
  }
  return taps;
}

function stateEntries(extra: string[]): Set<string> {
  const out = new Set<string>();
  for (const dir of RUNTIME_STATE_DIRS) {
    for (const e of listDir(dir)) {
      // /run/containerd/runc is <ns>/<id>; the others are <id>.
      if (dir === "/run/containerd/runc") for (const id of listDir(join(dir, e))) out.add(join(dir, e, id));
      else out.add(join(dir, e));
    }
  }
  for (const dir of extra) for (const e of listDir(dir)) out.add(join(dir, e));
  return out;
}

/** The spare pool registry (src/shim/spare-pool.ts) two levels deep, relative to its dir. */
function spareEntries(): Set<string> {
  const out = new Set<string>();
  if (existsSync(SPARES_DIR)) out.add(".");
  for (const e of listDir(SPARES_DIR)) {
    out.add(e);
    for (const sub of listDir(join(SPARES_DIR, e))) out.add(join(e, sub));
  }
  return out;
}

/** A registry entry is left behind when it names a dead spare, or is a pool dir nobody uses any more. */
function staleSpareEntry(e: string): boolean {
  const full = join(SPARES_DIR, e);
  const parts = e.split("/");
  if (parts.length === 2) return !parseSpareName(spareOfEntry(parts[1]!));
  if (e.endsWith(".starting")) return existsSync(full) && !spareBooting(e.slice(0, -".starting".length));
  return listDir(full).length === 0;
}

/** An idle spare daemon whose containerd still runs is ready for the next start, not left behind. */
async function isWaitingSpare(p: ProcInfo, daemons: Map<number, string>): Promise<boolean> {
  const address = flagValue(p.args, "address");
  return cocoonRole(p, daemons) === "spare" && !!address && (await canConnect(address, 200));
}

async function observe(watchDirs: string[]) {
  return {
    spareEntries: spareEntries(),
    procs: listProcesses(),
    mounts: runtimeMounts(),
    shimSockets: new Set(listDir(SHIM_SOCKET_DIR)),
    netns: await networkNamespaces(),
    taps: await tapDevices(),
    stateEntries: stateEntries(watchDirs),
  };
}

export async function snapshotHost(opts: SnapshotOptions = {}): Promise<HostSnapshot> {
  const watchDirs = opts.watchDirs ?? [];
  const { procs, ...rest } = await observe(watchDirs);
  return { allProcesses: new Set(procs.map(processKey)), ...rest, watchDirs };
}


/** Returns descriptions of everything present now that was not in `before`. */
export async function findLeaks(before: HostSnapshot): Promise<string[]> {
  const now = await observe(before.watchDirs);
  const leaks: string[] = [];
  const byPid = new Map(now.procs.map((p) => [p.pid, p]));
  const lineage = ownLineage(byPid);
  const daemons = liveDaemons();
  for (const p of now.procs) {
    // A running harness containerd is expected; after stop() it is gone, and its pid leaves the set.
    if (p.pid === process.pid || liveContainerdPids.has(p.pid) || !isRuntimeProcess(p)) continue;
    if (before.allProcesses.has(processKey(p)) || startedBySomeoneElse(p, byPid, lineage, before.allProcesses)) continue;
    // A spare that outlives its containerd is a leak like any other process.
    if (await isWaitingSpare(p, daemons)) continue;
    leaks.push(`process ${describeProcess(p)}`);
  }
  for (const e of now.spareEntries) if (!before.spareEntries.has(e) && staleSpareEntry(e)) leaks.push(`spare registry entry ${join(SPARES_DIR, e)}`);
  for (const [k, d] of now.mounts) if (!before.mounts.has(k)) leaks.push(`mount ${d}`);
  for (const s of now.shimSockets) {
    // A socket someone still listens on belongs to a live shim: if that shim is ours, the process
    // check above reports it; otherwise it is another run's. Only a dead socket file is a leak.
    if (!before.shimSockets.has(s) && !(await canConnect(join(SHIM_SOCKET_DIR, s), 200))) leaks.push(`shim socket ${join(SHIM_SOCKET_DIR, s)}`);
  }
  for (const n of now.netns) if (!before.netns.has(n)) leaks.push(`network namespace ${n}`);
  for (const t of now.taps) if (!before.taps.has(t)) leaks.push(`tap device ${t}`);
  for (const e of now.stateEntries) if (!before.stateEntries.has(e)) leaks.push(`runtime state ${e}`);
  return leaks;
}

/** Fails (with a list of what leaked) unless the host is back to `before` within the grace period. */
export async function assertNoLeaks(before: HostSnapshot, opts: LeakOptions = {}): Promise<void> {
  const ignored = (s: string) => (opts.ignore ?? []).some((r) => r.test(s));
  const harness = opts.harness === undefined ? [] : Array.isArray(opts.harness) ? opts.harness : [opts.harness];
  const fromHarness = harness.flatMap((h) => h.leftovers.map((l) => `${l} [removed by stop() of ${h.dir}]`)).filter((l) => !ignored(l));
  for (const h of harness) if (liveContainerdPids.has(h.pid)) fromHarness.push(`containerd pid ${h.pid} still running (stop() not called?)`);

  const deadline = Date.now() + (opts.graceMs ?? 5_000);
  let leaks = (await findLeaks(before)).filter((l) => !ignored(l));
  while (leaks.length && Date.now() < deadline) {
    await sleep(200);
    leaks = (await findLeaks(before)).filter((l) => !ignored(l));
  }
  const all = [...fromHarness, ...leaks];
  if (all.length) throw new Error(`leaked after the test:\n  - ${all.join("\n  - ")}`);
}
