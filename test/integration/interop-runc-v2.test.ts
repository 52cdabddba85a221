// Proves our TTRPC framing and protobuf encoding against the Go implementation: Debian's
// containerd-shim-runc-v2 is bootstrapped exactly as containerd does it, and our client drives a
// container through it while our TTRPC server receives the events its Go client forwards.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync, constants } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { create, fromBinary } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import { Task } from "../../src/gen/containerd/task/v2/shim_pb.js";
import { Status } from "../../src/gen/containerd/types/task_pb.js";
import { Events } from "../../src/gen/containerd/services/events/ttrpc/v1/events_pb.js";
import { TaskExitSchema } from "../../src/gen/containerd/events/task_pb.js";
import { TtrpcClient, TtrpcServer, Code, TtrpcError } from "../../src/ttrpc/index.js";

const SHIM = "/usr/bin/containerd-shim-runc-v2";
const have = existsSync(SHIM) && existsSync("/usr/sbin/runc") && existsSync("/bin/busybox");
const id = `interop${process.pid}`;
let dir = "";
let bundle = "";
let logSock: net.Socket | undefined;
let shimLog = "";
const events: Array<{ topic: string; typeUrl: string; value: Uint8Array }> = [];
let eventServer: TtrpcServer | undefined;
let client: TtrpcClient | undefined;
let socketFile = "";

function shimCommand(action: string, extra: string[] = []) {
  return spawnSync(SHIM, ["-namespace", "default", "-address", path.join(dir, "containerd.sock"), "-publish-binary", "/bin/false", "-id", id, ...extra, action], {
    cwd: bundle,
    env: { ...process.env, GOMAXPROCS: "2", TTRPC_ADDRESS: path.join(dir, "events.sock") },
    input: "",
    timeout: 20_000,
  });
}

before(async () => {
  if (!have) return;
  dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-interop-"));
  bundle = path.join(dir, "state", "default", id);
  const rootfs = path.join(bundle, "rootfs");
  mkdirSync(path.join(rootfs, "bin"), { recursive: true });
  for (const d of ["proc", "sys", "dev", "tmp", "etc"]) mkdirSync(path.join(rootfs, d));
  copyFileSync("/bin/busybox", path.join(rootfs, "bin/busybox"));
  for (const a of ["sh", "echo", "sleep"]) symlinkSync("busybox", path.join(rootfs, "bin", a));
  execFileSync("runc", ["spec"], { cwd: bundle });
  const spec = JSON.parse(readFileSync(path.join(bundle, "config.json"), "utf8"));
  spec.process.terminal = false;
  spec.process.args = ["sh", "-c", "echo interop-ok; exec sleep 60"];
  spec.root = { path: "rootfs", readonly: false };
  spec.linux.cgroupsPath = `/cocoon-interop-${process.pid}`;
  writeFileSync(path.join(bundle, "config.json"), JSON.stringify(spec));
  // containerd creates the log FIFO and holds it open read-write before `start`.
  execFileSync("mkfifo", [path.join(bundle, "log")]);
  const fd = openSync(path.join(bundle, "log"), constants.O_RDWR | constants.O_NONBLOCK);
  logSock = new net.Socket({ fd, readable: true, writable: false });
  logSock.on("data", (d) => (shimLog += d));
  eventServer = new TtrpcServer();
  eventServer.registerService("containerd.services.events.ttrpc.v1.Events", Events, {
    forward: (req) => {
      const ev = req.envelope!.event!;
      events.push({ topic: req.envelope!.topic, typeUrl: ev.typeUrl, value: ev.value });
      return create(EmptySchema);
    },
  });
  await eventServer.listen(path.join(dir, "events.sock"));
});

after(async () => {
  if (!have) return;
  client?.close();
  if (bundle) {
    spawnSync("runc", ["--root", "/run/containerd/runc/default", "delete", "--force", id]);
    shimCommand("delete", ["-bundle", bundle]);
  }
  await eventServer?.close({ dropConnections: true });
  logSock?.destroy();
  if (socketFile) rmSync(socketFile, { force: true });
  spawnSync("umount", ["-l", path.join(bundle, "rootfs")]);
  rmSync(dir, { recursive: true, force: true });
});

test("containerd-shim-runc-v2 speaks with our TTRPC client and server", { skip: !have && "runc shim not installed", timeout: 60_000 }, async () => {
  const started = shimCommand("start");
  assert.equal(started.status, 0, `start failed: ${started.stdout}${started.stderr}`);
  const address = started.stdout.toString().trim();
  assert.match(address, /^unix:\/\/\/run\/containerd\/s\/[0-9a-f]{64}$/);
  assert.equal(readFileSync(path.join(bundle, "address"), "utf8"), address);
  socketFile = address.slice("unix://".length);

  client = await TtrpcClient.connect(address);
  const task = client.makeClient(Task, "containerd.task.v2.Task");
  const outFile = path.join(dir, "out.log");
  const created = await task.create({ id, bundle, stdout: `file://${outFile}`, stderr: `file://${outFile}` });
  assert.ok(created.pid > 0);
  const conn = await task.connect({ id });
  assert.equal(conn.taskPid, created.pid);
  assert.ok(conn.shimPid > 0 && conn.shimPid !== process.pid);

  let st = await task.state({ id });
  assert.equal(st.status, Status.CREATED);
  assert.equal(st.bundle, bundle);
  // Not exited yet: Go's zero time travels as a negative int64 (10-byte varint).
  assert.equal(st.exitedAt?.seconds, -62135596800n);

  const startRes = await task.start({ id });
  assert.equal(startRes.pid, created.pid);
  st = await task.state({ id });
  assert.equal(st.status, Status.RUNNING);
  assert.equal(st.pid, created.pid);

  const pids = await task.pids({ id });
  assert.ok(pids.processes.some((p) => p.pid === created.pid), "init pid listed");

  // Errors come back with containerd's codes.
  await assert.rejects(task.state({ id, execId: "nosuch" }), (e: TtrpcError) => e.code === Code.NOT_FOUND);
  await assert.rejects(client.call("containerd.task.v2.Task", "NoSuchMethod", new Uint8Array()), (e: TtrpcError) => e.code === Code.UNIMPLEMENTED);

  const waiting = task.wait({ id });
  await task.kill({ id, signal: 9 });
  const waited = await waiting;
  assert.equal(waited.exitStatus, 137);
  await assert.rejects(task.kill({ id, signal: 9 }), (e: TtrpcError) => e.code === Code.NOT_FOUND);

  const del = await task.delete({ id });
  assert.equal(del.pid, created.pid);
  assert.equal(del.exitStatus, 137);
  await task.shutdown({ id }).catch(() => undefined);

  for (let i = 0; i < 50 && !events.some((e) => e.topic === "/tasks/delete"); i++) await new Promise((r) => setTimeout(r, 100));
  const topics = events.map((e) => e.topic);
  assert.deepEqual(topics.filter((t) => ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"].includes(t)),
    ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], `events: ${topics.join(",")}`);
  const exit = events.find((e) => e.topic === "/tasks/exit")!;
  assert.equal(exit.typeUrl, "containerd.events.TaskExit");
  const exitEv = fromBinary(TaskExitSchema, exit.value);
  assert.equal(exitEv.exitStatus, 137);
  assert.equal(exitEv.containerId, id);
  assert.match(readFileSync(outFile, "utf8"), /interop-ok/);
});
