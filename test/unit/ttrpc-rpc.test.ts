// Client and server against each other over a real unix socket.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, TtrpcClient, TtrpcError, TtrpcServer } from "../../src/ttrpc/index.js";
import type { CallContext, ServiceImpl } from "../../src/ttrpc/index.js";
import { StateResponseSchema, Task } from "../../src/gen/containerd/task/v2/shim_pb.js";

let dir: string;
let sockN = 0;
const sockPath = () => join(dir, `s${++sockN}.sock`);

before(() => {
  dir = mkdtempSync(join(tmpdir(), "ttrpc-rpc-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

async function rejectsWith(p: Promise<unknown>, code: number, message?: string | RegExp): Promise<TtrpcError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof TtrpcError, `expected TtrpcError, got ${String(err)}`);
    assert.equal(err.code, code, `code of "${err.message}"`);
    if (typeof message === "string") assert.equal(err.message, message);
    else if (message) assert.match(err.message, message);
    return err;
  }
  assert.fail("expected a rejection");
}

/** A server with a Task impl (v2 and v3 names) and a raw "test.Raw" service; cleans up via `stop`. */
async function startServer(extra: (s: TtrpcServer) => void = () => {}) {
  const server = new TtrpcServer();
  const impl: ServiceImpl<typeof Task> = {
    async state(req, ctx) {
      return { id: req.id, bundle: `/b/${ctx.service}`, pid: 42, execId: req.execId };
    },
    async kill(req) {
      if (req.id === "missing") throw new TtrpcError(Code.NOT_FOUND, "process does not exist missing: not found");
      return {};
    },
    connect: () => ({ shimPid: 7, taskPid: 8, version: "x" }),
  };
  server.registerService("containerd.task.v2.Task", Task, impl);
  server.registerService("containerd.task.v3.Task", Task, impl);
  extra(server);
  const path = sockPath();
  await server.listen(path);
  const clients: TtrpcClient[] = [];
  const connect = async () => {
    const c = await TtrpcClient.connect(`unix://${path}`);
    clients.push(c);
    return c;
  };
  const stop = async () => {
    for (const c of clients) c.close();
    await server.close({ dropConnections: true });
  };
  return { server, path, connect, stop };
}

test("typed round trip under two service names", { timeout: 10_000 }, async () => {
  const { connect, stop, path } = await startServer();
  try {
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const client = await connect();
    const v2 = client.makeClient(Task);
    const st = await v2.state({ id: "c1", execId: "e1" });
    assert.equal(st.id, "c1");
    assert.equal(st.execId, "e1");
    assert.equal(st.pid, 42);
    assert.equal(st.bundle, "/b/containerd.task.v2.Task");
    const v3 = client.makeClient(Task, "containerd.task.v3.Task");
    assert.equal((await v3.state({ id: "c2" })).bundle, "/b/containerd.task.v3.Task");
    assert.deepEqual(await v2.kill({ id: "c1", signal: 9 }), create(Task.method.kill.output));
    assert.equal((await v2.connect({ id: "c1" })).shimPid, 7);
    await rejectsWith(v2.kill({ id: "missing" }), Code.NOT_FOUND, "process does not exist missing: not found");
    // Not implemented by the impl, unknown method, unknown service.
    await rejectsWith(v2.pids({ id: "c1" }), Code.UNIMPLEMENTED, "method Pids");
    await rejectsWith(client.call("containerd.task.v2.Task", "Nope", new Uint8Array()), 12, "method Nope");
    await rejectsWith(client.call("no.Such", "State", new Uint8Array()), 12, "service no.Such");
    // Type-level checks: stubs and impls are typed by the generated descriptors.
    // @ts-expect-error id is a string
    void (() => v2.state({ id: 1 }));
    const badImpl: ServiceImpl<typeof Task> = {
      // @ts-expect-error pid is a number
      state: async () => ({ pid: "x" }),
    };
    void badImpl;
    // callTyped with an explicit method descriptor.
    const st2 = await client.callTyped("containerd.task.v2.Task", Task.method.state, { id: "c3" });
    assert.equal(st2.id, "c3");
  } finally {
    await stop();
  }
});

test("calls on one connection run concurrently; replies come in completion order", { timeout: 10_000 }, async () => {
  const slowStarted = deferred();
  const release = deferred();
  const order: string[] = [];
  const { connect, stop } = await startServer((s) =>
    s.register("test.Raw", {
      Slow: async () => {
        slowStarted.resolve();
        await release.promise;
        return Buffer.from("slow");
      },
      Fast: async (p) => p,
    }),
  );
  try {
    const client = await connect();
    const slow = client.call("test.Raw", "Slow", new Uint8Array()).then((r) => {
      order.push(Buffer.from(r).toString());
    });
    await slowStarted.promise;
    const fasts = await Promise.all(
      [1, 2, 3].map((i) => client.call("test.Raw", "Fast", Buffer.from(`f${i}`))),
    );
    order.push(...fasts.map((r) => Buffer.from(r).toString()));
    assert.equal(client.inFlight, 1);
    release.resolve();
    await slow;
    assert.deepEqual(order, ["f1", "f2", "f3", "slow"]);
  } finally {
    await stop();
  }
});

test("timeouts: client gives up with DEADLINE_EXCEEDED, server sees deadline and signal", { timeout: 10_000 }, async () => {
  const seen = deferred<{ deadline: number | undefined; reason: unknown; at: number }>();
  const lateDone = deferred();
  const { connect, stop } = await startServer((s) =>
    s.register("test.Raw", {
      Wait: (_p, ctx) =>
        new Promise((resolve) => {
          ctx.signal.addEventListener("abort", () => {
            seen.resolve({ deadline: ctx.deadline, reason: ctx.signal.reason, at: Date.now() });
            // Reply late anyway: the client must drop it.
            setTimeout(() => {
              resolve(Buffer.from("late"));
              ctx.afterReply(() => lateDone.resolve());
            }, 50);
          });
        }),
      Echo: async (p, ctx) => Buffer.from(JSON.stringify({ len: p.length, deadline: ctx.deadline })),
    }),
  );
  try {
    const client = await connect();
    const t0 = Date.now();
    await rejectsWith(client.call("test.Raw", "Wait", new Uint8Array(), { timeoutMs: 150 }), Code.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - t0 >= 140);
    const s = await seen.promise;
    assert.ok(s.deadline !== undefined && Math.abs(s.deadline - (t0 + 150)) < 100, `deadline ${s.deadline} vs ${t0 + 150}`);
    assert.ok(s.reason instanceof TtrpcError && s.reason.code === Code.DEADLINE_EXCEEDED);
    await lateDone.promise;
    // The late reply was dropped and the connection still works.
    const echo = JSON.parse(Buffer.from(await client.call("test.Raw", "Echo", Buffer.from("abc"))).toString());
    assert.deepEqual(echo, { len: 3 });
    assert.equal(client.closed, false);
    // Non-positive timeouts fail locally without sending.
    await rejectsWith(client.call("test.Raw", "Echo", new Uint8Array(), { timeoutMs: 0 }), Code.DEADLINE_EXCEEDED);
    // Client-side cancellation.
    const ac = new AbortController();
    const p = client.call("test.Raw", "Wait", new Uint8Array(), { signal: ac.signal });
    ac.abort();
    await rejectsWith(p, Code.CANCELLED);
    assert.equal(client.inFlight, 0);
  } finally {
    await stop();
  }
});

test("metadata round trip", { timeout: 10_000 }, async () => {
  const { connect, stop } = await startServer((s) =>
    s.register("test.Raw", {
      Md: async (_p, ctx: CallContext) => Buffer.from(JSON.stringify([...ctx.metadata])),
    }),
  );
  try {
    const client = await connect();
    const res = await client.call("test.Raw", "Md", new Uint8Array(), {
      metadata: { "Containerd-Namespace-Ttrpc": "k8s.io", multi: ["a", "b"] },
    });
    assert.deepEqual(JSON.parse(Buffer.from(res).toString()), [
      ["containerd-namespace-ttrpc", ["k8s.io"]],
      ["multi", ["a", "b"]],
    ]);
  } finally {
    await stop();
  }
});

test("handler errors become statuses", { timeout: 10_000 }, async () => {
  const { connect, stop } = await startServer((s) =>
    s.register("test.Raw", {
      Ttrpc: async () => {
        throw new TtrpcError(Code.FAILED_PRECONDITION, "not yet");
      },
      Carrier: async () => {
        throw Object.assign(new Error("id exec2: already exists"), { grpcCode: 6 });
      },
      Plain: async () => {
        throw new Error("boom");
      },
      Sync: () => {
        throw new RangeError("sync boom");
      },
      ZeroCode: async () => {
        throw new TtrpcError(Code.OK, "ok?");
      },
      NotBytes: async () => "text" as unknown as Uint8Array,
      Huge: async () => new Uint8Array(4 << 20),
      JustFits: async () => new Uint8Array((4 << 20) - 5),
    }),
  );
  try {
    const client = await connect();
    const call = (m: string) => client.call("test.Raw", m, new Uint8Array());
    await rejectsWith(call("Ttrpc"), 9, "not yet");
    await rejectsWith(call("Carrier"), 6, "id exec2: already exists");
    await rejectsWith(call("Plain"), 2, "boom");
    await rejectsWith(call("Sync"), 2, "sync boom");
    await rejectsWith(call("ZeroCode"), 2, "ok?");
    await rejectsWith(call("NotBytes"), 13);
    await rejectsWith(call("Huge"), 8, /^message length 4194309 exceed maximum message size of 4194304$/);
    // 4 MiB - 5 payload + 1 tag + 4 length bytes = exactly 4 MiB: allowed.
    assert.equal((await call("JustFits")).length, (4 << 20) - 5);
    // The client refuses to send a request above the limit.
    await rejectsWith(client.call("test.Raw", "Plain", new Uint8Array(4 << 20)), 8);
    assert.equal(client.closed, false);
  } finally {
    await stop();
  }
});

test("in-flight calls fail with UNAVAILABLE when the server drops the connection", { timeout: 10_000 }, async () => {
  const started = deferred();
  const aborted = deferred<unknown>();
  const opened: number[] = [];
  const closed: number[] = [];
  const { server, connect, stop } = await startServer((s) => {
    s.onConnection = (id) => opened.push(id);
    s.onConnectionClosed = (id) => closed.push(id);
    s.register("test.Raw", {
      Hang: (_p, ctx) => {
        started.resolve();
        ctx.signal.addEventListener("abort", () => aborted.resolve(ctx.signal.reason));
        return new Promise(() => {});
      },
    });
  });
  try {
    const client = await connect();
    const closeCause = deferred<Error | undefined>();
    client.onClose((cause) => closeCause.resolve(cause));
    const calls = [1, 2].map(() => client.call("test.Raw", "Hang", new Uint8Array()));
    await started.promise;
    assert.equal(server.connectionCount, 1);
    await server.close({ dropConnections: true });
    for (const c of calls) await rejectsWith(c, Code.UNAVAILABLE, "ttrpc: closed");
    await closeCause.promise;
    assert.equal(client.closed, true);
    await rejectsWith(client.call("test.Raw", "Hang", new Uint8Array()), Code.UNAVAILABLE, "ttrpc: closed");
    const reason = await aborted.promise;
    assert.ok(reason instanceof TtrpcError && reason.code === Code.CANCELLED);
    assert.equal(server.connectionCount, 0);
    assert.deepEqual(opened, closed);
    // The listener is gone.
    await rejectsWith(connect(), Code.UNAVAILABLE);
  } finally {
    await stop();
  }
});

test("client close rejects its own calls; connect failures are UNAVAILABLE", { timeout: 10_000 }, async () => {
  const { connect, stop } = await startServer((s) => s.register("test.Raw", { Hang: () => new Promise(() => {}) }));
  try {
    const client = await connect();
    const p = client.call("test.Raw", "Hang", new Uint8Array());
    client.close();
    await rejectsWith(p, Code.UNAVAILABLE, "ttrpc: closed");
    const late = deferred<Error | undefined>();
    client.onClose((c) => late.resolve(c));
    assert.equal(await late.promise, undefined);
    await rejectsWith(TtrpcClient.connect(join(dir, "absent.sock")), Code.UNAVAILABLE);
  } finally {
    await stop();
  }
});

test("listen replaces a stale socket file and refuses other files; serve() takes a ready listener", { timeout: 10_000 }, async () => {
  const path = sockPath();
  // Another socket occupies the path (as a dead shim's leftover would).
  const s1 = net.createServer();
  await new Promise<void>((r) => s1.listen(path, r));
  // s1 still listens; listen() of a new server must unlink and take over the path.
  const server = new TtrpcServer();
  server.register("test.Raw", { Echo: async (p) => p });
  await server.listen(path);
  const client = await TtrpcClient.connect(path);
  assert.equal(Buffer.from(await client.call("test.Raw", "Echo", Buffer.from("x"))).toString(), "x");
  client.close();
  await server.close({ dropConnections: true });
  await new Promise<void>((r) => s1.close(() => r()));

  const regular = join(dir, "regular");
  writeFileSync(regular, "keep");
  await assert.rejects(new TtrpcServer().listen(regular), /not a socket/);

  // serve(): an already-listening net.Server.
  const path2 = sockPath();
  const ready = net.createServer();
  await new Promise<void>((r) => ready.listen(path2, r));
  const server2 = new TtrpcServer();
  server2.register("test.Raw", { Echo: async (p) => p });
  server2.serve(ready);
  const c2 = await TtrpcClient.connect(path2);
  assert.equal(Buffer.from(await c2.call("test.Raw", "Echo", Buffer.from("y"))).toString(), "y");
  c2.close();
  await server2.close({ dropConnections: true });
});

test("afterReply runs once the reply is written", { timeout: 10_000 }, async () => {
  const events: string[] = [];
  const { connect, stop } = await startServer((s) =>
    s.register("test.Raw", {
      Shutdown: async (_p, ctx) => {
        ctx.afterReply(() => events.push("after"));
        events.push("handler");
        return new Uint8Array();
      },
    }),
  );
  try {
    const client = await connect();
    const bytes = toBinary(StateResponseSchema, create(StateResponseSchema, {}));
    assert.equal(bytes.length, 0);
    await client.call("test.Raw", "Shutdown", new Uint8Array());
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(events, ["handler", "after"]);
  } finally {
    await stop();
  }
});
