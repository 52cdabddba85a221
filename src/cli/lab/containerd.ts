// One private containerd process: its config written into a directory the caller owns (root, state,
// sockets, opt, all inside it; containerd-config.ts), started, waited for until it answers, and
// stopped. `cocoon demo`'s lab and the integration-test harness both start theirs here; each then
// removes what its pods left in its own way.
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { canConnect, socketPath } from "../../shim/address.js";
import { privateContainerdConfig, renderContainerdConfig, type PrivateContainerdOptions, type PrivateContainerdPaths } from "./containerd-config.js";
import { delay } from "./pod.js";

export const CONTAINERD_BIN = "containerd";
export const CTR_BIN = "ctr";
/** Where every shim puts its socket, whatever containerd's state dir is. */
export const SHIM_SOCKET_DIR = "/run/containerd/s";

/** The layout of a private containerd in `dir`. */
export function privateContainerdPaths(dir: string): PrivateContainerdPaths {
  return {
    root: join(dir, "root"),
    state: join(dir, "state"),
    temp: join(dir, "tmp"),
    opt: join(dir, "opt"),
    address: join(dir, "containerd.sock"),
    ttrpcAddress: join(dir, "containerd.sock.ttrpc"),
  };
}

export interface LaunchOptions extends PrivateContainerdOptions {
  /** The instance's directory, already created and the caller's to remove. */
  dir: string;
  /** TOML deep-merged over the generated config. */
  extraConfig?: string;
  /** Directories put first on containerd's PATH, where it looks up shim binaries. */
  pathPrepend: string[];
  /** Extra environment for containerd, inherited by the shims it starts. */
  env?: Record<string, string>;
  /** Its own process group, so that a Ctrl-C in the terminal reaches only us. */
  detached?: boolean;
  startTimeoutMs: number;
  signal?: AbortSignal;
}

export interface PrivateContainerd {
  readonly paths: PrivateContainerdPaths;
  readonly configPath: string;
  readonly logPath: string;
  readonly pid: number;
  log(): string;
  logTail(n?: number): string;
  running(): boolean;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves true if it exited on SIGTERM. Idempotent. */
  stop(graceMs: number): Promise<boolean>;
}

/** True if `p` settles within `ms`; leaves no timer behind (it would keep the process alive). */
export function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    const done = () => {
      clearTimeout(t);
      resolve(true);
    };
    p.then(done, done);
  });
}

function isSocket(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}

export function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

export const tailLines = (text: string, n: number) => text.split("\n").filter(Boolean).slice(-n).join("\n");

/**
 * Shim sockets of the tasks containerd in `paths` knows: named after its address, the namespace and
 * the container, or whatever a task's address file says (a group's daemon). A shim removes its own
 * when it exits cleanly; those of killed shims are left for the caller to delete.
 */
export function taskShimSockets(paths: PrivateContainerdPaths): string[] {
  const out: string[] = [];
  const taskRoot = join(paths.state, "io.containerd.runtime.v2.task");
  for (const ns of listDir(taskRoot)) {
    for (const id of listDir(join(taskRoot, ns))) {
      out.push(socketPath(paths.address, [ns, id], SHIM_SOCKET_DIR));
      try {
        const addr = readFileSync(join(taskRoot, ns, id, "address"), "utf8").trim();
        if (addr.startsWith("unix://")) out.push(addr.slice("unix://".length));
      } catch {
        // no address file
      }
    }
  }
  return out;
}

/**
 * Writes the config and starts containerd; resolves once it answers on its sockets (and, with CRI,
 * once the CRI service takes requests). On failure it has stopped containerd again and rejects with
 * the log's tail.
 */
export async function launchPrivateContainerd(o: LaunchOptions): Promise<PrivateContainerd> {
  const paths = privateContainerdPaths(o.dir);
  for (const d of [paths.root, paths.state, paths.temp, paths.opt]) mkdirSync(d, { recursive: true });
  const configPath = join(o.dir, "containerd.toml");
  const logPath = join(o.dir, "containerd.log");
  writeFileSync(configPath, renderContainerdConfig(privateContainerdConfig(paths, o), o.extraConfig));

  const log = () => {
    try {
      return readFileSync(logPath, "utf8");
    } catch {
      return "";
    }
  };
  const logTail = (n = 60) => tailLines(log(), n);
  const logFd = openSync(logPath, "a");
  let child: ChildProcess;
  try {
    child = spawn(CONTAINERD_BIN, ["--config", configPath], {
      stdio: ["ignore", logFd, logFd],
      detached: !!o.detached,
      cwd: o.dir,
      env: { ...process.env, ...o.env, PATH: [...o.pathPrepend, process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"].join(":") },
    });
  } finally {
    closeSync(logFd);
  }
  const c = child;
  let spawnError: Error | undefined;
  // A failed spawn emits "error" and no "exit".
  const exited = new Promise<void>((resolve) => {
    c.once("exit", () => resolve());
    c.once("error", (e) => {
      spawnError = e;
      resolve();
    });
  });
  const running = () => !spawnError && c.exitCode === null && c.signalCode === null;
  // Last resort if this process dies without stop(): no containerd left running in the background.
  const killOnExit = () => {
    if (running()) c.kill("SIGKILL");
  };
  process.once("exit", killOnExit);
  let stopping: Promise<boolean> | undefined;
  const stop = (graceMs: number) =>
    (stopping ??= (async () => {
      let clean = true;
      if (running()) {
        c.kill("SIGTERM");
        if (!(await settlesWithin(exited, graceMs))) {
          clean = false;
          c.kill("SIGKILL");
          await exited;
        }
      }
      process.removeListener("exit", killOnExit);
      return clean;
    })());

  const deadline = Date.now() + o.startTimeoutMs;
  try {
    for (;;) {
      if (spawnError) throw new Error(`cannot run ${CONTAINERD_BIN}: ${spawnError.message}`);
      if (!running()) throw new Error(`containerd exited (${c.exitCode ?? c.signalCode}) before listening`);
      // The CRI service answers only once it has finished initialising, just after it logs this line.
      const criReady = !o.cri || log().includes('msg="Start streaming server"');
      if (criReady && isSocket(paths.address) && isSocket(paths.ttrpcAddress) && (await canConnect(paths.address, 1000))) break;
      if (Date.now() > deadline) throw new Error(`containerd did not become ready on ${paths.address} within ${o.startTimeoutMs} ms`);
      await delay(50, o.signal);
    }
  } catch (err) {
    await stop(5_000);
    throw new Error(`private containerd in ${o.dir}: ${(err as Error).message}\n--- containerd log (tail) ---\n${logTail()}`);
  }
  return { paths, configPath, logPath, pid: c.pid!, log, logTail, running, stop };
}
