// Byte-level behaviour: a raw socket against the server, and the client against a raw server.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  Code,
  FrameReader,
  MAX_MESSAGE,
  MessageType,
  TtrpcClient,
  TtrpcError,
  TtrpcServer,
  encodeFrame,
} from "../../src/ttrpc/index.js";
import type { CallContext, Frame } from "../../src/ttrpc/index.js";
import { RequestSchema, ResponseSchema } from "../../src/gen/ttrpc/ttrpc_pb.js";
import type { Response } from "../../src/gen/ttrpc/ttrpc_pb.js";
import { KillRequestSchema, Task } from "../../src/gen/containerd/task/v2/shim_pb.js";

let dir: string;
let sockN = 0;
const sockPath = () => join(dir, `w${++sockN}.sock`);
before(() => {
  dir = mkdtempSync(join(tmpdir(), "ttrpc-wire-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A bare socket speaking frames by hand. */
class RawConn {
  readonly received: Buffer[] = [];
  private readonly reader = new FrameReader(Number.MAX_SAFE_INTEGER);
  private readonly frames: Frame[] = [];
  private wake: (() => void) | undefined;
  readonly closed: Promise<void>;

  private constructor(readonly sock: net.Socket) {
    sock.on("data", (chunk: Buffer) => {
      this.received.push(Buffer.from(chunk));
      for (const ev of this.reader.push(chunk)) if (ev.kind === "frame") this.frames.push(ev);
      this.wake?.();
    });
    sock.on("error", () => {});
    this.closed = new Promise((r) => sock.on("close", () => r()));
  }

  static open(path: string): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection(path, () => resolve(new RawConn(sock)));
      sock.once("error", reject);
    });
  }

  write(buf: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => this.sock.write(buf, (err) => (err ? reject(err) : resolve())));
  }

  request(streamId: number, service: string, method: string, payload = new Uint8Array(), extra: { timeoutNano?: bigint; type?: number; flags?: number } = {}) {
    const req = toBinary(RequestSchema, create(RequestSchema, { service, method, payload, timeoutNano: extra.timeoutNano ?? 0n }));
    return this.write(encodeFrame(streamId, extra.type ?? MessageType.REQUEST, extra.flags ?? 0, req));
  }

  async next(timeoutMs = 5000): Promise<Frame> {
    const until = Date.now() + timeoutMs;
    while (this.frames.length === 0) {
      if (Date.now() > until) throw new Error("no frame received in time");
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 50);
      });
    }
    return this.frames.shift()!;
  }

  async nextResponse(): Promise<{ frame: Frame; res: Response }> {
    const frame = await this.next();
    assert.equal(frame.type, MessageType.RESPONSE);
    return { frame, res: fromBinary(ResponseSchema, frame.data) };
  }

  pendingFrames(): number {
    return this.frames.length;
  }

  destroy(): void {
    this.sock.destroy();
  }
}

async function startServer() {
  const server = new TtrpcServer();
  const calls: CallContext[] = [];
  server.registerService("containerd.task.v2.Task", Task, {
    kill: async () => ({}),
    state: async (req) => ({ id: req.id }),
  });
  server.register("test.Raw", {
    Echo: async (p, ctx) => {
      calls.push(ctx);
      return p;
    },
    NotFound: async () => {
      throw new TtrpcError(Code.NOT_FOUND, "nf");
    },
    Ctx: async (_p, ctx) =>
      Buffer.from(JSON.stringify({ deadline: ctx.deadline, now: Date.now(), aborted: ctx.signal.aborted })),
    Hang: (_p, ctx) => {
      calls.push(ctx);
      return new Promise(() => {});
    },
  });
  const path = sockPath();
  await server.listen(path);
  const conns: RawConn[] = [];
  const open = async () => {
    const c = await RawConn.open(path);
    conns.push(c);
    return c;
  };
  const stop = async () => {
    for (const c of conns) c.destroy();
    await server.close({ dropConnections: true });
  };
  return { server, path, open, stop, calls };
}

async function expectEcho(c: RawConn, streamId: number, text: string) {
  await c.request(streamId, "test.Raw", "Echo", Buffer.from(text));
  const { frame, res } = await c.nextResponse();
  assert.equal(frame.streamId, streamId);
  assert.equal(res.status, undefined);
  assert.equal(Buffer.from(res.payload).toString(), text);
}

test("an Empty success reply is a bare 10-byte frame; an error reply is 0a len 08 code 12 len msg", { timeout: 10_000 }, async () => {
  const { open, stop } = await startServer();
  try {
    const c = await open();
    const kill = toBinary(KillRequestSchema, create(KillRequestSchema, { id: "x", signal: 9 }));
    await c.request(1, "containerd.task.v2.Task", "Kill", kill);
    await c.next();
    assert.deepEqual([...Buffer.concat(c.received)], [0, 0, 0, 0, 0, 0, 0, 1, 2, 0]);
    c.received.length = 0;
    await c.request(3, "test.Raw", "NotFound");
    await c.next();
    assert.deepEqual(
      [...Buffer.concat(c.received)],
      [0, 0, 0, 8, 0, 0, 0, 3, 2, 0, 0x0a, 6, 0x08, 5, 0x12, 2, 0x6e, 0x66],
    );
  } finally {
    await stop();
  }
});

test("protocol errors: bad Request (3), bad typed payload (13), even stream id (3), unknown type ignored", { timeout: 10_000 }, async () => {
  const { open, stop } = await startServer();
  try {
    const c = await open();
    // Field 1 announces 16 bytes but only one follows.
    await c.write(encodeFrame(1, MessageType.REQUEST, 0, Uint8Array.of(0x0a, 0x10, 0x61)));
    let r = await c.nextResponse();
    assert.equal(r.frame.streamId, 1);
    assert.equal(r.res.status?.code, Code.INVALID_ARGUMENT);
    assert.match(r.res.status!.message, /^unmarshal request error: /);

    await c.request(3, "containerd.task.v2.Task", "State", Uint8Array.of(0x0a, 0x7f, 0x01));
    r = await c.nextResponse();
    assert.equal(r.frame.streamId, 3);
    assert.equal(r.res.status?.code, Code.INTERNAL);
    assert.match(r.res.status!.message, /^ttrpc: error unmarshalling payload: /);
    assert.equal(r.res.payload.length, 0);

    await c.request(4, "test.Raw", "Echo", Buffer.from("even"));
    r = await c.nextResponse();
    assert.equal(r.frame.streamId, 4);
    assert.deepEqual(
      { code: r.res.status?.code, message: r.res.status?.message },
      { code: 3, message: "StreamID must be odd for client initiated streams" },
    );

    // A data frame (ttrpc 1.2) and a response-typed frame are ignored; flags are ignored.
    await c.request(5, "test.Raw", "Echo", Buffer.from("data"), { type: MessageType.DATA });
    await c.request(7, "test.Raw", "Echo", Buffer.from("resp"), { type: MessageType.RESPONSE });
    await c.request(9, "test.Raw", "Echo", Buffer.from("flagged"), { flags: 1 });
    r = await c.nextResponse();
    assert.equal(r.frame.streamId, 9);
    assert.equal(Buffer.from(r.res.payload).toString(), "flagged");
    await sleep(30);
    assert.equal(c.pendingFrames(), 0);
    await expectEcho(c, 11, "still fine");
  } finally {
    await stop();
  }
});

test("an expired timeout_nano gives a past deadline and an aborted signal", { timeout: 10_000 }, async () => {
  const { open, stop } = await startServer();
  try {
    const c = await open();
    await c.request(1, "test.Raw", "Ctx", new Uint8Array(), { timeoutNano: -990867n });
    const r = await c.nextResponse();
    const got = JSON.parse(Buffer.from(r.res.payload).toString());
    assert.equal(got.aborted, true);
    assert.ok(got.deadline <= got.now);
    await c.request(3, "test.Raw", "Ctx", new Uint8Array(), { timeoutNano: 2_999_984_939n });
    const got2 = JSON.parse(Buffer.from((await c.nextResponse()).res.payload).toString());
    assert.equal(got2.aborted, false);
    assert.ok(got2.deadline - got2.now > 2900 && got2.deadline - got2.now <= 3000);
  } finally {
    await stop();
  }
});

test("a truncated frame followed by close ends only that connection", { timeout: 10_000 }, async () => {
  const { server, open, stop } = await startServer();
  try {
    const other = await open();
    const c = await open();
    const header = encodeFrame(1, MessageType.REQUEST, 0, new Uint8Array(100)).subarray(0, 15);
    await c.write(header);
    c.sock.end();
    await c.closed;
    await sleep(20);
    assert.equal(server.connectionCount, 1);
    await expectEcho(other, 1, "alive");
    const fresh = await open();
    await expectEcho(fresh, 1, "new");
  } finally {
    await stop();
  }
});

test("an oversized frame gets ResourceExhausted on its stream id and the connection keeps working", { timeout: 20_000 }, async () => {
  const { open, stop } = await startServer();
  try {
    const c = await open();
    const header = Buffer.alloc(10);
    header.writeUInt32BE(MAX_MESSAGE + 1, 0);
    header.writeUInt32BE(5, 4);
    header[8] = MessageType.REQUEST;
    await c.write(header);
    const chunk = new Uint8Array(256 * 1024);
    for (let sent = 0; sent < MAX_MESSAGE + 1; sent += chunk.length) {
      await c.write(chunk.subarray(0, Math.min(chunk.length, MAX_MESSAGE + 1 - sent)));
    }
    const r = await c.nextResponse();
    assert.equal(r.frame.streamId, 5);
    assert.deepEqual(
      { code: r.res.status?.code, message: r.res.status?.message },
      { code: 8, message: "message length 4194305 exceed maximum message size of 4194304" },
    );
    await expectEcho(c, 7, "after");
  } finally {
    await stop();
  }
});

test("a 64 MiB oversized frame streamed in chunks is not buffered", { timeout: 30_000 }, async () => {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  const usage = () => {
    gc();
    gc();
    const m = process.memoryUsage();
    return m.heapUsed + m.arrayBuffers;
  };
  const { open, stop } = await startServer();
  try {
    const c = await open();
    const total = 64 << 20;
    const header = Buffer.alloc(10);
    header.writeUInt32BE(total, 0);
    header.writeUInt32BE(9, 4);
    header[8] = MessageType.REQUEST;
    const before = usage();
    await c.write(header);
    const chunk = new Uint8Array(1 << 20);
    for (let sent = 0; sent < total - 1024; sent += chunk.length) {
      await c.write(chunk.subarray(0, Math.min(chunk.length, total - 1024 - sent)));
    }
    await sleep(100); // let the server read everything sent so far
    const during = usage();
    const growth = during - before;
    assert.ok(growth < 16 << 20, `memory grew by ${(growth / 1048576).toFixed(1)} MiB while streaming`);
    await c.write(new Uint8Array(1024));
    const r = await c.nextResponse();
    assert.equal(r.frame.streamId, 9);
    assert.equal(r.res.status?.code, Code.RESOURCE_EXHAUSTED);
    assert.equal(r.res.status?.message, `message length ${total} exceed maximum message size of 4194304`);
    await expectEcho(c, 11, "ok");
  } finally {
    await stop();
  }
});

test("disconnect mid-call aborts the handler's signal; the server and other connections carry on", { timeout: 10_000 }, async () => {
  const { server, open, stop, calls } = await startServer();
  try {
    const other = await open();
    const c = await open();
    await c.request(1, "test.Raw", "Hang");
    while (calls.length === 0) await sleep(5);
    const ctx = calls[0]!;
    assert.equal(ctx.signal.aborted, false);
    const aborted = new Promise((r) => ctx.signal.addEventListener("abort", r));
    c.destroy();
    await aborted;
    assert.ok(ctx.signal.reason instanceof TtrpcError);
    assert.equal(ctx.signal.reason.code, Code.CANCELLED);
    await sleep(20);
    assert.equal(server.connectionCount, 1);
    await expectEcho(other, 1, "unaffected");
    // A connection reset with requests queued, then garbage header bytes from a third connection.
    const d = await open();
    await d.write(Uint8Array.of(0xff, 0xff));
    d.destroy();
    await expectEcho(other, 3, "still");
  } finally {
    await stop();
  }
});

/** A hand-written server: `respond` sees each request frame and writes whatever it likes. */
async function rawServer(respond: (sock: net.Socket, f: Frame) => void) {
  const path = sockPath();
  const socks = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    socks.add(sock);
    sock.on("error", () => {});
    const reader = new FrameReader();
    sock.on("data", (chunk: Buffer) => {
      for (const ev of reader.push(chunk)) if (ev.kind === "frame") respond(sock, ev);
    });
  });
  await new Promise<void>((r) => srv.listen(path, r));
  const stop = () => {
    for (const s of socks) s.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  };
  return { path, stop };
}

test("client wire format matches the observed containerd Connect exchange", { timeout: 10_000 }, async () => {
  const requests: Buffer[] = [];
  const { path, stop } = await rawServer((sock, f) => {
    requests.push(Buffer.concat([encodeFrame(f.streamId, f.type, f.flags, f.data)]));
    const data = Buffer.from("1208 08a79401 10c29401".replace(/ /g, ""), "hex");
    sock.write(encodeFrame(f.streamId, MessageType.RESPONSE, 0, data));
  });
  const client = await TtrpcClient.connect(path);
  try {
    const task = client.makeClient(Task);
    await task.connect({ id: "probe0" });
    const res = await task.connect({ id: "probe1" });
    assert.equal(res.shimPid, 18983);
    assert.equal(res.taskPid, 19010);
    const expected = Buffer.concat([
      Buffer.from("0000002c000000030100", "hex"),
      Buffer.from([0x0a, 0x17]),
      Buffer.from("containerd.task.v2.Task"),
      Buffer.from([0x12, 0x07]),
      Buffer.from("Connect"),
      Buffer.from([0x1a, 0x08, 0x0a, 0x06]),
      Buffer.from("probe1"),
    ]);
    assert.deepEqual(requests[1], expected);
    assert.equal(requests[0]!.readUInt32BE(4), 1);
    // A deadline becomes timeout_nano.
    await task.connect({ id: "t" }, { timeoutMs: 3000 });
    const req = fromBinary(RequestSchema, requests[2]!.subarray(10));
    assert.equal(req.timeoutNano, 3_000_000_000n);
    assert.equal(requests[2]!.readUInt32BE(4), 5);
  } finally {
    client.close();
    await stop();
  }
});

test("client: an oversized reply fails that call only; a non-response frame fails the connection", { timeout: 20_000 }, async () => {
  const { path, stop } = await rawServer((sock, f) => {
    const req = fromBinary(RequestSchema, f.data);
    if (req.method === "Big") {
      const header = Buffer.alloc(10);
      header.writeUInt32BE(MAX_MESSAGE + 10, 0);
      header.writeUInt32BE(f.streamId, 4);
      header[8] = MessageType.RESPONSE;
      sock.write(header);
      sock.write(new Uint8Array(MAX_MESSAGE + 10));
    } else if (req.method === "Echo") {
      sock.write(encodeFrame(f.streamId, MessageType.RESPONSE, 0, toBinary(ResponseSchema, create(ResponseSchema, { payload: req.payload }))));
    } else if (req.method === "Weird") {
      sock.write(encodeFrame(f.streamId, MessageType.DATA, 0, new Uint8Array()));
    }
  });
  const client = await TtrpcClient.connect(path);
  try {
    const big = client.call("s", "Big", new Uint8Array());
    await assert.rejects(big, (e: unknown) => e instanceof TtrpcError && e.code === Code.RESOURCE_EXHAUSTED);
    assert.equal(Buffer.from(await client.call("s", "Echo", Buffer.from("e"))).toString(), "e");
    const hanging = client.call("s", "Nothing", new Uint8Array());
    const closeCause = new Promise<Error | undefined>((r) => client.onClose(r));
    await assert.rejects(client.call("s", "Weird", new Uint8Array()), (e: unknown) => e instanceof TtrpcError && e.code === Code.UNAVAILABLE);
    await assert.rejects(hanging, (e: unknown) => e instanceof TtrpcError && e.message === "ttrpc: closed");
    assert.match(String((await closeCause)?.message), /unknown message type 3/);
  } finally {
    client.close();
    await stop();
  }
});
