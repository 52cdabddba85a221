// The long-running shim process: serves the Task API on the socket it is handed (inherited from
// `start` as fd 3, or bound by a spare that became this daemon), for every container of its group,
// and exits after the last container's Shutdown.
import net from "node:net";
import { unlinkSync } from "node:fs";
import path from "node:path";
import { TtrpcServer } from "../ttrpc/index.js";
import type { Sys } from "../sys/types.js";
import type { ShimFlags } from "./flags.js";
import { readShimEnv } from "./flags.js";
import { Logger } from "./log.js";
import { resolveConfig, type RuntimeOptions } from "./options.js";
import { settingsFor, type CocoonConfig } from "./config.js";
import { modeNamed } from "./modes.js";
import { SPARE_KEY_ENV, SPARE_WATCH_ENV, topUpSpares } from "./spare-pool.js";
import { decodeOptionsEnv } from "./bootstrap.js";
import { forgetDaemon, recordDaemon } from "./fast-start.js";
import { Publisher } from "./publisher.js";
import { Reaper } from "../sys/reaper.js";
import { registerTaskService } from "./service.js";
import { TaskManager } from "./tasks.js";

export interface DaemonDeps {
  sys: Sys;
}

/** What the daemon serves and where: the listening socket and the `start` that made it. */
export interface DaemonHandoff {
  /** A listening AF_UNIX socket, owned by the daemon from now on. */
  listenFd: number;
  /** Its path: unlinked on exit, and the key of the fast-start record. */
  socket: string;
  options: RuntimeOptions;
  /** The first container's bundle, whose log FIFO takes the daemon's first log lines. */
  bundle: string;
  /** The spare pool this daemon tops up (pod grouping with spare_daemons > 0), if it came by the launcher. */
  spares?: { key: string; watch: string };
}

/** The daemon `start` spawned: the socket is fd 3, the rest in the environment and the cwd. */
export function spawnedHandoff(env: NodeJS.ProcessEnv = process.env): DaemonHandoff {
  const key = env[SPARE_KEY_ENV];
  const watch = env[SPARE_WATCH_ENV];
  return {
    listenFd: 3,
    socket: env["COCOON_SOCKET"] ?? "",
    options: decodeOptionsEnv(env["COCOON_OPTIONS"]),
    bundle: process.cwd(),
    ...(key && watch ? { spares: { key, watch } } : {}),
  };
}

/** How long after it starts serving a daemon tops up the spare pool: not while its first container is created. */
const SPARE_TOP_UP_DELAY_MS = 1500;

export async function runDaemon(flags: ShimFlags, deps: DaemonDeps, handoff: DaemonHandoff) {
  const t0 = performance.now();
  const env = readShimEnv(process.env);
  const log = new Logger("info", { runtime: "cocoon" });
  // Keyed by the container's id like every later sink, so that its Delete closes it.
  log.addSink(flags.id || "first", path.join(handoff.bundle, "log"));
  // The first bundle may be deleted while we still serve its pod: hold no reference to it.
  process.chdir("/");
  let cfg;
  try {
    cfg = resolveConfig(handoff.options);
  } catch (err) {
    log.error("bad runtime options", { err: (err as Error).message });
    process.exit(1);
  }
  log.setLevel(flags.debug ? "debug" : cfg.logLevel);
  const publisher = new Publisher({
    ttrpcAddress: env.ttrpcAddress,
    grpcAddress: flags.address,
    publishBinary: flags.publishBinary,
    log,
  });
  const reaper = new Reaper(deps.sys);
  reaper.start();
  let tasks!: TaskManager;
  const mode = modeNamed(cfg.mode);
  const runtime = await mode.create({
    config: cfg,
    settings: settingsFor(cfg, mode.name),
    log,
    events: { exited: (ref, pid, exit) => tasks.exited(ref, pid, exit), oom: (id) => tasks.oom(id) },
  }, { sys: deps.sys, reaper });
  tasks = new TaskManager(runtime, publisher);
  const server = new TtrpcServer({ onError: (err, where) => log.warn("ttrpc", { where, err: (err as Error)?.message ?? String(err) }) });
  const socket = handoff.socket;
  const topUp = spareTopUp(flags, cfg, handoff, log);
  let exiting = false;
  const exit = async (code = 0) => {
    if (exiting) return;
    exiting = true;
    try {
      await runtime.shutdown();
    } catch (err) {
      log.warn("runtime shutdown", { err: (err as Error).message });
    }
    await Promise.race([publisher.flush(), new Promise((r) => setTimeout(r, 2000))]);
    // Our container is gone, so a replacement spare no longer competes with it.
    topUp.now();
    publisher.close();
    reaper.stop();
    if (socket) {
      forgetDaemon(socket);
      try {
        unlinkSync(socket);
      } catch {}
    }
    log.info("shim exiting", { pid: process.pid });
    process.exit(code);
  };
  registerTaskService(server, {
    tasks,
    namespace: flags.namespace,
    log,
    exit: () => void exit(0),
    configSource: cfg.source,
    onBundle: (id, bundle) => log.addSink(id, path.join(bundle, "log")),
    // A long-lived shim (a pod with restarting containers, node grouping) would run out of fds.
    onBundleGone: (id) => log.removeSink(id),
  });
  process.on("SIGTERM", () => void exit(0));
  process.on("SIGINT", () => void exit(0));
  process.on("uncaughtException", (err) => log.error("uncaught exception", { err: err.stack ?? err.message }));
  process.on("unhandledRejection", (err) => log.error("unhandled rejection", { err: String((err as Error)?.stack ?? err) }));
  const listener = net.createServer();
  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen({ fd: handoff.listenFd }, () => resolve());
  });
  server.serve(listener);
  if (socket) recordDaemon(socket);
  topUp.later(SPARE_TOP_UP_DELAY_MS);
  log.info("shim serving", { pid: process.pid, mode: cfg.mode, grouping: cfg.grouping, socket, config: cfg.source || "(defaults)", setupMs: Math.round(performance.now() - t0) });
}

/** Starts (at most once) a spare for the pool this daemon's launcher uses, if the config wants spares. */
function spareTopUp(flags: ShimFlags, cfg: CocoonConfig, handoff: DaemonHandoff, log: Logger) {
  let done = !handoff.spares || cfg.grouping !== "pod" || cfg.spareDaemons <= 0;
  let timer: NodeJS.Timeout | undefined;
  const now = () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    try {
      const pid = topUpSpares({
        key: handoff.spares!.key,
        want: cfg.spareDaemons,
        address: flags.address,
        watch: handoff.spares!.watch,
        // The full bundle is what this daemon runs: argv[1].
        nodeArgs: [...process.execArgv, process.argv[1]!],
        env: process.env,
      });
      if (pid) log.debug("spare daemon started", { pid });
    } catch (err) {
      log.warn("cannot start a spare daemon", { err: (err as Error).message });
    }
  };
  return {
    now,
    later(ms: number) {
      if (!done) timer = setTimeout(now, ms).unref();
    },
  };
}
