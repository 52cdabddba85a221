// Where a shim daemon listens. containerd's own shims hash "<grpc address>/<namespace>/<group>" into a
// socket name under /run/containerd/s; following the same rule keeps names unique per containerd
// instance and lets `start` find an already running daemon for the same group.
import { createHash } from "node:crypto";
import net from "node:net";
import path from "node:path";

export const DEFAULT_SOCKET_DIR = "/run/containerd/s";

export function socketPath(grpcAddress: string, parts: string[], socketDir?: string): string {
  const key = path.posix.join(grpcAddress, ...parts);
  const digest = createHash("sha256").update(key).digest("hex");
  const dir = socketDir || process.env["COCOON_SOCKET_DIR"] || DEFAULT_SOCKET_DIR;
  return path.join(dir, digest);
}

export const toAddress = (socket: string) => `unix://${socket}`;

export function fromAddress(address: string): string {
  return address.startsWith("unix://") ? address.slice("unix://".length) : address;
}

/** Whether a daemon answers on this socket (a stale socket file refuses the connection). */
export function canConnect(p: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    const done = (ok: boolean) => {
      clearTimeout(t);
      s.destroy();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), timeoutMs);
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}
