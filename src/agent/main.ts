// Guest agent entry point: PID 1 of every vm-mode pod VM (started by guest/init.sh). Serves the
// agent API over the virtio-serial port "agent.0", runs containers with crun, reaps every orphan,
// and never exits: a PID 1 exit panics the guest kernel.
//
// Environment (for running it outside a VM): COCOON_AGENT_PORT (default /dev/virtio-ports/agent.0),
// COCOON_AGENT_DEBUG=1 for debug logs (or cocoon.debug=1 on the guest kernel command line).
import { readFileSync, writeFileSync } from "node:fs";
import { sys } from "../sys/index.js";
import { runChild, spawnChild } from "../sys/children.js";
import { Reaper } from "../sys/reaper.js";
import { Agent } from "../gen/cocoon/agent/v1/agent_pb.js";
import { TtrpcServer } from "../ttrpc/server.js";
import { Containers } from "./containers.js";
import { errorText } from "../core/errors.js";
import { Logger } from "../core/log.js";
import { OciCli } from "../core/oci-cli.js";
import { OomEvents } from "./oom.js";
import { VirtioPort } from "./port.js";
import { PortForwards } from "./portfwd.js";
import { AGENT_SERVICE, agentService } from "./service.js";
import { AGENT_VERSION } from "./version.js";
import os from "node:os";
import { AGENT_PORT_PATH, KERNEL_PARAM } from "../core/guest-abi.js";

// One threadpool thread sits in the port's blocking read for good; leave room for the rest.
process.env["UV_THREADPOOL_SIZE"] ??= "8";

const PORT = process.env["COCOON_AGENT_PORT"] ?? AGENT_PORT_PATH;
/** Where crun's per-call JSON logs go (each removed after its call). */
const CRUN_LOG_DIR = "/run/cocoon/crun-log";

function debugWanted(): boolean {
  if (process.env["COCOON_AGENT_DEBUG"] === "1") return true;
  try {
    return readFileSync("/proc/cmdline", "utf8").split(/\s+/).includes(`${KERNEL_PARAM.debug}=1`);
  } catch {
    return false;
  }
}

// stderr of PID 1 is the serial console, which the host keeps in the sandbox's console log.
const log = new Logger(debugWanted() ? "debug" : "info", { src: "cocoon-agent" });

// PID 1 must survive its own bugs: log and carry on.
process.on("uncaughtException", (err) => log.error("uncaught exception", { err: err.stack ?? String(err) }));
process.on("unhandledRejection", (err) => log.error("unhandled rejection", { err: (err as Error)?.stack ?? String(err) }));

function powerOff(reason: string): void {
  log.info("power off", { reason });
  if (process.pid !== 1) {
    // Outside a VM (a test), powering off would hit the machine we run on.
    process.exit(0);
  }
  const fallback = () => {
    try {
      writeFileSync("/proc/sysrq-trigger", "o");
    } catch (err) {
      log.error("sysrq power off failed", { err: errorText(err) });
    }
  };
  try {
    const child = spawnChild("poweroff", ["-f"], { stdio: "ignore" });
    child.once("error", fallback);
    child.once("exit", (code) => code !== 0 && fallback());
  } catch {
    fallback();
  }
}

function guestUptimeMs(): number | undefined {
  try {
    return Math.round(Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]) * 1000);
  } catch {
    return undefined;
  }
}

async function syncDisks(): Promise<void> {
  await runChild("sync", [], { timeoutMs: 10_000 });
}

function main(): void {
  const reaper = new Reaper(sys);
  reaper.start();
  const oom = new OomEvents();
  const crun = new OciCli({ binary: "crun", logDir: CRUN_LOG_DIR });
  const containers = new Containers({ sys, reaper, crun, oom, log });
  const server = new TtrpcServer({
    onError: (err, where) => log.error("ttrpc", { where, err: errorText(err) }),
  });
  const ports = new PortForwards(log);
  server.registerService(AGENT_SERVICE, Agent, agentService({ containers, oom, ports, sys, log, powerOff, sync: syncDisks }));
  const port = new VirtioPort(PORT, (stream) => {
    server.accept(stream);
    // Forwarded connections belong to the host session that opened them.
    stream.once("close", () => ports.closeAll());
  }, log);
  const open = () => {
    try {
      port.start();
      // How long node itself and our start took show up on the console next to the kernel's times.
      log.info(`cocoon-agent ready ${os.release()}`, {
        version: AGENT_VERSION,
        port: PORT,
        pid: process.pid,
        processUptimeMs: Math.round(process.uptime() * 1000),
        guestUptimeMs: guestUptimeMs(),
      });
    } catch (err) {
      // The port may show up late (hot plug); keep trying rather than dying.
      log.error("cannot open agent port; retrying", { port: PORT, err: errorText(err) });
      setTimeout(open, 1000);
    }
  };
  open();
}

try {
  main();
} catch (err) {
  log.error("agent start failed", { err: (err as Error)?.stack ?? String(err) });
  // Stay alive as PID 1 so the console keeps the reason; the host times out and kills the VM.
  setInterval(() => {}, 1 << 30);
}
