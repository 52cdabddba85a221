// runc mode through the real containerd: ctr drives our shim exactly as it drives runc-v2.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { startContainerd, type Containerd } from "../helpers/containerd.js";
import { BUSYBOX_IMAGE, importImage } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { repoRoot, sleep, waitFor, underPty } from "../helpers/util.js";
import { cocoonShims } from "../helpers/procfs.js";

const RT = ["--runtime", "io.containerd.cocoon.v2"];
let currentAddress = "";
const APP_IMAGE = "cocoon.local/busybox-app:latest";
let seq = 0;
const uid = (name: string) => `${name}-${process.pid}-${++seq}`;

/** Our shim daemons serving this file's containerd (other runs may have shims of their own; idle spares do not count). */
function shimPids(address = currentAddress): number[] {
  return cocoonShims(address, "daemon");
}

describe("runc mode through containerd and ctr", { timeout: 240_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let cfgDir: string;
  let events: ChildProcess | undefined;
  let eventLog = "";

  before(async () => {
    host = await snapshotHost();
    cfgDir = mkdtempSync(path.join(os.tmpdir(), "cocoon-cfg-"));
    writeFileSync(path.join(cfgDir, "cocoon.toml"), `mode = "runc"\nlog_level = "debug"\n[runc]\nroot = "${cfgDir}/runc"\n`);
    ctrd = await startContainerd({ env: { COCOON_CONFIG: path.join(cfgDir, "cocoon.toml") }, pathPrepend: [path.join(repoRoot, "bin")] });
    currentAddress = ctrd.address;
    await importImage(ctrd, BUSYBOX_IMAGE);
    await importImage(ctrd, APP_IMAGE, { user: "app", env: ["GREETING=hi"], workingDir: "/tmp" });
    events = spawn("ctr", ["--address", ctrd.address, "events"], { stdio: ["ignore", "pipe", "ignore"] });
    events.unref();
    events.stdout!.on("data", (d) => (eventLog += d));
  });

  // Every test cleans up after itself: nothing of a finished container may linger.
  afterEach(async () => {
    await assertNoLeaks(host, { ignore: [/\bctr\b.*events/] });
  });

  after(async () => {
    events?.kill();
    await ctrd?.stop();
    await assertNoLeaks(host, { harness: ctrd });
    rmSync(cfgDir, { recursive: true, force: true });
  });

  it("runs a container and prints its output; the shim logs reach containerd's log", async () => {
    const r = await ctrd.ctr(["run", "--rm", ...RT, BUSYBOX_IMAGE, uid("out"), "sh", "-c", "echo hello; echo err >&2; id -u; pwd"]);
    assert.equal(r.stdout, "hello\n0\n/\n");
    assert.equal(r.stderr, "err\n");
    assert.match(ctrd.log(), /msg="shim serving" runtime=cocoon/);
  });

  it("applies user, env and cwd from the image and from the spec", async () => {
    const r = await ctrd.ctr(["run", "--rm", ...RT, APP_IMAGE, uid("env"), "sh", "-c", "id -u; echo $GREETING; pwd"]);
    assert.equal(r.stdout, "1000\nhi\n/tmp\n");
    const r2 = await ctrd.ctr(["run", "--rm", ...RT, "--env", "X=42", "--cwd", "/var", BUSYBOX_IMAGE, uid("env"), "sh", "-c", "id -u; echo $X; pwd"]);
    assert.equal(r2.stdout, "0\n42\n/var\n");
  });

  it("errors carry the right code and the OCI runtime's message, and leave nothing behind", async () => {
    const bad = await ctrd.ctr(["run", "--rm", ...RT, BUSYBOX_IMAGE, uid("bad"), "/nonexistent-binary"], { allowFail: true });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /nonexistent-binary/);
    assert.match(bad.stderr, /no such file or directory|not found/);
    const id = uid("dup");
    await ctrd.ctr(["run", "-d", ...RT, BUSYBOX_IMAGE, id, "sleep", "1000"]);
    const dup = spawn("ctr", ["--address", ctrd.address, "task", "exec", "--exec-id", "same", id, "sleep", "5"], { stdio: "ignore" });
    await sleep(500);
    const again = await ctrd.ctr(["task", "exec", "--exec-id", "same", id, "true"], { allowFail: true });
    assert.match(again.stderr, /already exists/);
    dup.kill("SIGKILL");
    await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id]);
    await sleep(300);
    const late = await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id], { allowFail: true });
    assert.match(late.stderr, /not found|already finished/);
    await ctrd.ctr(["task", "rm", "-f", id], { allowFail: true });
    await ctrd.ctr(["container", "rm", id]);
  });

  it("a broken config or a missing OCI runtime binary fails clearly", async () => {
    writeFileSync(path.join(cfgDir, "bad.toml"), "mode = \n");
    const r = await ctrd.ctr(["run", "--rm", ...RT, "--runtime-config-path", path.join(cfgDir, "bad.toml"), BUSYBOX_IMAGE, uid("cfg"), "true"], { allowFail: true });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /bad\.toml/);
    writeFileSync(path.join(cfgDir, "norunc.toml"), `[runc]\nbinary = "nosuch-runc"\nroot = "${cfgDir}/runc"\n`);
    const r2 = await ctrd.ctr(["run", "--rm", ...RT, "--runtime-config-path", path.join(cfgDir, "norunc.toml"), BUSYBOX_IMAGE, uid("norunc"), "true"], { allowFail: true });
    assert.notEqual(r2.code, 0);
    assert.match(r2.stderr, /nosuch-runc.*not found/);
  });

  it("a TTY session through a pty: output, size from the client's terminal, resize, exec -t", async () => {
    const id = uid("tty");
    // `script` gives ctr a real terminal; ctr sends its size with ResizePty right after Start.
    // The terminal is resized mid-session; ctr gets SIGWINCH and forwards the new size.
    const inner = `stty cols 100 rows 40; (sleep 2; stty cols 120 rows 30 </dev/tty) & ctr --address ${ctrd.address} run --fifo-dir ${ctrd.fifoDir} -t --rm ${RT.join(" ")} ${BUSYBOX_IMAGE} ${id} sh -c 'sleep 1; stty size; tty; sleep 3; stty size'`;
    const r = await underPty(inner);
    assert.match(r, /40 100[\s\S]*30 120/);
    assert.match(r, /\/dev\/(pts\/\d+|console)/);
    const id2 = uid("ttyexec");
    await ctrd.ctr(["run", "-d", ...RT, BUSYBOX_IMAGE, id2, "sleep", "1000"]);
    const r2 = await underPty(`stty cols 77 rows 11; ctr --address ${ctrd.address} task exec --fifo-dir ${ctrd.fifoDir} -t --exec-id t1 ${id2} sh -c 'sleep 1; stty size; [ -t 0 ] && echo is-a-tty; exit 5'; echo "rc=$?"`);
    assert.match(r2, /11 77/);
    assert.match(r2, /is-a-tty/);
    assert.match(r2, /rc=5/);
    await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id2]);
    await sleep(300);
    await ctrd.ctr(["task", "rm", "-f", id2], { allowFail: true });
    await ctrd.ctr(["container", "rm", id2]);
  });

  it("an OOM-killed container reports TaskOOM and exit 137", async () => {
    const id = uid("oom");
    const r = await ctrd.ctr(["run", "--rm", ...RT, "--memory-limit", String(32 << 20), BUSYBOX_IMAGE, id, "sh", "-c", "x=$(dd if=/dev/zero bs=1M count=256 2>/dev/null | tr '\\0' x); echo survived"], { allowFail: true, timeoutMs: 60_000 });
    assert.equal(r.code, 137, `exit ${r.code}: ${r.stdout}${r.stderr}`);
    await waitFor(() => eventLog.split("\n").some((l) => l.includes("/tasks/oom") && l.includes(id)), { timeoutMs: 10_000, what: "TaskOOM event" });
  });

  it("log URIs: file:// appends both streams, binary:// runs a logger", async () => {
    const file = path.join(cfgDir, "logs", "c.log");
    await ctrd.ctr(["run", "--rm", ...RT, "--log-uri", `file://${file}`, BUSYBOX_IMAGE, uid("logf"), "sh", "-c", "echo out1; echo err1 >&2"]);
    const text = readFileSync(file, "utf8");
    assert.match(text, /out1/);
    assert.match(text, /err1/);
    const logger = path.join(cfgDir, "logger.sh");
    const dest = path.join(cfgDir, "binlog");
    writeFileSync(logger, `#!/bin/sh\necho "$CONTAINER_ID $1=$2" > ${dest}.args\n# Closing fd 5 (before forking, so no child holds it) tells the shim we are ready.\nexec 5>&-\ncat <&3 > ${dest}.out &\ncat <&4 > ${dest}.err &\nwait\n`, { mode: 0o755 });
    const id = uid("logb");
    await ctrd.ctr(["run", "--rm", ...RT, "--log-uri", `binary://${logger}?k=v`, BUSYBOX_IMAGE, id, "sh", "-c", "echo out2; echo err2 >&2"]);
    await waitFor(() => { try { return readFileSync(`${dest}.out`, "utf8").includes("out2") && readFileSync(`${dest}.err`, "utf8").includes("err2"); } catch { return false; } }, { timeoutMs: 10_000, what: "logger output" });
    assert.equal(readFileSync(`${dest}.args`, "utf8").trim(), `${id} k=v`);
  });

  it("checkpoint without CRIU fails with a clear message", async () => {
    const id = uid("ckpt");
    await ctrd.ctr(["run", "-d", ...RT, BUSYBOX_IMAGE, id, "sleep", "1000"]);
    const r = await ctrd.ctr(["task", "checkpoint", id], { allowFail: true });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /CRIU|criu/);
    await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id]);
    await sleep(300);
    await ctrd.ctr(["task", "rm", "-f", id], { allowFail: true });
    await ctrd.ctr(["container", "rm", id]);
  });

  it("groups containers of one pod into one shim; the shim exits after its last task", async () => {
    const pod = uid("pod");
    const ids = [uid("g"), uid("g"), uid("g")];
    const before = new Set(shimPids());
    for (const id of ids) await ctrd.ctr(["run", "-d", ...RT, "--label", "x=y", "--annotation", `io.kubernetes.cri.sandbox-id=${pod}`, BUSYBOX_IMAGE, id, "sleep", "1000"]);
    const lone = uid("lone");
    await ctrd.ctr(["run", "-d", ...RT, BUSYBOX_IMAGE, lone, "sleep", "1000"]);
    const fresh = shimPids().filter((p) => !before.has(p));
    assert.equal(fresh.length, 2, `expected two new shims, got ${fresh.length}`);
    for (const id of [...ids, lone]) {
      await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id]);
    }
    await sleep(500);
    for (const id of [...ids, lone]) {
      await ctrd.ctr(["task", "rm", "-f", id], { allowFail: true });
      await ctrd.ctr(["container", "rm", id]);
    }
    await waitFor(() => shimPids().filter((p) => fresh.includes(p)).length === 0, { timeoutMs: 10_000, what: "shims to exit" });
  });

  it("node grouping: one shim serves every container, across namespaces", async () => {
    const nodeCfg = path.join(cfgDir, "node.toml");
    writeFileSync(nodeCfg, `mode = "runc"\ngrouping = "node"\n[runc]\nroot = "${cfgDir}/runc"\n`);
    const rtNode = [...RT, "--runtime-config-path", nodeCfg];
    const before = new Set(shimPids());
    const ids = [uid("n"), uid("n")];
    for (const id of ids) await ctrd.ctr(["run", "-d", ...rtNode, BUSYBOX_IMAGE, id, "sleep", "1000"]);
    await importImage(ctrd, BUSYBOX_IMAGE, { namespace: "other" });
    const other = uid("n");
    await ctrd.ctr(["run", "-d", ...rtNode, BUSYBOX_IMAGE, other, "sleep", "1000"], { namespace: "other" });
    const fresh = shimPids().filter((p) => !before.has(p));
    assert.equal(fresh.length, 1, `expected one shim for the node, got ${fresh.length}`);
    const ex = await ctrd.ctr(["task", "exec", "--exec-id", "x", other, "echo", "ns-ok"], { namespace: "other" });
    assert.equal(ex.stdout, "ns-ok\n");
    for (const [id, ns] of [[ids[0]!, "default"], [ids[1]!, "default"], [other, "other"]] as const) {
      await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id], { namespace: ns });
      await waitFor(async () => /STOPPED/.test((await ctrd.ctr(["task", "ls"], { namespace: ns })).stdout.split("\n").find((l) => l.startsWith(id)) ?? ""), { timeoutMs: 10_000, what: "stopped" });
      await ctrd.ctr(["task", "rm", id], { namespace: ns });
      await ctrd.ctr(["container", "rm", id], { namespace: ns });
    }
    await waitFor(() => shimPids().filter((p) => fresh.includes(p)).length === 0, { timeoutMs: 10_000, what: "node shim to exit" });
    await waitFor(() => eventLog.split("\n").some((l) => l.includes("other") && l.includes("/tasks/delete")), { timeoutMs: 5000, what: "events in the other namespace" });
  });

  it("a SIGKILLed shim is cleaned up by containerd and the id can be reused", async () => {
    const id = uid("killshim");
    const before = new Set(shimPids());
    await ctrd.ctr(["run", "-d", ...RT, BUSYBOX_IMAGE, id, "sleep", "1000"]);
    const [shim] = shimPids().filter((p) => !before.has(p));
    assert.ok(shim, "shim found");
    process.kill(shim!, "SIGKILL");
    // containerd runs our `delete`, then publishes the exit and delete events itself.
    await waitFor(() => eventLog.split("\n").some((l) => l.includes("/tasks/delete") && l.includes(id)), { timeoutMs: 15_000, what: "containerd's cleanup after shim death" });
    await ctrd.ctr(["container", "rm", id]);
    const r = await ctrd.ctr(["run", "--rm", ...RT, BUSYBOX_IMAGE, id, "echo", "reborn"]);
    assert.equal(r.stdout, "reborn\n");
  });
});
