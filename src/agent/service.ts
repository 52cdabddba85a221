// The agent API (cocoon.agent.v1.Agent) on top of the container store: request fields in,
// replies out. Long-running calls (ReadOutput, WaitProcess, NextOomEvent) hold their reply until
// there is something to say and give up without consuming anything when the call is abandoned
// (the connection closes or the call's deadline passes).
import { readFileSync } from "node:fs";
import os from "node:os";
import { Agent, Stream } from "../gen/cocoon/agent/v1/agent_pb.js";
import type { StdioFlags as StdioFlagsMsg } from "../gen/cocoon/agent/v1/agent_pb.js";
import type { ServiceImpl } from "../ttrpc/server.js";
import type { Sys } from "../sys/types.js";
import type { Containers } from "./containers.js";
import { errorText, invalidArgument } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { setupNetwork } from "./network.js";
import { restored } from "./restore.js";
import type { OomEvents } from "./oom.js";
import type { PortForwards } from "./portfwd.js";
import type { StdioFlags } from "./stdio.js";
import { AGENT_VERSION } from "./version.js";
export { AGENT_SERVICE } from "../core/guest-abi.js";

export interface ServiceDeps {
  containers: Containers;
  oom: OomEvents;
  ports: PortForwards;
  sys: Sys;
  log: Logger;
  /** Flushes file systems and powers the VM off; called once the Shutdown reply is on its way. */
  powerOff: (reason: string) => void;
  /** Runs `sync`. */
  sync: () => Promise<void>;
}

/** Power off anyway if the Shutdown reply cannot be written (e.g. the host went away). */
const SHUTDOWN_REPLY_GRACE_MS = 3000;

function flags(f: StdioFlagsMsg | undefined): StdioFlags {
  return { stdin: !!f?.stdin, stdout: !!f?.stdout, stderr: !!f?.stderr, terminal: !!f?.terminal };
}

function uptimeMs(): bigint {
  try {
    return BigInt(Math.round(Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]) * 1000));
  } catch {
    return BigInt(Math.round(os.uptime() * 1000));
  }
}

export function agentService(d: ServiceDeps): ServiceImpl<typeof Agent> {
  const c = d.containers;
  let shuttingDown = false;
  return {
    health: () => ({ agentVersion: AGENT_VERSION, kernelRelease: os.release(), uptimeMs: uptimeMs() }),

    restored: async (req) => {
      await restored({ unixTimeNs: req.unixTimeNs, templateMac: req.templateMac, mac: req.mac, entropy: req.entropy }, d.sys, d.log);
      return {};
    },

    setupNetwork: async (req) => {
      await setupNetwork(
        {
          interfaces: req.interfaces.map((i) => ({ mac: i.mac, name: i.name, mtu: i.mtu, addresses: i.addresses.map((a) => a.cidr) })),
          routes: req.routes.map((r) => ({ destination: r.destination, gateway: r.gateway, device: r.device })),
          hostname: req.hostname,
        },
        d.sys,
        d.log,
      );
      return {};
    },

    createContainer: async (req) => ({ pid: await c.create(req.containerId, req.specJson, flags(req.stdio)) }),

    startProcess: async (req) => ({ pid: await c.start(req) }),

    execProcess: (req) => {
      c.exec(req.containerId, req.execId, req.processJson, flags(req.stdio));
      return {};
    },

    signalProcess: async (req) => {
      if (req.signal === 0 || req.signal > 64) throw invalidArgument(`invalid signal ${req.signal}`);
      await c.signal(req, req.signal, req.all);
      return {};
    },

    waitProcess: async (req, ctx) => {
      const e = await c.wait(req, ctx.signal);
      return { exitStatus: e.status, exitedAtMs: BigInt(e.at.getTime()) };
    },

    removeProcess: (req) => {
      c.removeProcess(req);
      return {};
    },

    removeContainer: async (req) => {
      await c.removeContainer(req.containerId);
      return {};
    },

    writeStdin: async (req) => {
      await c.stdio(req).write(req.data);
      return {};
    },

    closeStdin: (req) => {
      c.stdio(req).closeStdin();
      return {};
    },

    readOutput: async (req, ctx) => {
      const stream = req.stream === Stream.STDERR ? "stderr" : "stdout";
      const chunk = await c.read(req, stream, ctx.signal);
      return { data: chunk.data, eof: chunk.eof };
    },

    resizeTty: (req) => {
      c.stdio(req).resize(req.rows, req.cols);
      return {};
    },

    pids: async (req) => ({ processes: await c.pids(req.containerId) }),

    pause: async (req) => {
      await c.pause(req.containerId);
      return {};
    },

    resume: async (req) => {
      await c.resume(req.containerId);
      return {};
    },

    updateResources: async (req) => {
      await c.update(req.containerId, req.resourcesJson);
      return {};
    },

    stats: (req) => c.stats(req.containerId),

    nextOomEvent: async (_req, ctx) => ({ containerId: await d.oom.next(ctx.signal) }),

    openPort: async (req) => {
      const { id, address } = await d.ports.open(req.port);
      return { connectionId: id, address };
    },

    writePort: async (req) => {
      await d.ports.write(req.connectionId, req.data);
      return {};
    },

    readPort: async (req, ctx) => {
      const chunk = await d.ports.read(req.connectionId, ctx.signal);
      return { data: chunk.data, eof: chunk.eof };
    },

    closePort: (req) => {
      d.ports.close(req.connectionId, req.writeOnly);
      return {};
    },

    shutdown: async (_req, ctx) => {
      if (!shuttingDown) {
        shuttingDown = true;
        d.log.info("shutdown requested", { containers: c.ids.length });
        await c.removeAll();
        await d.sync().catch((err) => d.log.warn("sync failed", { err: errorText(err) }));
        const fallback = setTimeout(() => d.powerOff("shutdown (reply not delivered)"), SHUTDOWN_REPLY_GRACE_MS);
        ctx.afterReply(() => {
          clearTimeout(fallback);
          d.powerOff("shutdown");
        });
      }
      return {};
    },
  };
}
