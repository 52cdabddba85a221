// The long-running shim process: serves the Task API on the socket `start` handed over (fd 3),
// for every container of its group, and exits after the last container's Shutdown.
import net from "node:net";
import { unlinkSync } from "node:fs";
import path from "node:path";
import { TtrpcServer } from "../ttrpc/index.js";
import type { Sys } from "../sys/types.js";
import type { ShimFlags } from "./flags.js";
import { readShimEnv } from "./flags.js";
import { Logger } from "./log.js";
import { resolveConfig } from "./options.js";
import { decodeOptionsEnv } from "./bootstrap.js";
import { forgetDaemon, recordDaemon } from "./fast-start.js";
import { Publisher } from "./publisher.js";
import { Reaper } from "../sys/reaper.js";
import type { Runtime, RuntimeContext } from "./runtime.js";
import { registerTaskService } from "./service.js";
import { TaskManager } from "./tasks.js";

export interface DaemonDeps {
  sys: Sys;
  /** Builds the runtime for the configured mode. */
  makeRuntime(mode: string, ctx: RuntimeContext, reaper: Reaper): Runtime | Promise<Runtime>;
}

export async function runDaemon(flags: ShimFlags, deps: DaemonDeps) {
  const env = readShimEnv(process.env);
  const log = new Logger("info", { runtime: "cocoon" });
  log.addSink("first", path.join(process.cwd(), "log"));
  // The first bundle may be deleted while we still serve its pod: hold no reference to it.
  process.chdir("/");
  let cfg;
  try {
    cfg = resolveConfig(decodeOptionsEnv(process.env["COCOON_OPTIONS"]));
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
  const runtime = await deps.makeRuntime(cfg.mode, {
    config: cfg,
    log,
    events: { exited: (ref, pid, exit) => tasks.exited(ref, pid, exit), oom: (id) => tasks.oom(id) },
  }, reaper);
  tasks = new TaskManager(runtime, publisher);
  const server = new TtrpcServer({ onError: (err, where) => log.warn("ttrpc", { where, err: (err as Error)?.message ?? String(err) }) });
  const socket = process.env["COCOON_SOCKET"] ?? "";
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
  });
  process.on("SIGTERM", () => void exit(0));
  process.on("SIGINT", () => void exit(0));
  process.on("uncaughtException", (err) => log.error("uncaught exception", { err: err.stack ?? err.message }));
  process.on("unhandledRejection", (err) => log.error("unhandled rejection", { err: String((err as Error)?.stack ?? err) }));
  const listener = net.createServer();
  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen({ fd: 3 }, () => resolve());
  });
  server.serve(listener);
  if (socket) recordDaemon(socket);
  log.info("shim serving", { pid: process.pid, mode: cfg.mode, grouping: cfg.grouping, socket, config: cfg.source || "(defaults)" });
}
