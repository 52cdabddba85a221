// A hostile local user against the shim (issue: no local user can steer the shim), through the real
// containerd: a real unprivileged user made for this test plants symlinks to a FIFO it serves in the
// world-writable directory the `start` launcher used to write to; a run dir that is not root's alone
// is refused; and a long-lived shim keeps no fd of a deleted container.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { startContainerd, type Containerd } from "../helpers/containerd.js";
import { BUSYBOX_IMAGE, importImage } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { cocoonShims, isAlive } from "../helpers/procfs.js";
import { repoRoot, run, sleep, waitFor } from "../helpers/util.js";

const RT = ["--runtime", "io.containerd.cocoon.v2"];
const POD = "io.kubernetes.cri.sandbox-id";
let seq = 0;
const uid = (name: string) => `${name}-${process.pid}-${++seq}`;

/** A real unprivileged user for the length of this file. */
class HostileUser {
  readonly name = `cchostile${process.pid % 100000}`;
  uid = 0;
  gid = 0;
  async create() {
    const r = await run("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", this.name]);
    assert.equal(r.code, 0, r.stderr);
    const [u, g] = (await run("id", ["-u", this.name])).stdout.trim().split("\n").concat((await run("id", ["-g", this.name])).stdout.trim());
    this.uid = Number(u);
    this.gid = Number(g);
  }
  /** Runs a shell command as this user (no groups, no capabilities). */
  sh(script: string, opts: { detached?: boolean } = {}): ChildProcess {
    return spawn("setpriv", [`--reuid=${this.uid}`, `--regid=${this.gid}`, "--clear-groups", "--inh-caps=-all", "sh", "-c", script], {
      stdio: ["ignore", "pipe", "pipe"],
      detached: opts.detached,
    });
  }
  async shWait(script: string): Promise<{ code: number; out: string }> {
    const c = this.sh(script);
    let out = "";
    c.stdout!.on("data", (d) => (out += d));
    c.stderr!.on("data", (d) => (out += d));
    const code = await new Promise<number>((r) => c.on("close", (n) => r(n ?? -1)));
    return { code, out };
  }
  async remove() {
    await run("pkill", ["-KILL", "-u", this.name]);
    await run("userdel", [this.name]);
  }
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

describe("a hostile local user", { timeout: 300_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let dir: string;
  let trapDir: string;
  const user = new HostileUser();
  let trapReader: ChildProcess | undefined;

  before(async () => {
    host = await snapshotHost();
    await user.create();
    dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-hostile-"));
    chmodSync(dir, 0o755);
    writeFileSync(path.join(dir, "pod.toml"), `mode = "runc"\n[runc]\nroot = "${dir}/runc"\n`);
    writeFileSync(path.join(dir, "node.toml"), `mode = "runc"\ngrouping = "node"\n[runc]\nroot = "${dir}/runc"\n`);
    ctrd = await startContainerd({ env: { COCOON_CONFIG: path.join(dir, "pod.toml") }, pathPrepend: [path.join(repoRoot, "bin")] });
    // containerd hands its shims TMPDIR = its `temp` dir (the harness's <dir>/tmp). Here it is made what
    // /tmp is on a real node, where containerd's unit sets no TMPDIR: world-writable and sticky.
    trapDir = path.join(ctrd.dir, "tmp");
    chmodSync(ctrd.dir, 0o711);
    chmodSync(trapDir, 0o1777);
    await importImage(ctrd, BUSYBOX_IMAGE);
  });

  after(async () => {
    trapReader?.kill("SIGKILL");
    await ctrd?.stop();
    await user.remove();
    await assertNoLeaks(host, { harness: ctrd });
    rmSync(dir, { recursive: true, force: true });
  });

  it("cannot feed `start` its own options through symlinks in a world-writable dir", async () => {
    // The user serves a FIFO and points a symlink at it for every name the launcher used to create
    // (cocoon-start.<pid>.in|.pod|.node|.pool), for the next few thousand pids.
    const last = Number(readFileSync("/proc/sys/kernel/ns_last_pid", "utf8"));
    const plant = await user.shWait(
      `cd ${trapDir} && mkfifo trap.fifo && chmod 666 trap.fifo && ${process.execPath} -e '` +
        `const fs = require("fs"); for (let i = ${last}; i < ${last + 4000}; i++) ` +
        `for (const s of ["in", "pod", "node", "pool"]) fs.symlinkSync("trap.fifo", "cocoon-start." + i + "." + s);'`,
    );
    assert.equal(plant.code, 0, plant.out);
    // A reader that waits for anyone to open the FIFO for writing (it exits when the writer closes).
    trapReader = user.sh(`exec cat ${trapDir}/trap.fifo > ${trapDir}/caught`);
    const id = uid("victim");
    const r = await ctrd.ctr(["run", "--rm", ...RT, BUSYBOX_IMAGE, id, "echo", "ran"], { timeoutMs: 60_000, allowFail: true });
    assert.equal(r.code, 0, `start must neither hang nor fail: ${r.stderr}\n${ctrd.logTail(20)}`);
    assert.equal(r.stdout, "ran\n");
    await sleep(200);
    assert.equal(trapReader.exitCode, null, "the launcher opened the user's FIFO");
    assert.equal(readFileSync(path.join(trapDir, "caught"), "utf8"), "");
    // Nothing of the launcher's landed in the world-writable dir.
    const planted = new Set(["trap.fifo", "caught"]);
    assert.deepEqual(readdirSync(trapDir).filter((n) => /cocoon/.test(n) && !n.startsWith("cocoon-start.") && !planted.has(n)), []);
  });

  it("finds the shim's run dir root's alone and cannot write to it", async () => {
    const runDir = "/run/cocoon";
    const st = statSync(runDir);
    assert.equal(st.uid, 0);
    assert.equal(st.mode & 0o777, 0o700);
    const w = await user.shWait(`echo x > ${runDir}/start/planted; ls ${runDir}/start-cache`);
    assert.notEqual(w.code, 0);
    assert.match(w.out, /Permission denied/);
    assert.ok(!existsSync(`${runDir}/start/planted`));
  });

  it("cannot connect to a pod's shim socket (only root may talk TTRPC to it)", async () => {
    const pod = uid("sockpod");
    await ctrd.ctr(["run", "-d", ...RT, "--annotation", `${POD}=${pod}`, BUSYBOX_IMAGE, pod, "sleep", "1000"]);
    try {
      const bundle = path.join(ctrd.state, "io.containerd.runtime.v2.task", "default", pod);
      const sock = readFileSync(path.join(bundle, "address"), "utf8").replace(/^unix:\/\//, "");
      assert.equal(statSync(sock).mode & 0o777, 0o600);
      const c = await user.shWait(`${process.execPath} -e 'require("net").connect(process.argv[1]).on("connect", () => { console.log("connected"); process.exit(0) }).on("error", (e) => { console.log(e.code); process.exit(1) })' ${sock}`);
      assert.equal(c.out.trim(), "EACCES");
    } finally {
      await ctrd.ctr(["task", "kill", "-s", "SIGKILL", pod]);
      await waitFor(async () => !/RUNNING/.test((await ctrd.ctr(["task", "ls"])).stdout), { what: `${pod} stopped` });
      await ctrd.ctr(["task", "rm", "-f", pod], { allowFail: true });
      await ctrd.ctr(["container", "rm", pod]);
    }
  });

  it("a run dir another user owns is refused with a clear error, and nothing of its content is trusted", async () => {
    const theirs = path.join(dir, "their-run");
    mkdirSync(path.join(theirs, "start"), { recursive: true });
    chownSync(theirs, user.uid, user.gid);
    chownSync(path.join(theirs, "start"), user.uid, user.gid);
    chmodSync(theirs, 0o700);
    chmodSync(path.join(theirs, "start"), 0o700);
    const other = await startContainerd({ env: { COCOON_CONFIG: path.join(dir, "pod.toml"), COCOON_RUN_DIR: theirs }, pathPrepend: [path.join(repoRoot, "bin")] });
    try {
      await importImage(other, BUSYBOX_IMAGE);
      const r = await other.ctr(["run", "--rm", ...RT, BUSYBOX_IMAGE, uid("refused"), "true"], { timeoutMs: 60_000, allowFail: true });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, new RegExp(`refusing to use ${theirs}: ${theirs} is owned by uid ${user.uid}, not root`));
      assert.deepEqual(readdirSync(path.join(theirs, "start")), []);
    } finally {
      await other.stop();
    }
    assert.deepEqual(other.leftovers, []);
  });

  for (const grouping of ["pod", "node"] as const) {
    it(`a long-lived shim (${grouping} grouping) keeps no fd of a deleted container: flat over 20 cycles`, async () => {
      const cfg = ["--runtime-config-path", path.join(dir, `${grouping}.toml`)];
      const pod = uid("fdpod");
      await ctrd.ctr(["run", "-d", ...RT, ...cfg, "--annotation", `${POD}=${pod}`, BUSYBOX_IMAGE, pod, "sleep", "1000"]);
      const shim = await waitFor(() => {
        const daemons = cocoonShims(ctrd.address, "daemon").filter(isAlive);
        return daemons.length === 1 ? daemons[0] : undefined;
      }, { what: "the pod's one shim" });
      const cycle = async () => {
        const r = await ctrd.ctr(["run", "--rm", ...RT, ...cfg, "--annotation", `${POD}=${pod}`, BUSYBOX_IMAGE, uid("c"), "true"], { timeoutMs: 30_000 });
        assert.equal(r.code, 0);
      };
      // Warm-up: lazily opened fds (event publisher, reaper pipes) are there from now on.
      await cycle();
      await cycle();
      const start = fdCount(shim);
      for (let i = 0; i < 18; i++) await cycle();
      const end = fdCount(shim);
      assert.ok(end <= start, `shim ${shim} had ${start} fds after 2 containers, ${end} after 20`);
      await ctrd.ctr(["task", "kill", "-s", "SIGKILL", pod]);
      await waitFor(async () => !/RUNNING/.test((await ctrd.ctr(["task", "ls"])).stdout), { what: `${pod} stopped` });
      await ctrd.ctr(["task", "rm", "-f", pod], { allowFail: true });
      await ctrd.ctr(["container", "rm", pod]);
    });
  }
});
