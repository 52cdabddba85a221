// The two commands containerd runs: `start` (find or launch the daemon for this container's group
// and print its address) and `delete` (clean up after a task whose daemon may be gone).
import { closeSync, mkdirSync, readFileSync, readSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { readStateFile, writeStateFile } from "./statefs.js";
import type { Sys } from "../sys/types.js";
import path from "node:path";
import { readBootstrapParams, writeBootstrapResult } from "./options-wire.js";
import { ensureStartDirs, rememberStart } from "./fast-start.js";
import { SPARE_KEY_ENV, SPARE_WATCH_ENV, watchOf } from "./spare-pool.js";
import { groupOf, launcherStartKeys, START_KEYS_ENV } from "./start-protocol.js";
import { canConnect, socketPath, toAddress } from "./address.js";
import { spawnChild } from "../sys/children.js";
import type { CocoonConfig } from "./config.js";
import type { ShimFlags } from "./flags.js";
import { decodeOptions, decodeOptionsAny, resolveConfig, type RuntimeOptions } from "./options.js";

/** Socket of the daemon that serves this container: per pod, or one per node and config file. */
export function daemonSocket(flags: ShimFlags, cfg: CocoonConfig, annotations: Record<string, string> | undefined, socketDir?: string): string {
  if (cfg.grouping === "node") return socketPath(flags.address, ["cocoon-node", cfg.mode, cfg.source || "default"], socketDir);
  return socketPath(flags.address, [flags.namespace, groupOf(annotations, flags.id)], socketDir);
}

/** What `start` learned from its stdin, in either bootstrap protocol. */
export interface StartInput {
  protocol: "legacy" | "bootstrap-v1";
  options: RuntimeOptions;
  ttrpcAddress?: string;
  grpcAddress?: string;
  socketDir?: string;
}

const KNOWN_OPTION_TYPES = ["containerd.runc.v1.Options", "runtimeoptions.v1.Options"];

/**
 * containerd 1.6 writes the runtime options Any; containerd 2.x writes BootstrapParams. An Any can
 * also decode as BootstrapParams, so (as containerd's own shims do) the params only count when their
 * instance id and namespace match our command line.
 */
export function parseStartInput(bytes: Uint8Array, flags: ShimFlags): StartInput {
  if (bytes.length > 0) {
    let params;
    try {
      params = readBootstrapParams(bytes);
    } catch {
      params = undefined;
    }
    if (params && params.instanceId === flags.id && params.namespace === flags.namespace && flags.id) {
      let options: RuntimeOptions = { kind: "none" };
      for (const any of params.extensions) {
        if (KNOWN_OPTION_TYPES.some((t) => any.typeUrl.endsWith(t))) options = decodeOptions(any.typeUrl, any.value);
      }
      const strip = (a: string) => a.replace(/^unix:\/\//, "");
      return {
        protocol: "bootstrap-v1",
        options,
        ttrpcAddress: params.containerdTtrpcAddress ? strip(params.containerdTtrpcAddress) : undefined,
        grpcAddress: params.containerdGrpcAddress ? strip(params.containerdGrpcAddress) : undefined,
        socketDir: params.socketDir || undefined,
      };
    }
  }
  return { protocol: "legacy", options: decodeOptionsAny(bytes) };
}

/** The reply `start` prints: a plain address (1.6) or a BootstrapResult message (2.x). */
export function startReply(input: StartInput, address: string): Uint8Array | string {
  if (input.protocol === "legacy") return address;
  return writeBootstrapResult(2, address, "ttrpc");
}

function readStdin(): Buffer {
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(65536);
  for (;;) {
    let n = 0;
    try {
      n = readSync(0, buf, 0, buf.length, null);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EAGAIN") continue;
      if (code === "EOF" || code === "EBADF" || code === "ENXIO") break;
      throw err;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks);
}

/**
 * A raw listening fd (not a net.Server, whose close would unlink the path), or "in-use". The socket
 * is born 0600 (umask around bind): whoever can connect to it can have root run containers, so only
 * root may, whatever umask containerd runs with.
 */
function listen(sys: Sys, p: string): number | "in-use" {
  const umask = process.umask(0o177);
  try {
    return sys.listenUnix(p, 128);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EADDRINUSE") return "in-use";
    throw err;
  } finally {
    process.umask(umask);
  }
}

export function writeAddressFile(bundle: string, address: string) {
  writeStateFile(path.join(bundle, "address"), address);
}

function readAnnotations(bundle: string): Record<string, string> | undefined {
  try {
    return JSON.parse(readStateFile(path.join(bundle, "config.json")) ?? "null")?.annotations;
  } catch {
    return undefined;
  }
}

/** What one `start` resolved to: the daemon's socket for this container, and what to tell containerd. */
export interface StartPlan {
  bundle: string;
  input: StartInput;
  cfg: CocoonConfig;
  sock: string;
  address: string;
}

/**
 * Everything `start` decides before touching the socket: options in either protocol, the config they
 * select (the environment's COCOON_CONFIG as fallback), the group's socket; and the fast-start memo.
 */
export function planStart(flags: ShimFlags, bundle: string, stdin: Uint8Array, env: NodeJS.ProcessEnv = process.env): StartPlan {
  // Fails `start` with a clear message if /run/cocoon is not root's alone: better than trusting it.
  ensureStartDirs();
  const input = parseStartInput(stdin, flags);
  const cfg = resolveConfig(input.options, env);
  const annotations = readAnnotations(bundle);
  const sock = daemonSocket(flags, cfg, annotations, input.socketDir);
  const address = toAddress(sock);
  // The launcher's fast path only speaks containerd 1.6's plain-address reply. With node grouping
  // the address does not depend on the container's group: the launcher's key for that leaves it out.
  const keys = launcherStartKeys(env);
  if (keys && input.protocol === "legacy") rememberStart(cfg.grouping === "node" ? keys.node : keys.pod, address);
  return { bundle, input, cfg, sock, address };
}

/**
 * Binds the group's socket for a new daemon, or finds that a live daemon already serves it
 * ("reused"). A socket file nobody answers on is a dead daemon's (or a half-done spare's): replaced.
 */
export async function bindDaemonSocket(sys: Sys, sock: string): Promise<number | "reused"> {
  mkdirSync(path.dirname(sock), { recursive: true, mode: 0o711 });
  for (let attempt = 0; attempt < 3; attempt++) {
    const fd = listen(sys, sock);
    if (fd !== "in-use") return fd;
    if (await canConnect(sock, 100)) return "reused";
    try {
      unlinkSync(sock);
    } catch {}
  }
  throw new Error(`cannot listen on ${sock}: stale socket keeps coming back`);
}

export interface StartResult {
  address: string;
  reused: boolean;
  reply: Uint8Array | string;
}

/**
 * `start`: containerd reads our combined stdout+stderr as the address, so nothing else may be
 * printed, and it waits for every holder of that pipe, so the daemon gets no inherited stdio.
 */
export async function startCommand(sys: Sys, flags: ShimFlags, daemonArgv: string[]): Promise<StartResult> {
  const plan = planStart(flags, process.cwd(), readStdin());
  const { bundle, input, sock, address } = plan;
  const fd = await bindDaemonSocket(sys, sock);
  if (fd !== "reused") {
    // The daemon inherits the listening socket as fd 3: containerd may connect as soon as we
    // exit, and the kernel queues that connection until the daemon accepts it.
    const spareKey = process.env[SPARE_KEY_ENV];
    const watch = spareKey ? watchOf(process.ppid) : undefined;
    // The launcher's memo keys were for this start only.
    const { [START_KEYS_ENV]: _keys, ...env } = process.env;
    const child = spawnChild(process.execPath, [...process.execArgv, ...daemonArgv], {
      cwd: bundle,
      detached: true,
      stdio: ["ignore", "ignore", "ignore", fd],
      env: {
        ...env,
        ...(input.ttrpcAddress ? { TTRPC_ADDRESS: input.ttrpcAddress } : {}),
        // The daemon tops up the spare pool for the launcher that ran us (containerd = our parent).
        ...(watch ? { [SPARE_WATCH_ENV]: watch } : {}),
        COCOON_OPTIONS: encodeOptions(input.options),
        COCOON_SOCKET: sock,
      },
    });
    child.unref();
    if (child.pid) adjustOomScore(child.pid, process.ppid);
    if (input.options.kind === "runc" && input.options.runc.shimCgroup && child.pid) joinCgroup(input.options.runc.shimCgroup, child.pid);
    closeSync(fd);
  }
  writeAddressFile(bundle, address);
  return { address, reused: fd === "reused", reply: startReply(input, address) };
}

/** The daemon gets the decoded options as JSON (bytes as base64), whatever protocol carried them. */
export function encodeOptions(o: RuntimeOptions): string {
  return JSON.stringify(o, (_k, v) => (v instanceof Uint8Array ? { b64: Buffer.from(v).toString("base64") } : v));
}

export function decodeOptionsEnv(text: string | undefined): RuntimeOptions {
  if (!text) return { kind: "none" };
  return JSON.parse(text, (_k, v) => (v && typeof v === "object" && typeof v.b64 === "string" ? new Uint8Array(Buffer.from(v.b64, "base64")) : v));
}

/** Like containerd's shims: a bit more likely to be OOM-killed than containerd itself. */
export function adjustOomScore(pid: number, containerdPid: number) {
  try {
    const parent = Number(readFileSync(`/proc/${containerdPid}/oom_score_adj`, "utf8"));
    writeFileSync(`/proc/${pid}/oom_score_adj`, String(Math.min(parent + 1, 1000)));
  } catch {}
}

export function joinCgroup(cg: string, pid: number) {
  for (const base of ["/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/pids"]) {
    try {
      writeFileSync(path.join(base, cg, "cgroup.procs"), String(pid));
    } catch {}
  }
}

export function writeStdout(bytes: Uint8Array | string) {
  const fd = 1;
  let off = 0;
  const buf = typeof bytes === "string" ? Buffer.from(bytes) : Buffer.from(bytes);
  while (off < buf.length) off += writeSync(fd, buf, off);
}

