// The guest end of port forwarding: each connection the host accepted for the pod (CRI PortForward)
// is dialled here to a guest TCP port, then carried by WritePort / ReadPort calls. The guest's
// replies wait in a bounded buffer (the socket is paused when it fills), like container output.
import net from "node:net";
import os from "node:os";
import { failedPrecondition, invalidArgument, notFound } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { OutputBuffer, type OutputChunk } from "./output.js";

const DIAL_TIMEOUT_MS = 5000;
/** Open connections at once; a host that forgets to close them cannot exhaust the guest. */
const MAX_CONNECTIONS = 1024;

interface Conn {
  socket: net.Socket;
  out: OutputBuffer;
}

/**
 * Where to dial, in order: localhost (IPv4 then IPv6), which is what containerd dials for a runc pod,
 * then the guest's own addresses, so that a server bound only to the pod IP is reached as well.
 */
export function dialOrder(): string[] {
  const own = Object.values(os.networkInterfaces()).flatMap((list) => list ?? []).filter((a) => !a.internal && !a.address.startsWith("fe80:"));
  return ["127.0.0.1", "::1", ...own.map((a) => a.address)];
}

function dial(host: string, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => s.destroy(new Error(`connect ${host}:${port}: timed out`)), DIAL_TIMEOUT_MS);
    s.once("connect", () => {
      clearTimeout(timer);
      s.removeAllListeners("error");
      resolve(s);
    });
    s.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export class PortForwards {
  private readonly conns = new Map<number, Conn>();
  private nextId = 1;

  constructor(private readonly log: Logger) {}

  get size(): number {
    return this.conns.size;
  }

  async open(port: number, hosts = dialOrder()): Promise<{ id: number; address: string }> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalidArgument(`port ${port} is not a TCP port`);
    if (this.conns.size >= MAX_CONNECTIONS) throw failedPrecondition(`too many forwarded connections (${MAX_CONNECTIONS})`);
    const errors: string[] = [];
    for (const host of hosts) {
      let socket: net.Socket;
      try {
        socket = await dial(host, port);
      } catch (err) {
        errors.push(`${host}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        continue;
      }
      const id = this.nextId;
      this.nextId = id >= 0xffffffff ? 1 : id + 1;
      const out = new OutputBuffer();
      socket.on("error", (err) => this.log.debug("forwarded connection failed", { id, err: err.message }));
      out.attach(socket);
      this.conns.set(id, { socket, out });
      const address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
      this.log.debug("port connection opened", { id, address });
      return { id, address };
    }
    throw notFound(`nothing listens on port ${port} in the pod (${errors.join(", ")})`);
  }

  private conn(id: number): Conn {
    const c = this.conns.get(id);
    if (!c) throw notFound(`port connection ${id}`);
    return c;
  }

  async write(id: number, data: Uint8Array): Promise<void> {
    const { socket } = this.conn(id);
    if (!socket.writable) throw failedPrecondition(`port connection ${id} is closed for writing`);
    return new Promise((resolve, reject) => socket.write(data, (err) => (err ? reject(failedPrecondition(`port connection ${id}: ${err.message}`)) : resolve())));
  }

  async read(id: number, signal?: AbortSignal): Promise<OutputChunk> {
    return this.conn(id).out.read(signal);
  }

  /** Half-close (the host's peer sent FIN) or close the connection; unknown ids are already closed. */
  close(id: number, writeOnly: boolean): void {
    const c = this.conns.get(id);
    if (!c) return;
    if (writeOnly) {
      c.socket.end();
      return;
    }
    this.conns.delete(id);
    c.socket.destroy();
    c.out.close();
  }

  /** The host went away: nobody will read or close these any more. */
  closeAll(): void {
    for (const id of [...this.conns.keys()]) this.close(id, false);
  }
}
