// A private containerd for integration tests: its own root, state and sockets under a temp dir, torn down
// completely by stop(). It never uses /run/containerd or /var/lib/containerd, except that shims (runc's and
// ours) put their sockets in the hard-coded /run/containerd/s/, which stop() cleans up after.
import { canConnect } from "../../src/shim/address.js";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir as osTmpdir } from "node:os";
import { basename, join, posix } from "node:path";
import type { CniNetwork } from "../../src/cli/lab/cni.js";
import { privateContainerdConfig, renderContainerdConfig } from "../../src/cli/lab/containerd-config.js";
import { HARNESS_CNI_BIN_DIR, setupHarnessCni, teardownHarnessCni } from "./cni.js";
import { describeMount, describeProcess, isAlive, isUnder, listProcesses, readMountinfo, withDescendants } from "./procfs.js";
import { repoRoot, run, settlesWithin, sleep, tailLines, tmpdir, type RunResult } from "./util.js";

export const CONTAINERD_BIN = "/usr/bin/containerd";
export const CTR_BIN = "/usr/bin/ctr";
/** Every harness dir is `<os tmpdir>/cocoon-ctrd-XXXXXX`; the leak checker recognises them by this prefix. */
export const HARNESS_DIR_PREFIX = join(osTmpdir(), "cocoon-ctrd-");
/** Where shims put their sockets, whatever containerd's configured state dir is. */
export const SHIM_SOCKET_DIR = "/run/containerd/s";
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

process.on("exit", () => {
  // Last resort when a test process dies without calling stop(): do not leave daemons behind.
  for (const pid of liveContainerdPids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
});

interface Layout {
  dir: string;
  root: string;
  state: string;
  address: string;
  ttrpcAddress: string;
  fifoDir: string;
  runcRoot: string;
}

function buildConfig(l: Layout, opts: StartOptions): string {
  const cfg = privateContainerdConfig(
    { root: l.root, state: l.state, temp: join(l.dir, "tmp"), opt: join(l.dir, "opt"), address: l.address, ttrpcAddress: l.ttrpcAddress },
    {
      logLevel: opts.debug ? "debug" : "info",
      ...(opts.cri
        ? {
            cri: {
              sandboxImage: CRI_SANDBOX_IMAGE,
              disableApparmor: true,
              cniBinDir: opts.cni ? HARNESS_CNI_BIN_DIR : join(l.dir, "cni", "bin"),
              cniConfDir: join(l.dir, "cni", "conf"),
              defaultRuntime: "runc",
              runtimes: {
                runc: { runtimeType: "io.containerd.runc.v2", options: { Root: l.runcRoot } },
                cocoon: { runtimeType: "io.containerd.cocoon.v2" },
              },
            },
          }
        : {}),
    },
  );
  return renderContainerdConfig(cfg, opts.extraConfig);
}


/** The socket name shims derive from containerd's address, the namespace and the container (or group) id. */
export function shimSocketPath(address: string, namespace: string, id: string): string {
  const hex = createHash("sha256").update(posix.join(address, namespace, id)).digest("hex");
  return join(SHIM_SOCKET_DIR, hex);
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function isSocket(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}

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
  const layout: Layout = {
    dir,
    root: join(dir, "root"),
    state: join(dir, "state"),
    address: join(dir, "containerd.sock"),
    ttrpcAddress: join(dir, "containerd.sock.ttrpc"),
    fifoDir: join(dir, "fifo"),
    runcRoot: join(dir, "runc"),
  };
  for (const d of ["root", "state", "tmp", "opt", "fifo", "runc", "cni/bin", "cni/conf"]) mkdirSync(join(dir, d), { recursive: true });
  const configPath = join(dir, "config.toml");
  const logPath = join(dir, "containerd.log");

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let savedLog: string | undefined;
  let stopping: Promise<StopReport> | undefined;
  let network: CniNetwork | undefined;
  const leftovers: string[] = [];

  const log = (): string => {
    if (savedLog !== undefined) return savedLog;
    try {
      return readFileSync(logPath, "utf8");
    } catch {
      return "";
    }
  };
  const logTail = (n = 60) => tailLines(log(), n);

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
    const taskRoot = join(layout.state, "io.containerd.runtime.v2.task");
    for (const ns of listDir(taskRoot)) {
      for (const id of listDir(join(taskRoot, ns))) {
        found.add(shimSocketPath(layout.address, ns, id));
        try {
          const addr = readFileSync(join(taskRoot, ns, id, "address"), "utf8").trim();
          if (addr.startsWith("unix://")) found.add(addr.slice("unix://".length));
        } catch {
          // no address file
        }
      }
    }
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
    const wasRunning = !!child?.pid && child.exitCode === null && child.signalCode === null && isAlive(child.pid);
    if (child && wasRunning) {
      try {
        for (const s of await teardownTasks()) sockets.add(s);
      } catch {
        // containerd may be wedged; the forced cleanup below still runs
      }
      child.kill("SIGTERM");
      if (!(await settlesWithin(exited, 5_000))) {
        child.kill("SIGKILL");
        await exited;
      }
    }
    if (child?.pid) liveContainerdPids.delete(child.pid);

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
    writeFileSync(configPath, buildConfig(layout, opts));
    const pathPrepend = opts.pathPrepend ?? [join(repoRoot, "bin")];
    const env = {
      ...process.env,
      ...opts.env,
      PATH: [...pathPrepend, process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin"].join(":"),
    };
    const logFd = openSync(logPath, "a");
    try {
      child = spawn(CONTAINERD_BIN, ["--config", configPath], { stdio: ["ignore", logFd, logFd], env, cwd: dir });
    } finally {
      closeSync(logFd);
    }
    const c = child;
    // A failed spawn emits "error" and no "exit".
    exited = new Promise((resolve) => {
      c.once("exit", () => resolve());
      c.once("error", () => resolve());
    });
    let spawnError: Error | undefined;
    c.once("error", (e) => (spawnError = e));
    if (c.pid) liveContainerdPids.add(c.pid);

    const timeoutMs = opts.startTimeoutMs ?? 15_000;
    const deadline = Date.now() + timeoutMs;
    let failure: string | undefined;
    for (;;) {
      if (c.exitCode !== null || c.signalCode !== null) {
        failure = `containerd exited (${c.exitCode ?? c.signalCode}) before listening`;
        break;
      }
      if (spawnError) {
        failure = `cannot run ${CONTAINERD_BIN}: ${spawnError.message}`;
        break;
      }
      // The CRI service answers only once it has finished initialising, just after it logs this line.
      const criReady = !opts.cri || log().includes("msg=\"Start streaming server\"");
      if (criReady && isSocket(layout.address) && isSocket(layout.ttrpcAddress) && (await canConnect(layout.address, 1000))) break;
      if (Date.now() > deadline) {
        failure = `containerd did not become ready on ${layout.address} within ${timeoutMs} ms`;
        break;
      }
      await sleep(50);
    }
    if (failure) throw new Error(`startContainerd in ${dir}: ${failure}\n--- containerd log (tail) ---\n${logTail(60)}`);
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
    configPath,
    logPath,
    pid: child.pid!,
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
