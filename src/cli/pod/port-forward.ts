// `cocoon pod port-forward`: local ports on 127.0.0.1 relayed to a pod's ports through CRI PortForward.
import net from "node:net";
import type { Command } from "commander";
import type { CriClient } from "../cri/client.js";
import { openPortForward } from "../cri/portforward.js";
import { criCommand, withCri } from "./command.js";
import { callMsOf, describeError, interruptible, PodCliError, processIO, type CommonOptions, type PodIO } from "./common.js";
import { resolvePod } from "./resolve.js";

/** `[LOCAL:]REMOTE` port pairs; LOCAL 0 picks a free port. */
export function parsePortPairs(specs: string[]): Array<{ local: number; remote: number }> {
  if (specs.length === 0) throw new PodCliError("no port given: cocoon pod port-forward <pod> [LOCAL:]REMOTE…");
  return specs.map((spec) => {
    const m = /^(?:(\d+):)?(\d+)$/.exec(spec);
    const remote = Number(m?.[2]);
    const local = m?.[1] === undefined ? remote : Number(m[1]);
    if (!m || remote < 1 || remote > 65535 || local > 65535) throw new PodCliError(`"${spec}" is not [LOCAL:]REMOTE with TCP ports`);
    return { local, remote };
  });
}

/**
 * Listens on 127.0.0.1 and relays each connection through CRI PortForward (one WebSocket to the CRI
 * streaming server per connection) until interrupted, as `kubectl port-forward` does through kubelet.
 */
export async function podPortForward(cri: CriClient, ref: string, specs: string[], o: CommonOptions, io: PodIO = processIO): Promise<number> {
  const pairs = parsePortPairs(specs);
  const callMs = callMsOf(o);
  const pod = await resolvePod(cri, ref, callMs);
  const servers: net.Server[] = [];
  const stop = interruptible();
  try {
    for (const { local, remote } of pairs) {
      const server = net.createServer({ pauseOnConnect: true }, (sock) => {
        sock.on("error", () => {});
        void (async () => {
          try {
            const { url } = await cri.portForward({ podSandboxId: pod.id, port: [remote] }, { timeoutMs: callMs });
            const stream = await openPortForward(url, callMs);
            stream.on("error", () => sock.destroy());
            sock.pipe(stream).pipe(sock);
            sock.resume();
            sock.once("close", () => stream.destroy());
            const failure = await stream.failure;
            if (failure) io.err(`port ${remote}: ${failure}\n`);
          } catch (err) {
            io.err(`port ${remote}: ${describeError(err)}\n`);
            sock.destroy();
          }
        })();
      });
      await new Promise<void>((resolve, reject) => {
        server.once("error", (err) => reject(new PodCliError(`cannot listen on 127.0.0.1:${local}: ${err.message}`)));
        server.listen(local, "127.0.0.1", resolve);
      });
      servers.push(server);
      io.out(`Forwarding from 127.0.0.1:${(server.address() as net.AddressInfo).port} -> ${remote}\n`);
    }
    await new Promise((resolve) => stop.signal.addEventListener("abort", resolve, { once: true }));
    return 0;
  } finally {
    stop.done();
    for (const s of servers) s.close();
  }
}

export function portForwardCommand(): Command {
  return criCommand("port-forward", "forward local ports on 127.0.0.1 to a pod's ports (CRI PortForward, as kubectl port-forward) until Ctrl-C")
    .argument("<pod>", "pod id (prefix), name or namespace/name")
    .argument("<ports...>", "[LOCAL:]REMOTE, e.g. 8080:80 (LOCAL 0: any free port)")
    .action(withCri((cri, ref: string, ports: string[], _o: unknown, cmd: Command) => podPortForward(cri, ref, ports, cmd.opts<CommonOptions>())));
}
