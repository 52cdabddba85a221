// Moves a guest process's stdio between the agent (long-poll ReadOutput / WriteStdin) and the host
// side that containerd asked for (FIFOs, a file, a logging binary), as opened by ProcessIO.
import { closeSync, createWriteStream, fstatSync } from "node:fs";
import net from "node:net";
import type { Writable } from "node:stream";
import { Stream } from "../../gen/cocoon/agent/v1/agent_pb.js";
import type { AgentApi } from "./agent.js";

export interface Relay {
  /** Resolves when both output streams reached EOF (or the relay was stopped). */
  readonly outputDone: Promise<void>;
  stop(): void;
}

function writerFor(fd: number): Writable {
  if (fstatSync(fd).isFIFO()) {
    const s = new net.Socket({ fd, readable: false, writable: true });
    s.on("error", () => {});
    return s;
  }
  const w = createWriteStream("", { fd, autoClose: true });
  w.on("error", () => {});
  return w;
}

export function startRelay(agent: AgentApi, containerId: string, execId: string, fds: [number, number, number], hasStdin: boolean): Relay {
  let stopped = false;
  const [inFd, outFd, errFd] = fds;
  const cleanups: Array<() => void> = [];
  if (hasStdin && inFd >= 0) {
    const src = new net.Socket({ fd: inFd, readable: true, writable: false });
    src.on("data", (chunk) => {
      src.pause();
      agent.writeStdin({ containerId, execId, data: chunk }).catch(() => {}).finally(() => src.resume());
    });
    src.once("end", () => void agent.closeStdin({ containerId, execId }).catch(() => {}));
    src.on("error", () => {});
    cleanups.push(() => src.destroy());
  } else if (inFd >= 0) closeSync(inFd);

  const pump = async (stream: Stream, fd: number) => {
    if (fd < 0) return;
    const out = writerFor(fd);
    cleanups.push(() => out.destroy());
    try {
      while (!stopped) {
        const r = await agent.readOutput({ containerId, execId, stream });
        if (r.data.length > 0 && !out.write(r.data)) await new Promise((res) => out.once("drain", res));
        if (r.eof) break;
      }
    } catch {
      // The agent went away: the VM is gone, nothing more will come.
    } finally {
      out.end();
    }
  };
  const outputDone = Promise.all([pump(Stream.STDOUT, outFd), pump(Stream.STDERR, errFd)]).then(() => undefined);
  return {
    outputDone,
    stop() {
      stopped = true;
      for (const c of cleanups) c();
    },
  };
}
