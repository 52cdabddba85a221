// Our shim driven directly over TTRPC, bootstrapped exactly as containerd does it: bad input at every
// layer (frames, options, specs, ids) gets the right status code, and the daemon keeps serving.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync, constants } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AnySchema } from "@bufbuild/protobuf/wkt";
import { Task } from "../../src/gen/containerd/task/v2/shim_pb.js";
import { MetricsSchema } from "../../src/gen/cgroups/v1/metrics_pb.js";
import { OptionsSchema as RuncOptionsSchema } from "../../src/gen/containerd/runc/options/oci_pb.js";
import { Code, TtrpcClient, TtrpcError } from "../../src/ttrpc/index.js";
import { encodeFrame, MessageType } from "../../src/ttrpc/frame.js";
import { repoRoot, waitFor } from "../helpers/util.js";

const SHIM = path.join(repoRoot, "bin", "containerd-shim-cocoon-v2");
const hasCode = (code: number) => (e: unknown) => e instanceof TtrpcError && e.code === code;

describe("our shim over raw TTRPC", { timeout: 120_000 }, () => {
  let dir = "";
  let cfgPath = "";
  let address = "";
  let client: TtrpcClient;
  let task: ReturnType<TtrpcClient["makeClient"]> & any;
  const bundles: string[] = [];
  let daemonPid = 0;

  function bundle(id: string, opts: { rootfs?: boolean; spec?: string } = {}): string {
    const b = path.join(dir, "state", "default", id);
    mkdirSync(path.join(b, "rootfs"), { recursive: true });
    if (opts.rootfs !== false) {
      const r = path.join(b, "rootfs");
      for (const d of ["bin", "proc", "sys", "dev", "tmp", "etc"]) mkdirSync(path.join(r, d), { recursive: true });
      copyFileSync("/bin/busybox", path.join(r, "bin/busybox"));
      for (const a of ["sh", "echo", "sleep", "cat"]) symlinkSync("busybox", path.join(r, "bin", a));
    }
    if (opts.spec !== undefined) writeFileSync(path.join(b, "config.json"), opts.spec);
    else {
      execFileSync("runc", ["spec"], { cwd: b });
      const spec = JSON.parse(readFileSync(path.join(b, "config.json"), "utf8"));
      spec.process.terminal = false;
      spec.process.args = ["sleep", "1000"];
      spec.root.readonly = false;
      spec.linux.cgroupsPath = `/cocoon-direct-${id}`;
      spec.annotations = { "io.cocoon.group": `direct-${process.pid}` };
      writeFileSync(path.join(b, "config.json"), JSON.stringify(spec));
    }
    bundles.push(b);
    return b;
  }

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-direct-"));
    cfgPath = path.join(dir, "cocoon.toml");
    writeFileSync(cfgPath, `mode = "runc"\n[runc]\nroot = "${dir}/runc"\n`);
    const b = bundle("first");
    execFileSync("mkfifo", [path.join(b, "log")]);
    const fd = openSync(path.join(b, "log"), constants.O_RDWR | constants.O_NONBLOCK);
    new net.Socket({ fd, readable: true }).resume().unref();
    const r = spawnSync(SHIM, ["-namespace", "default", "-address", path.join(dir, "c.sock"), "-publish-binary", "/bin/false", "-id", "first", "start"], {
      cwd: b, env: { ...process.env, COCOON_CONFIG: cfgPath, TTRPC_ADDRESS: "" }, input: "", timeout: 20_000,
    });
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    address = r.stdout.toString().trim();
    client = await TtrpcClient.connect(address);
    task = client.makeClient(Task, "containerd.task.v2.Task");
    daemonPid = (await task.connect({ id: "first" })).shimPid;
  });

  after(async () => {
    client?.close();
    if (daemonPid) {
      try {
        process.kill(daemonPid, "SIGTERM");
      } catch {}
      await waitFor(() => !existsSync(`/proc/${daemonPid}`) || readFileSync(`/proc/${daemonPid}/stat`, "utf8").includes(") Z "), { timeoutMs: 10_000, what: "daemon exit" }).catch(() => undefined);
    }
    for (const b of bundles) spawnSync("umount", ["-l", path.join(b, "rootfs")], { stdio: "ignore" });
    rmSync(dir, { recursive: true, force: true });
  });

  it("serves the Task API under the v2 and v3 service names", async () => {
    const v3 = client.makeClient(Task, "containerd.task.v3.Task");
    assert.equal((await v3.connect({ id: "first" })).shimPid, daemonPid);
  });

  it("malformed frames get the right status, and the daemon keeps serving", async () => {
    const raw = net.connect(address.replace("unix://", ""));
    await new Promise((r) => raw.once("connect", r));
    const replies: Buffer[] = [];
    raw.on("data", (d) => replies.push(d));
    raw.write(encodeFrame(2, MessageType.REQUEST, 0, Buffer.from("x")));                 // even stream id
    raw.write(encodeFrame(3, MessageType.REQUEST, 0, Buffer.from([0xff, 0xff, 0xff])));  // garbage Request
    await waitFor(() => Buffer.concat(replies).length >= 20, { timeoutMs: 5000, what: "error replies" });
    const all = Buffer.concat(replies);
    assert.equal(all.readUInt32BE(4), 2);
    assert.equal(all[8], MessageType.RESPONSE);
    raw.write(Buffer.from([0, 0, 0, 50, 0, 0]));  // truncated header, then hang up
    raw.end();
    // Unknown method; payload that is not the request type.
    await assert.rejects(client.call("containerd.task.v2.Task", "Nope", new Uint8Array()), hasCode(Code.UNIMPLEMENTED));
    await assert.rejects(client.call("containerd.task.v2.Task", "State", new Uint8Array([0x0a, 0xff])), hasCode(Code.INTERNAL));
    assert.equal((await task.connect({ id: "first" })).shimPid, daemonPid);
  });

  it("bad bundles, specs and options are InvalidArgument and leave nothing behind", async () => {
    const empty = bundle("norootfs", { rootfs: false });
    writeFileSync(path.join(empty, "config.json"), readFileSync(path.join(bundles[0]!, "config.json")));
    await assert.rejects(task.create({ id: "norootfs", bundle: empty }), (e: TtrpcError) => e.code === Code.INVALID_ARGUMENT && /no rootfs/.test(e.message));
    const broken = bundle("brokenspec", { spec: "{not json" });
    await assert.rejects(task.create({ id: "brokenspec", bundle: broken }), (e: TtrpcError) => e.code === Code.INVALID_ARGUMENT && /malformed OCI spec/.test(e.message));
    const b = bundle("badopts");
    await assert.rejects(task.create({ id: "badopts", bundle: b, options: create(AnySchema, { typeUrl: "containerd.runc.v1.Options", value: new Uint8Array([0xff]) }) }), hasCode(Code.INVALID_ARGUMENT));
    await assert.rejects(task.create({ id: "rel", bundle: "relative/path" }), hasCode(Code.INVALID_ARGUMENT));
    await assert.rejects(task.state({ id: "norootfs" }), hasCode(Code.NOT_FOUND));
    assert.equal(spawnSync("runc", ["--root", `${dir}/runc/default`, "state", "norootfs"]).status, 1);
  });

  it("IoUid/IoGid of the Create options let a user-namespaced container reopen its stdio (as runc-v2's do)", async () => {
    // The container's root is host uid 100000 here: it has to be able to reach its rootfs.
    chmodSync(dir, 0o711);
    const HOST_ID = 100_000;
    const run = async (id: string, ioOwner: boolean) => {
      const b = bundle(id);
      const spec = JSON.parse(readFileSync(path.join(b, "config.json"), "utf8"));
      // What `echo > /dev/stdout` does: open the stdout FIFO anew through /proc.
      spec.process.args = ["sh", "-c", "echo reopened > /proc/self/fd/1"];
      spec.linux.namespaces.push({ type: "user" });
      spec.linux.uidMappings = [{ containerID: 0, hostID: HOST_ID, size: 65536 }];
      spec.linux.gidMappings = [{ containerID: 0, hostID: HOST_ID, size: 65536 }];
      writeFileSync(path.join(b, "config.json"), JSON.stringify(spec));
      // Root's and private, as containerd makes its FIFOs.
      const stdout = path.join(b, "stdout");
      execFileSync("mkfifo", ["-m", "0600", stdout]);
      // Read-write, as the first test's log: a reader that sees no EOF before the container has opened it.
      const reader = new net.Socket({ fd: openSync(stdout, constants.O_RDWR | constants.O_NONBLOCK), readable: true, writable: false });
      let got = "";
      reader.on("data", (d) => (got += d));
      const options = ioOwner
        ? create(AnySchema, { typeUrl: "containerd.runc.v1.Options", value: toBinary(RuncOptionsSchema, create(RuncOptionsSchema, { ioUid: HOST_ID, ioGid: HOST_ID })) })
        : undefined;
      try {
        await task.create({ id, bundle: b, stdout, options });
        await task.start({ id });
        const { exitStatus } = await task.wait({ id });
        await task.delete({ id });
        if (exitStatus === 0) await waitFor(() => got.includes("\n"), { timeoutMs: 5000, what: "the container's line" });
        return { exitStatus, got };
      } finally {
        reader.destroy();
      }
    };
    // Without the options the FIFO stays root's and the reopen is refused, as it would be under runc-v2.
    assert.equal((await run("userns-plain", false)).exitStatus, 1);
    assert.deepEqual(await run("userns-owned", true), { exitStatus: 0, got: "reopened\n" });
  });

  it("a full lifecycle with Update, Stats, exec errors and a second Delete", async () => {
    const b = bundles[0]!;
    const { pid } = await task.create({ id: "first", bundle: b });
    assert.ok(pid > 0);
    await task.start({ id: "first" });
    await task.update({ id: "first", resources: { typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", value: new TextEncoder().encode(JSON.stringify({ memory: { limit: 67108864 } })) } });
    const stats = await task.stats({ id: "first" });
    assert.equal(stats.stats.typeUrl, "io.containerd.cgroups.v1.Metrics");
    const m = fromBinary(MetricsSchema, stats.stats.value);
    assert.equal(m.memory?.usage?.limit, 67108864n);
    assert.ok((m.pids?.current ?? 0n) >= 1n);
    await assert.rejects(task.update({ id: "first", resources: { typeUrl: "x", value: new TextEncoder().encode("{") } }), hasCode(Code.INVALID_ARGUMENT));
    await assert.rejects(task.exec({ id: "first", execId: "e1", spec: { typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", value: new TextEncoder().encode("nope") } }), hasCode(Code.INVALID_ARGUMENT));
    await assert.rejects(task.exec({ id: "first", execId: "e1", spec: { typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", value: new TextEncoder().encode("{}") } }), hasCode(Code.INVALID_ARGUMENT));
    await assert.rejects(task.delete({ id: "first" }), hasCode(Code.FAILED_PRECONDITION));
    await task.kill({ id: "first", signal: 9 });
    const w = await task.wait({ id: "first" });
    assert.equal(w.exitStatus, 137);
    await assert.rejects(task.kill({ id: "first", signal: 9 }), hasCode(Code.NOT_FOUND));
    await task.delete({ id: "first" });
    await assert.rejects(task.delete({ id: "first" }), hasCode(Code.NOT_FOUND));
    // No task left: Shutdown makes the daemon exit and remove its socket.
    await task.shutdown({ id: "first" }).catch(() => undefined);
    await waitFor(() => !existsSync(address.replace("unix://", "")), { timeoutMs: 10_000, what: "socket removed" });
    await waitFor(() => { try { return readFileSync(`/proc/${daemonPid}/stat`, "utf8").includes(") Z "); } catch { return true; } }, { timeoutMs: 10_000, what: "daemon exit" });
    daemonPid = 0;
  });
});
