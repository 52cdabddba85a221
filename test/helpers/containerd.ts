// A private containerd for integration tests: its own root, state and sockets under a temp dir, torn down
// completely by stop(). It never uses /run/containerd or /var/lib/containerd, except that shims (runc's and
// ours) put their sockets in the hard-coded /run/containerd/s/, which stop() cleans up after.
import { existsSync, mkdirSync, rmSync, unlinkSync } from "node:fs";
import { tmpdir as osTmpdir } from "node:os";
import { basename, join } from "node:path";
import type { CniNetwork } from "../../src/cli/lab/cni.js";
import { CTR_BIN, launchPrivateContainerd, listDir, privateContainerdPaths, SHIM_SOCKET_DIR, taskShimSockets, type PrivateContainerd } from "../../src/cli/lab/containerd.js";
import type { PrivateContainerdPaths } from "../../src/cli/lab/containerd-config.js";
import { socketPath } from "../../src/shim/address.js";
import { HARNESS_CNI_BIN_DIR, setupHarnessCni, teardownHarnessCni } from "./cni.js";
import { describeMount, describeProcess, isAlive, isUnder, listProcesses, readMountinfo, withDescendants } from "./procfs.js";
import { repoRoot, run, sleep, tmpdir, type RunResult } from "./util.js";

export { CTR_BIN, SHIM_SOCKET_DIR };
/** Every harness dir is `<os tmpdir>/cocoon-ctrd-XXXXXX`; the leak checker recognises them by this prefix. */
export const HARNESS_DIR_PREFIX = join(osTmpdir(), "cocoon-ctrd-");
export const DEFAULT_NAMESPACE = "default";
/** The namespace the CRI plugin keeps its images and containers in. */
export const CRI_NAMESPACE = "k8s.io";
export const CRI_SANDBOX_IMAGE = "cocoon.local/pause:latest";

export interface StartOptions {
  /** Enable the CRI plugin (disabled by default). */
  cri?: boolean;
  /**
   * With `cri`: give pods a private bridge network (test/helpers/cni.ts) using the host's CNI plugins;
   * stop() deletes the bridge. Without it the CNI dirs are empty and only hostNetwork pods can run.
   */
  cni?: boolean;
  /** Directories put first on containerd's PATH, where it looks up shim binaries. Default `[<repo>/bin]`. */
  pathPrepend?: string[];
  /** TOML deep-merged over the generated config (tables merge, other values replace). */
  extraConfig?: string;
  /** containerd log level `debug` (shims then also get `-debug`); default `info`. */
  debug?: boolean;
  /** Extra environment for containerd, inherited by the shims it starts. */
  env?: Record<string, string>;
  /** How long to wait for the gRPC socket; default 15 s. */
  startTimeoutMs?: number;
}

export interface CtrOptions {
  input?: string | Buffer;
  /** Default 30 s; the ctr process is SIGKILLed after it. */
  timeoutMs?: number;
  /** Return a non-zero exit instead of throwing. */
  allowFail?: boolean;
  /** Default `default`. */
  namespace?: string;
  /** Do not add the harness's `--fifo-dir`/`--runc-root` to `run`/`tasks start`/`tasks exec`. */
  raw?: boolean;
}

export interface StopReport {
  /**
   * What was still around after every task had been killed and deleted through containerd and containerd
   * had exited, and which stop() then removed by force: processes, mounts, shim sockets. A correct shim
   * leaves nothing, so tests can assert this is empty (assertNoLeaks does, given the harness).
   */
  leftovers: string[];
}

export interface Containerd {
  /** The temp dir holding everything of this instance. */
  readonly dir: string;
  readonly root: string;
  readonly state: string;
  /** gRPC socket path (no `unix://`). */
  readonly address: string;
  readonly ttrpcAddress: string;
  readonly configPath: string;
  readonly logPath: string;
  /** containerd's pid. */
  readonly pid: number;
  /** Directories ctr is told to use for FIFOs and runc state. */
  readonly fifoDir: string;
  readonly runcRoot: string;
  /** Runs `ctr --address <sock> -n <ns> …args`. Throws on non-zero exit unless `allowFail`. */
  ctr(args: string[], opts?: CtrOptions): Promise<RunResult>;
  /** The whole containerd log (kept in memory after stop()). */
  log(): string;
  /** The last `n` lines of the log (default 60). */
  logTail(n?: number): string;
  /** Tears everything down; idempotent, never throws. */
  stop(): Promise<StopReport>;
  /** Filled by stop(). */
  readonly leftovers: string[];
  /** The pod network, when started with `cni`. */
  readonly cni?: CniNetwork;
}

/** Harness dirs created by this process; those of concurrent test processes are not ours to judge. */
export const ownHarnessDirs = new Set<string>();

/** Pids of harness containerds that are running, so the leak checker does not report them. */
export const liveContainerdPids = new Set<number>();


/** The private containerd's paths, and the FIFO and runc-state dirs ctr is told to use. */
interface Layout extends PrivateContainerdPaths {
  dir: string;
  fifoDir: string;
  runcRoot: string;
}

/** The CRI settings of a harness containerd: runc by default, Cocoon as a second handler. */
function criSettings(l: Layout, opts: StartOptions) {
  return {
    sandboxImage: CRI_SANDBOX_IMAGE,
    disableApparmor: true,
    cniBinDir: opts.cni ? HARNESS_CNI_BIN_DIR : join(l.dir, "cni", "bin"),
    cniConfDir: join(l.dir, "cni", "conf"),
    defaultRuntime: "runc",
    runtimes: {
      runc: { runtimeType: "io.containerd.runc.v2", options: { Root: l.runcRoot } },
      cocoon: { runtimeType: "io.containerd.cocoon.v2" },
    },
  };
}

/** The socket name shims derive from containerd's address, the namespace and the container (or group) id. */
export const shimSocketPath = (address: string, namespace: string, id: string) => socketPath(address, [namespace, id], SHIM_SOCKET_DIR);

const TASK_SUBCOMMANDS = new Set(["tasks", "task", "t"]);

/** Adds private FIFO and runc-state dirs so that ctr does not fall back to /run/containerd/{fifo,runc}. */
function withPrivateDirs(args: string[], l: Layout): string[] {
  const has = (flag: string) => args.some((a) => a === flag || a.startsWith(flag + "="));
  const extra: string[] = [];
  let at = -1;
  if (args[0] === "run") {
    at = 1;
    if (!has("--fifo-dir")) extra.push("--fifo-dir", l.fifoDir);
    const rt = args.findIndex((a) => a === "--runtime" || a.startsWith("--runtime="));
    const runtime = rt < 0 ? "io.containerd.runc.v2" : args[rt]!.includes("=") ? args[rt]!.split("=")[1] : args[rt + 1];
    // ctr only sends runc options for this exact runtime name.
    if (runtime === "io.containerd.runc.v2" && !has("--runc-root")) extra.push("--runc-root", l.runcRoot);
  } else if (TASK_SUBCOMMANDS.has(args[0] ?? "") && (args[1] === "start" || args[1] === "exec")) {
    at = 2;
    if (!has("--fifo-dir")) extra.push("--fifo-dir", l.fifoDir);
  }
  return at < 0 || !extra.length ? args : [...args.slice(0, at), ...extra, ...args.slice(at)];
}

/** Starts a private containerd. On failure it cleans up after itself and rejects with the log tail. */
export async function startContainerd(opts: StartOptions = {}): Promise<Containerd> {
  const dir = tmpdir("cocoon-ctrd-");
  ownHarnessDirs.add(dir);
  const layout: Layout = { ...privateContainerdPaths(dir), dir, fifoDir: join(dir, "fifo"), runcRoot: join(dir, "runc") };
  for (const d of ["fifo", "runc", "cni/bin", "cni/conf"]) mkdirSync(join(dir, d), { recursive: true });

  let ctrd: PrivateContainerd | undefined;
  let savedLog: string | undefined;
  let stopping: Promise<StopReport> | undefined;
  let network: CniNetwork | undefined;
  const leftovers: string[] = [];

  const log = (): string => savedLog ?? ctrd?.log() ?? "";
  const logTail = (n = 60) => ctrd?.logTail(n) ?? "";

  const ctr = async (args: string[], o: CtrOptions = {}): Promise<RunResult> => {
    const full = ["--address", layout.address, "-n", o.namespace ?? DEFAULT_NAMESPACE, ...(o.raw ? args : withPrivateDirs(args, layout))];
    const res = await run(CTR_BIN, full, { input: o.input, timeoutMs: o.timeoutMs ?? 30_000 });
    if (res.code !== 0 && !o.allowFail) {
      throw new Error(
        `ctr ${full.join(" ")} ${res.timedOut ? "timed out" : `exited ${res.code}`}\n` +
          `stdout: ${res.stdout}\nstderr: ${res.stderr}\n--- containerd log (tail) ---\n${logTail(40)}`,
      );
    }
    return res;
  };

  // Names of every shim socket this instance may have caused, by the naming rule applied to each container
  // id containerd ever started a shim for (it logs each one), plus what live bundles' address files say.
  const ourShimSockets = (): Set<string> => {
    const found = new Set<string>();
    for (const m of log().matchAll(/msg="starting signal loop" namespace=(\S+) path=(\S+)/g)) {
      found.add(shimSocketPath(layout.address, m[1]!, basename(m[2]!)));
    }
    for (const s of taskShimSockets(layout)) found.add(s);
    return found;
  };

  const teardownTasks = async (): Promise<string[]> => {
    const quick = { allowFail: true, timeoutMs: 10_000, raw: true };
    const nsRes = await ctr(["namespaces", "ls", "-q"], quick);
    const namespaces = nsRes.code === 0 ? nsRes.stdout.split("\n").filter(Boolean) : [DEFAULT_NAMESPACE];
    const sockets: string[] = [];
    await Promise.all(
      namespaces.map(async (ns) => {
        const q = { ...quick, namespace: ns };
        const tasks = (await ctr(["tasks", "ls", "-q"], q)).stdout.split("\n").filter(Boolean);
        await Promise.all(
          tasks.map(async (id) => {
            await ctr(["tasks", "kill", "-a", "-s", "SIGKILL", id], q);
            await ctr(["tasks", "rm", "-f", id], q);
          }),
        );
        const containers = (await ctr(["containers", "ls", "-q"], q)).stdout.split("\n").filter(Boolean);
        for (const id of containers) sockets.push(shimSocketPath(layout.address, ns, id));
        await Promise.all(containers.map((id) => ctr(["containers", "rm", id], q)));
      }),
    );
    return sockets;
  };

  const referencesDir = (p: { args: string[]; cwd: string; pid: number }) =>
    p.pid !== process.pid && (isUnder(p.cwd, dir) || p.args.some((a) => a.includes(dir)));

  const stopImpl = async (): Promise<StopReport> => {
    const sockets = ourShimSockets();
    const wasRunning = !!ctrd?.running() && isAlive(ctrd.pid);
    if (ctrd && wasRunning) {
      try {
        for (const s of await teardownTasks()) sockets.add(s);
      } catch {
        // containerd may be wedged; the forced cleanup below still runs
      }
    }
    await ctrd?.stop(5_000);
    if (ctrd) liveContainerdPids.delete(ctrd.pid);

    // Shims exit shortly after their last task is deleted; give them a moment before calling them leaks.
    // Without a graceful teardown (containerd had died) nothing told them to exit, so do not wait.
    const deadline = Date.now() + (wasRunning ? 3_000 : 0);
    let stray = listProcesses().filter(referencesDir);
    while (stray.length && Date.now() < deadline) {
      await sleep(100);
      stray = listProcesses().filter(referencesDir);
    }
    // Containers whose shim died (e.g. with containerd) are still in runc's state, with processes running.
    for (const ns of listDir(layout.runcRoot)) {
      for (const id of listDir(join(layout.runcRoot, ns))) {
        leftovers.push(`runc container ${ns}/${id}`);
        await run("runc", ["--root", join(layout.runcRoot, ns), "delete", "--force", id], { timeoutMs: 10_000 });
      }
    }
    // A shim's children (container processes, VMs) need not mention our dir, so take whole trees.
    const all = listProcesses();
    stray = withDescendants(all.filter(referencesDir), all);
    for (const p of stray) {
      leftovers.push(`process ${describeProcess(p)}`);
      try {
        process.kill(p.pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
    const killDeadline = Date.now() + 3_000;
    while (stray.some((p) => isAlive(p.pid)) && Date.now() < killDeadline) await sleep(50);

    // Deepest first, so that lazy unmounts of parents do not hide children.
    const mounts = readMountinfo()
      .filter((m) => isUnder(m.mountPoint, dir))
      .sort((a, b) => b.mountPoint.length - a.mountPoint.length);
    for (const m of mounts) {
      leftovers.push(`mount ${describeMount(m)}`);
      await run("umount", ["-l", m.mountPoint], { timeoutMs: 10_000 });
    }

    // Only after the netns mounts are gone: the pods' veth ends go with their namespaces.
    if (network) leftovers.push(...(await teardownHarnessCni(network)));

    // Sockets of shims that are gone (runc unlinks its own; a SIGKILLed shim cannot).
    for (const path of ourShimSockets()) sockets.add(path);
    for (const path of sockets) {
      if (!existsSync(path)) continue;
      leftovers.push(`shim socket ${path}`);
      try {
        unlinkSync(path);
      } catch {
        // raced with its owner
      }
    }

    savedLog = log();
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
    } catch (e) {
      leftovers.push(`could not remove ${dir}: ${(e as Error).message}`);
    }
    return { leftovers: [...leftovers] };
  };

  const stop = (): Promise<StopReport> => {
    stopping ??= stopImpl().catch((e: unknown) => {
      leftovers.push(`stop() failed: ${e instanceof Error ? e.message : String(e)}`);
      return { leftovers: [...leftovers] };
    });
    return stopping;
  };

  try {
    if (opts.cri && opts.cni) network = await setupHarnessCni(dir);
    ctrd = await launchPrivateContainerd({
      dir,
      logLevel: opts.debug ? "debug" : "info",
      ...(opts.cri ? { cri: criSettings(layout, opts) } : {}),
      extraConfig: opts.extraConfig,
      pathPrepend: opts.pathPrepend ?? [join(repoRoot, "bin")],
      env: opts.env,
      startTimeoutMs: opts.startTimeoutMs ?? 15_000,
    });
    liveContainerdPids.add(ctrd.pid);
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    dir,
    root: layout.root,
    state: layout.state,
    address: layout.address,
    ttrpcAddress: layout.ttrpcAddress,
    configPath: ctrd.configPath,
    logPath: ctrd.logPath,
    pid: ctrd.pid,
    fifoDir: layout.fifoDir,
    runcRoot: layout.runcRoot,
    ctr,
    log,
    logTail,
    stop,
    get leftovers() {
      return [...leftovers];
    },
    ...(network ? { cni: network } : {}),
  };
}
