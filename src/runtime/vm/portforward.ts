// Port forwarding into a pod VM. containerd serves CRI PortForward (kubectl port-forward) itself: it
// enters the pod's network namespace on the host and dials localhost:PORT there. In vm mode nothing
// listens there (the pod's servers are in the guest), so the shim keeps one listener on 127.0.0.1 in
// that namespace, a netfilter rule there redirects every other loopback TCP connection to it, and each
// connection it accepts is relayed through the agent, which dials the original port in the guest
// (SO_ORIGINAL_DST tells which). Traffic to and from the pod never passes through the namespace's own
// stack (tc redirects it between veth and tap first), so only processes inside this namespace on the
// host (containerd's port-forward, nothing else in vm mode) can reach the listener.
import net from "node:net";
import type { Logger } from "../../core/log.js";
import type { Sys } from "../../sys/types.js";
import type { AgentApi } from "./agent.js";
import { inNetns } from "./network.js";

const BACKLOG = 128;
const OPEN_TIMEOUT_MS = 10_000;
const RULE_COMMENT = "cocoon port-forward";

export interface PortForwarder {
  /** The listener's own port in the pod's namespace (127.0.0.1). */
  readonly port: number;
  /** Stops listening, drops open connections and removes the rule. */
  close(): Promise<void>;
}

/** The iptables arguments (after -A/-D) of the rule that sends loopback TCP to `port`, except its own. */
export function redirectRule(port: number): string[] {
  return ["OUTPUT", "-o", "lo", "-p", "tcp", "-d", "127.0.0.1/32", "!", "--dport", String(port),
    "-m", "comment", "--comment", RULE_COMMENT, "-j", "REDIRECT", "--to-ports", String(port)];
}

const iptables = (netns: string, op: "-A" | "-D", port: number) => inNetns(netns, "iptables", ["-w", "5", "-t", "nat", op, ...redirectRule(port)]);

export async function startPortForwarder(netns: string, agent: AgentApi, sys: Sys, log: Logger): Promise<PortForwarder> {
  const { fd, port } = sys.listenLoopbackInNetns(netns, BACKLOG);
  const live = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => {
    live.add(sock);
    sock.once("close", () => live.delete(sock));
    void relay(sock, agent, sys, log);
  });
  server.on("error", (err) => log.warn("port-forward listener failed", { err: err.message }));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ fd }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  try {
    await iptables(netns, "-A", port);
  } catch (err) {
    server.close();
    throw err;
  }
  log.debug("port-forward listener ready", { port });
  let closed = false;
  return {
    port,
    async close() {
      if (closed) return;
      closed = true;
      server.close();
      for (const s of live) s.destroy();
      // Gone with the namespace anyway; removed here for pods whose namespace outlives the VM.
      await iptables(netns, "-D", port).catch(() => undefined);
    },
  };
}

/** The port containerd asked for: the original destination, or ours if it dialled us directly. */
function wantedPort(sock: net.Socket, sys: Sys): number {
  // Node has no public accessor for an accepted socket's fd; its handle has it on Unix.
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd !== undefined && fd >= 0) {
    try {
      const dst = sys.originalDestination(fd);
      if (dst) return dst.port;
    } catch {}
  }
  return sock.localPort ?? 0;
}

function drained(sock: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      sock.off("drain", done);
      sock.off("close", done);
      resolve();
    };
    sock.on("drain", done);
    sock.on("close", done);
  });
}

async function relay(sock: net.Socket, agent: AgentApi, sys: Sys, log: Logger): Promise<void> {
  sock.on("error", () => {});
  const port = wantedPort(sock, sys);
  let connectionId: number;
  try {
    ({ connectionId } = await agent.openPort({ port }, { timeoutMs: OPEN_TIMEOUT_MS }));
  } catch (err) {
    // A reset, not a clean close: containerd then reports the failure to the port-forward client.
    log.info("port-forward: cannot reach the port in the VM", { port, err: (err as Error).message });
    sock.resetAndDestroy();
    return;
  }
  const ref = { connectionId };
  sock.on("data", (data: Buffer) => {
    sock.pause();
    agent.writePort({ connectionId, data }).then(() => sock.resume(), () => sock.destroy());
  });
  // Data events stop while a write is in flight, so the half-close always follows the last write.
  sock.once("end", () => void agent.closePort({ connectionId, writeOnly: true }).catch(() => undefined));
  sock.once("close", () => void agent.closePort(ref).catch(() => undefined));
  sock.resume();
  try {
    while (!sock.destroyed) {
      const r = await agent.readPort(ref);
      if (r.data.length > 0 && !sock.write(r.data)) await drained(sock);
      if (r.eof) {
        sock.end();
        return;
      }
    }
  } catch {
    sock.destroy();
  }
}
