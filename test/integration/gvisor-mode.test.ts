// gVisor mode through the real containerd and ctr. Without CRI annotations every container is its own
// runsc sandbox; what runs inside is gVisor's kernel (its dmesg says so), not the host's.
import assert from "node:assert/strict";
import { chownSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { startContainerd, type Containerd } from "../helpers/containerd.js";
import { BUSYBOX_IMAGE, importImage } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { listProcesses } from "../helpers/procfs.js";
import { repoRoot, waitFor, underPty } from "../helpers/util.js";

const RT = ["--runtime", "io.containerd.cocoon.v2"];
/** busybox whose image config runs its process as nobody. */
const NOBODY_IMAGE = "cocoon.local/busybox-nobody:latest";
let seq = 0;
const uid = (name: string) => `${name}-${process.pid}-${++seq}`;

/** runsc sandbox processes using `root` as their state dir. */
export function sandboxes(root: string): number[] {
  return listProcesses().filter((p) => p.args[0] === "runsc-sandbox" && p.args.some((a) => a === `--root=${root}` || a.startsWith(`--root=${root}/`))).map((p) => p.pid);
}

describe("gVisor mode through containerd and ctr", { timeout: 300_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let cfgDir: string;
  let root: string;
  const taskState = async (id: string) => (await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(id)) ?? "";

  before(async () => {
    host = await snapshotHost();
    cfgDir = mkdtempSync(path.join(os.tmpdir(), "cocoon-cfg-"));
    root = path.join(cfgDir, "runsc");
    writeFileSync(path.join(cfgDir, "cocoon.toml"), `mode = "gvisor"\nlog_level = "debug"\n[gvisor]\nroot = "${root}"\nstate_dir = "${cfgDir}/gvisor"\n`);
    ctrd = await startContainerd({ env: { COCOON_CONFIG: path.join(cfgDir, "cocoon.toml") }, pathPrepend: [path.join(repoRoot, "bin")] });
    await importImage(ctrd, BUSYBOX_IMAGE);
    await importImage(ctrd, NOBODY_IMAGE, { user: "65534:65534" });
  });

  afterEach(async () => {
    await waitFor(() => sandboxes(root).length === 0 || undefined, { timeoutMs: 10_000, what: "no runsc sandbox left" });
    await assertNoLeaks(host, { graceMs: 10_000 });
  });

  after(async () => {
    await ctrd?.stop();
    await assertNoLeaks(host, { harness: ctrd });
    // runsc's own state: a container the shim deleted leaves nothing under --root.
    const left = readdirSafe(path.join(root, "default")).filter((f) => !f.startsWith("."));
    rmSync(cfgDir, { recursive: true, force: true });
    assert.deepEqual(left, []);
  });

  // Output, exit codes, signals, stdin, exec, TTY exec, pause/resume and metrics: modes-process and
  // modes-control, for every mode. Here: what only gVisor mode does.
  it("runs a container on gVisor's kernel; the platform probe is logged", async () => {
    const r = await ctrd.ctr(["run", "--rm", ...RT, BUSYBOX_IMAGE, uid("out"), "sh", "-c", "dmesg | head -1"]);
    assert.match(r.stdout, /Starting gVisor/);
    assert.match(ctrd.log(), /gVisor platform probe.*platform=(ptrace|kvm)/);
  });

  it("a container running as nobody with no stdio leaves the host's /dev/null as it was", async () => {
    // runsc run in the foreground chowns its own stdio to the container's user (seen by hand: a
    // /dev/null given to it became nobody's). Through the shim (create/start, --null-io: every stream
    // absent, so the shim supplies /dev/null) it must not.
    const id = uid("nobody");
    const before = statSync("/dev/null");
    try {
      await ctrd.ctr(["run", "-d", "--null-io", ...RT, NOBODY_IMAGE, id, "sh", "-c", "exec sleep 1000"]);
      await waitFor(async () => /RUNNING/.test(await taskState(id)) || undefined, { timeoutMs: 30_000, what: "running" });
      const ex = await ctrd.ctr(["task", "exec", "--user", "65534", "--exec-id", "e1", id, "id", "-u"]);
      assert.equal(ex.stdout, "65534\n");
      const after = statSync("/dev/null");
      assert.deepEqual([after.uid, after.gid], [before.uid, before.gid], "/dev/null's owner is unchanged");
    } finally {
      // Were it changed, put it back: every later test on this host would see it.
      const now = statSync("/dev/null");
      if (now.uid !== before.uid || now.gid !== before.gid) chownSync("/dev/null", before.uid, before.gid);
      await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id], { allowFail: true });
      await waitFor(async () => !/RUNNING/.test(await taskState(id)) || undefined, { timeoutMs: 15_000, what: "task stopped" });
      await ctrd.ctr(["task", "rm", id], { allowFail: true });
      await ctrd.ctr(["container", "rm", id], { allowFail: true });
    }
  });

  it("an exec is signalled inside the sandbox; metrics from runsc; checkpoint refused; SIGKILL of the init", async () => {
    const id = uid("life");
    await ctrd.ctr(["run", "-d", ...RT, BUSYBOX_IMAGE, id, "sleep", "1000"]);
    assert.equal(sandboxes(root).length, 1, "one sandbox for the container");
    // An exec is signalled inside the sandbox (runsc kill --pid), not through its host-side waiter.
    const long = ctrd.ctr(["task", "exec", "--exec-id", "e2", id, "sleep", "1000"], { allowFail: true });
    await waitFor(async () => (await ctrd.ctr(["task", "ps", id])).stdout.trim().split("\n").length >= 3 || undefined, { timeoutMs: 10_000, what: "two processes" });
    await ctrd.ctr(["task", "kill", "--exec-id", "e2", "-s", "SIGTERM", id]);
    assert.equal((await long).code, 143);
    const m = await ctrd.ctr(["task", "metrics", id]);
    assert.match(m.stdout, /memory\.usage_in_bytes\s+[1-9]\d*/);
    const cp = await ctrd.ctr(["task", "checkpoint", id], { allowFail: true });
    assert.notEqual(cp.code, 0);
    assert.match(cp.stderr, /not implemented/i);
    assert.match(cp.stderr, /gVisor mode does not checkpoint containers/);
    await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id]);
    await waitFor(async () => /STOPPED/.test(await taskState(id)) || undefined, { timeoutMs: 15_000, what: "task stopped" });
    await ctrd.ctr(["task", "rm", id]);
    await ctrd.ctr(["container", "rm", id]);
  });

  it("a TTY session through the console socket, and exec -t", async () => {
    const out = await underPty(`stty cols 100 rows 40; ctr --address ${ctrd.address} run --fifo-dir ${ctrd.fifoDir} -t --rm ${RT.join(" ")} ${BUSYBOX_IMAGE} ${uid("tty")} sh -c 'sleep 1; stty size; [ -t 1 ] && echo is-a-tty; exit 6'; echo "rc=$?"`);
    assert.match(out, /40 100/);
    assert.match(out, /is-a-tty/);
    assert.match(out, /rc=6/);
    const id = uid("ttyexec");
    await ctrd.ctr(["run", "-d", ...RT, BUSYBOX_IMAGE, id, "sleep", "1000"]);
    const r = await underPty(`stty cols 77 rows 11; ctr --address ${ctrd.address} task exec --fifo-dir ${ctrd.fifoDir} -t --exec-id t1 ${id} sh -c 'sleep 1; stty size; [ -t 0 ] && echo is-a-tty; exit 5'; echo "rc=$?"`);
    assert.match(r, /is-a-tty/);
    assert.match(r, /rc=5/);
    await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id]);
    await waitFor(async () => /STOPPED/.test(await taskState(id)) || undefined, { timeoutMs: 15_000, what: "task stopped" });
    await ctrd.ctr(["task", "rm", id]);
    await ctrd.ctr(["container", "rm", id]);
  });
});

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
