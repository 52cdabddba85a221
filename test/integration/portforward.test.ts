// Port forwarding into pod VMs without a VM: the agent's end dialling real sockets, the WebSocket
// framing of the CRI streaming client, and the host's forwarder in a real network namespace (a
// REDIRECT rule, SO_ORIGINAL_DST) relaying through an in-process stand-in for the agent.
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import { PortForwards } from "../../src/agent/portfwd.js";
import { Logger as AgentLogger } from "../../src/core/log.js";
import { encodeFrame, FrameParser } from "../../src/cli/cri/portforward.js";
import type { AgentApi } from "../../src/runtime/vm/agent.js";
import { startPortForwarder } from "../../src/runtime/vm/portforward.js";
import { Logger } from "../../src/core/log.js";
import { sys } from "../../src/sys/index.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { run } from "../helpers/util.js";

const quiet = new AgentLogger("error");

/** A TCP server on the host's 127.0.0.1 that answers every connection with `reply` after reading a line. */
async function lineServer(reply: (line: string) => string): Promise<net.Server> {
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    let buf = "";
    s.on("data", (d) => {
      buf += d.toString();
      if (buf.includes("\n")) s.end(reply(buf.trim()));
    });
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  return srv;
}
const portOf = (s: net.Server) => (s.address() as net.AddressInfo).port;

describe("agent PortForwards", () => {
  it("dials the first address that answers, relays both ways and reports eof", async () => {
    const srv = await lineServer((l) => `echo:${l}`);
    const ports = new PortForwards(quiet);
    try {
      // ::1 may be absent here; a refused address is skipped for the next.
      const { id, address } = await ports.open(portOf(srv), ["127.0.0.2", "127.0.0.1"]);
      assert.match(address, /^127\.0\.0\.[12]:/);
      await ports.write(id, Buffer.from("hi\n"));
      let got = "";
      for (;;) {
        const c = await ports.read(id);
        got += c.data.toString();
        if (c.eof) break;
      }
      assert.equal(got, "echo:hi");
      ports.close(id, false);
      assert.equal(ports.size, 0);
      await assert.rejects(ports.read(id), /port connection/);
    } finally {
      srv.close();
    }
  });

  it("says nothing listens when every address refuses, and checks the port", async () => {
    const srv = await lineServer(() => "");
    const port = portOf(srv);
    await new Promise((r) => srv.close(r));
    const ports = new PortForwards(quiet);
    await assert.rejects(ports.open(port, ["127.0.0.1"]), (e: Error) => e.message.includes(`nothing listens on port ${port}`));
    await assert.rejects(ports.open(0), /not a TCP port/);
  });

  it("half-closes on request and drops everything when the host goes", async () => {
    const srv = net.createServer({ allowHalfOpen: true }, (s) => {
      let n = 0;
      s.on("data", (d) => (n += d.length));
      s.on("end", () => s.end(`got ${n}`));
    });
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const ports = new PortForwards(quiet);
    try {
      const a = await ports.open(portOf(srv), ["127.0.0.1"]);
      const b = await ports.open(portOf(srv), ["127.0.0.1"]);
      await ports.write(a.id, Buffer.alloc(5000));
      ports.close(a.id, true);
      let got = "";
      for (let c = await ports.read(a.id); ; c = await ports.read(a.id)) {
        got += c.data.toString();
        if (c.eof) break;
      }
      assert.equal(got, "got 5000");
      const pending = ports.read(b.id);
      ports.closeAll();
      assert.deepEqual((await pending).eof, true);
      assert.equal(ports.size, 0);
    } finally {
      srv.close();
    }
  });
});

describe("WebSocket frames of the port-forward client", () => {
  it("masks what it sends and parses frames split anywhere, of every length form", () => {
    for (const len of [0, 5, 125, 126, 70_000]) {
      const payload = Buffer.alloc(len, 7);
      const frame = encodeFrame(0x2, payload);
      assert.equal(frame[0], 0x82);
      assert.ok((frame[1]! & 0x80) !== 0, "client frames are masked");
      const p = new FrameParser();
      const frames = [...p.push(frame.subarray(0, 3)), ...p.push(frame.subarray(3))];
      assert.equal(frames.length, 1);
      assert.deepEqual(frames[0], { fin: true, opcode: 0x2, payload });
    }
  });
});

describe("host forwarder in a pod network namespace", () => {
  const ns = `cocoon-pfw-${process.pid}`;
  const nsPath = `/run/netns/${ns}`;
  let host: HostSnapshot;
  let guest: PortForwards;

  /** The agent API calls the forwarder makes, served in-process by a PortForwards on the host. */
  function fakeAgent(): AgentApi {
    return {
      openPort: async (r: { port: number }) => {
        const o = await guest.open(r.port, ["127.0.0.1"]);
        return { connectionId: o.id, address: o.address };
      },
      writePort: async (r: { connectionId: number; data: Uint8Array }) => (await guest.write(r.connectionId, r.data), {}),
      readPort: async (r: { connectionId: number }) => guest.read(r.connectionId),
      closePort: async (r: { connectionId: number; writeOnly?: boolean }) => (guest.close(r.connectionId, !!r.writeOnly), {}),
    } as unknown as AgentApi;
  }

  /** An HTTP GET from inside the namespace, dialled as containerd's port-forward does: 127.0.0.1:port. */
  const getInNs = (port: number) => run("nsenter", [`--net=${nsPath}`, "--", "busybox", "nc", "127.0.0.1", String(port)], { input: "GET /x HTTP/1.0\r\n\r\n", timeoutMs: 20_000 });
  const natRules = async () => (await run("nsenter", [`--net=${nsPath}`, "--", "iptables", "-w", "5", "-t", "nat", "-S", "OUTPUT"])).stdout;

  before(async () => {
    host = await snapshotHost();
    await run("ip", ["netns", "add", ns]);
    await run("ip", ["-n", ns, "link", "set", "lo", "up"]);
    guest = new PortForwards(quiet);
  });

  after(async () => {
    guest?.closeAll();
    await run("ip", ["netns", "del", ns]).catch(() => undefined);
    await assertNoLeaks(host, { graceMs: 5_000 });
  });

  it("sends any loopback port in the namespace to that port behind the agent, and removes its rule", async () => {
    // Stands for the servers in the guest: in the host's namespace, where nothing in the pod's one can reach.
    const web = http.createServer((req, res) => res.end(`page ${req.url}`));
    await new Promise<void>((r) => web.listen(0, "127.0.0.1", r));
    const webPort = (web.address() as net.AddressInfo).port;
    const fwd = await startPortForwarder(nsPath, fakeAgent(), sys, new Logger("error"));
    try {
      assert.match(await natRules(), new RegExp(`REDIRECT --to-ports ${fwd.port}`));
      const r = await getInNs(webPort);
      assert.match(r.stdout, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\npage \/x$/, r.stderr);
      // Nothing on that port behind the agent: the client's connection ends unanswered.
      web.close();
      assert.equal((await getInNs(webPort)).stdout, "");
    } finally {
      await fwd.close();
      web.close();
    }
    assert.doesNotMatch(await natRules(), /REDIRECT/);
    assert.equal(guest.size, 0);
    // The listener is gone too: in the namespace nothing listens any more.
    const ss = await run("nsenter", [`--net=${nsPath}`, "--", "ss", "-Hltn"]);
    assert.equal(ss.stdout.trim(), "");
  });
});
