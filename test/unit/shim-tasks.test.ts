// The task state machine against a scripted runtime: ordering of events and containerd's error codes.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { DescMessage } from "@bufbuild/protobuf";
import { TaskManager } from "../../src/shim/tasks.js";
import type { EventSink } from "../../src/shim/publisher.js";
import type { CreateRequest, ProcessRef, Runtime } from "../../src/shim/runtime.js";
import { ShimError } from "../../src/shim/errors.js";

class Recorder implements EventSink {
  topics: string[] = [];
  events: Array<{ topic: string; event: any }> = [];
  publish(_ns: string, topic: string, _schema: DescMessage, event: any) {
    this.topics.push(topic);
    this.events.push({ topic, event });
  }
  async flush() {}
  close() {}
}

class FakeRuntime implements Partial<Runtime> {
  nextPid = 100;
  exitDuringStart: number | undefined;
  onExit: ((ref: ProcessRef, pid: number) => void) | undefined;
  calls: string[] = [];
  async create() { this.calls.push("create"); return { pid: this.nextPid++ }; }
  async start(ref: ProcessRef) {
    this.calls.push(`start ${ref.execId}`);
    const pid = ref.execId ? this.nextPid++ : 100;
    if (this.exitDuringStart !== undefined) this.onExit?.(ref, pid);
    return { pid };
  }
  async exec() { this.calls.push("exec"); }
  async kill() { this.calls.push("kill"); }
  async delete(ref: ProcessRef) { this.calls.push(`delete ${ref.execId}`); }
}

const req = (id: string): CreateRequest => ({
  id, namespace: "default", bundle: `/b/${id}`, rootfs: [], checkpoint: "", spec: {},
  stdio: { stdin: "", stdout: "", stderr: "", terminal: false },
});
const code = (kind: string) => (e: unknown) => e instanceof ShimError && e.kind === kind;

test("init lifecycle: events in containerd's order, Wait, Delete", async () => {
  const rt = new FakeRuntime();
  const ev = new Recorder();
  const tm = new TaskManager(rt as unknown as Runtime, ev);
  await tm.create(req("c1"));
  await assert.rejects(tm.create(req("c1")), code("AlreadyExists"));
  assert.equal(tm.state({ containerId: "c1", execId: "" }).status, "created");
  await tm.start({ containerId: "c1", execId: "" });
  await assert.rejects(tm.start({ containerId: "c1", execId: "" }), code("FailedPrecondition"));
  const waiting = tm.wait({ containerId: "c1", execId: "" });
  await assert.rejects(tm.delete({ containerId: "c1", execId: "" }), code("FailedPrecondition"));
  tm.exited({ containerId: "c1", execId: "" }, 100, { status: 3, at: new Date() });
  assert.equal((await waiting).status, 3);
  await assert.rejects(tm.kill({ containerId: "c1", execId: "" }, 9, false), code("NotFound"));
  let emptied = false;
  tm.onEmpty(() => (emptied = true));
  const del = await tm.delete({ containerId: "c1", execId: "" });
  assert.equal(del.exitStatus, 3);
  assert.ok(emptied);
  assert.deepEqual(ev.topics, ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]);
  assert.throws(() => tm.state({ containerId: "c1", execId: "" }), code("NotFound"));
});

test("an exit seen during Start is published after the start event", async () => {
  const rt = new FakeRuntime();
  const ev = new Recorder();
  const tm = new TaskManager(rt as unknown as Runtime, ev);
  rt.exitDuringStart = 0;
  rt.onExit = (ref, pid) => tm.exited(ref, pid, { status: 0, at: new Date() });
  await tm.create(req("c2"));
  await tm.start({ containerId: "c2", execId: "" });
  assert.deepEqual(ev.topics, ["/tasks/create", "/tasks/start", "/tasks/exit"]);
  assert.equal(tm.state({ containerId: "c2", execId: "" }).status, "stopped");
});

test("exec ids: duplicates rejected, reusable after delete; exec events", async () => {
  const rt = new FakeRuntime();
  const ev = new Recorder();
  const tm = new TaskManager(rt as unknown as Runtime, ev);
  await tm.create(req("c3"));
  await tm.start({ containerId: "c3", execId: "" });
  const ex = { containerId: "c3", execId: "e1", process: { args: ["true"] }, stdio: req("x").stdio };
  await tm.exec(ex);
  await assert.rejects(tm.exec(ex), (e: unknown) => code("AlreadyExists")(e) && /id e1/.test((e as Error).message));
  await assert.rejects(tm.kill({ containerId: "c3", execId: "e1" }, 9, false), code("FailedPrecondition"));
  const { pid } = await tm.start({ containerId: "c3", execId: "e1" });
  tm.exited({ containerId: "c3", execId: "e1" }, pid, { status: 4, at: new Date() });
  assert.equal((await tm.wait({ containerId: "c3", execId: "e1" })).status, 4);
  const d = await tm.delete({ containerId: "c3", execId: "e1" });
  assert.equal(d.exitStatus, 4);
  await tm.exec(ex);
  assert.throws(() => tm.state({ containerId: "c3", execId: "nope" }), code("NotFound"));
  assert.deepEqual(ev.topics, ["/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/exec-added"]);
  const exit = ev.events.find((e) => e.topic === "/tasks/exit")!.event;
  assert.equal(exit.id, "e1");
  assert.equal(exit.containerId, "c3");
});

test("failed create leaves nothing behind", async () => {
  const rt = new FakeRuntime();
  rt.create = async () => { throw new ShimError("InvalidArgument", "bad spec"); };
  const tm = new TaskManager(rt as unknown as Runtime, new Recorder());
  await assert.rejects(tm.create(req("c4")), code("InvalidArgument"));
  assert.equal(tm.size, 0);
});
