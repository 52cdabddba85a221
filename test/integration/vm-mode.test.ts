// vm mode through containerd and ctr: every pod is a QEMU VM (TCG here) with the Debian guest kernel.
// VM boots are slow under TCG, so the tests share one long-running pod where they can.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { startContainerd, type Containerd } from "../helpers/containerd.js";
import { BUSYBOX_IMAGE, importImage } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { repoRoot, sleep, waitFor } from "../helpers/util.js";
import { qemuPids } from "../helpers/cri.js";
import { cocoonShims } from "../helpers/procfs.js";

const OUT = path.join(repoRoot, "guest", "out");
const manifestPath = path.join(OUT, "manifest.json");
const built = existsSync(manifestPath) && existsSync(path.join(OUT, "vmlinux"));
const guestRelease: string = built ? JSON.parse(readFileSync(manifestPath, "utf8")).kernel?.release ?? "" : "";
let seq = 0;

/** Resident MiB of QEMU's guest RAM block (the anonymous mapping of the configured size). */
function guestRamRssMiB(qemuPid: number, memoryMiB: number): number {
  let inRam = false;
  for (const line of readFileSync(`/proc/${qemuPid}/smaps`, "utf8").split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (m) inRam = parseInt(m[2]!, 16) - parseInt(m[1]!, 16) === memoryMiB * 1024 * 1024;
    else if (inRam && line.startsWith("Rss:")) return Math.round(Number(line.split(/\s+/)[1]) / 1024);
  }
  throw new Error(`no ${memoryMiB} MiB mapping in QEMU ${qemuPid}`);
}
const uid = (name: string) => `${name}-${process.pid}-${++seq}`;

describe("vm mode through containerd and ctr", { skip: !built && "guest/out not built (run guest/build.sh)", timeout: 600_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let dir: string;
  let cfg: string;
  let rt: string[];
  let eventLog = "";
  let events: ReturnType<typeof spawn> | undefined;
  const pod = uid("vmpod");

  before(async () => {
    host = await snapshotHost();
    dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-vm-"));
    cfg = path.join(dir, "vm.toml");
    writeFileSync(cfg, [
      'mode = "vm"', 'log_level = "debug"', "[vm]",
      `kernel = "${OUT}/vmlinux"`, `initrd = "${OUT}/initramfs-9p.cpio.zst"`, `rootfs = "${OUT}/rootfs.erofs"`,
      // Booted, not restored from a VM template: this file covers the boot path (and free page
      // reporting, which template VMs go without); vm-template.test.ts covers templates.
      'accel = "auto"', "memory_mib = 512", "boot_timeout_sec = 120", `state_dir = "${dir}/vm"`, "template = false", "",
    ].join("\n"));
    rt = ["--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", cfg];
    ctrd = await startContainerd({ pathPrepend: [path.join(repoRoot, "bin")] });
    await importImage(ctrd, BUSYBOX_IMAGE);
    events = spawn("ctr", ["--address", ctrd.address, "events"], { stdio: ["ignore", "pipe", "ignore"] });
    events.stdout!.on("data", (d) => (eventLog += d));
    // The shared pod: its first container boots the VM and stays up.
    await ctrd.ctr(["run", "-d", ...rt, "--annotation", `io.kubernetes.cri.sandbox-id=${pod}`, BUSYBOX_IMAGE, pod, "sleep", "100000"], { timeoutMs: 180_000 });
  });

  after(async () => {
    events?.kill();
    await ctrd?.stop();
    await assertNoLeaks(host, { harness: ctrd });
    rmSync(dir, { recursive: true, force: true });
  });

  it("runs the container on the guest kernel, not the host's", async () => {
    const r = await ctrd.ctr(["task", "exec", "--exec-id", "uname", pod, "uname", "-r"], { timeoutMs: 60_000 });
    assert.equal(r.stdout.trim(), guestRelease);
    assert.notEqual(r.stdout.trim(), os.release());
  });

  it("a second container of the pod runs in the same VM, sees a read-only volume as read-only", async () => {
    const vol = path.join(dir, "vol");
    mkdirSync(vol);
    writeFileSync(path.join(vol, "f"), "from-host\n");
    const before = qemuPids().length;
    const id = uid("second");
    const r = await ctrd.ctr(["run", "--rm", ...rt, "--annotation", `io.kubernetes.cri.sandbox-id=${pod}`,
      "--mount", `type=bind,src=${vol},dst=/data,options=rbind:ro`, BUSYBOX_IMAGE, id,
      "sh", "-c", "cat /data/f; uname -r; echo x > /data/g && echo wrote || echo read-only"], { allowFail: true, timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `from-host\n${guestRelease}\nread-only\n`);
    assert.equal(qemuPids().length, before, "no second QEMU");
    assert.equal(existsSync(path.join(vol, "g")), false);
  });

  it("the pod's long-lived shim keeps no fd of a deleted container: flat over 20 cycles", async () => {
    const shim = await waitFor(() => {
      const daemons = cocoonShims(ctrd.address, "daemon");
      return daemons.length === 1 ? daemons[0] : undefined;
    }, { what: "the pod's one shim" });
    const fds = () => readdirSync(`/proc/${shim}/fd`).length;
    const cycle = async () => {
      const r = await ctrd.ctr(["run", "--rm", ...rt, "--annotation", `io.kubernetes.cri.sandbox-id=${pod}`, BUSYBOX_IMAGE, uid("fd"), "true"], { allowFail: true, timeoutMs: 120_000 });
      assert.equal(r.code, 0, r.stderr);
    };
    await cycle();
    await cycle();
    const start = fds();
    for (let i = 0; i < 18; i++) await cycle();
    assert.ok(fds() <= start, `shim ${shim} had ${start} fds after 2 containers, ${fds()} after 20`);
  });

  it("a pod of the same id in another namespace gets its own VM; a clash with a live pod is refused", async () => {
    const own = JSON.parse(readFileSync(path.join(ctrd.state, "io.containerd.runtime.v2.task", "default", pod, "cocoon-state.json"), "utf8"));
    await importImage(ctrd, BUSYBOX_IMAGE, { namespace: "other" });
    await ctrd.ctr(["run", "-d", ...rt, "--annotation", `io.kubernetes.cri.sandbox-id=${pod}`, BUSYBOX_IMAGE, pod, "sleep", "1000"], { namespace: "other", timeoutMs: 180_000 });
    const theirs = JSON.parse(readFileSync(path.join(ctrd.state, "io.containerd.runtime.v2.task", "other", pod, "cocoon-state.json"), "utf8"));
    assert.notEqual(theirs.runDir, own.runDir);
    assert.notEqual(theirs.qemuPid, own.qemuPid);
    await ctrd.ctr(["task", "kill", "-s", "SIGKILL", pod], { namespace: "other" });
    await waitFor(async () => !/RUNNING/.test((await ctrd.ctr(["task", "ls"], { namespace: "other" })).stdout), { timeoutMs: 30_000, what: "the other pod stopped" });
    await ctrd.ctr(["task", "rm", pod], { namespace: "other" });
    await ctrd.ctr(["container", "rm", pod], { namespace: "other" });
    assert.ok(existsSync(path.join(own.runDir, "console.log")), "the first pod's run dir is untouched");
    // A second containerd with the same config: same namespace and id, so the same run dir, whose owner lives.
    const second = await startContainerd({ pathPrepend: [path.join(repoRoot, "bin")] });
    try {
      await importImage(second, BUSYBOX_IMAGE);
      const r = await second.ctr(["run", "--rm", ...rt, "--annotation", `io.kubernetes.cri.sandbox-id=${pod}`, BUSYBOX_IMAGE, pod, "true"], { allowFail: true, timeoutMs: 60_000 });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, new RegExp(`pod ${pod} in namespace default already has a VM`));
      assert.match(r.stderr, /AlreadyExists|already exists/i);
    } finally {
      await second.stop();
    }
    assert.deepEqual(second.leftovers, []);
    const r = await ctrd.ctr(["task", "exec", "--exec-id", uid("alive"), pod, "cat", "/proc/sys/kernel/hostname"], { timeoutMs: 60_000 });
    assert.equal(r.code, 0);
    assert.ok(existsSync(path.join(own.runDir, "console.log")) && existsSync(path.join(own.runDir, "owner")));
  });

  it("exit codes of a whole-VM container; a missing kernel fails clearly and leaves nothing", async () => {
    const r = await ctrd.ctr(["run", "--rm", ...rt, BUSYBOX_IMAGE, uid("own"), "sh", "-c", "exit 3"], { allowFail: true, timeoutMs: 180_000 });
    assert.equal(r.code, 3);
    const bad = path.join(dir, "bad.toml");
    writeFileSync(bad, `mode = "vm"\n[vm]\nkernel = "${dir}/nope/vmlinux"\nstate_dir = "${dir}/vm"\n`);
    const b = await ctrd.ctr(["run", "--rm", "--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", bad, BUSYBOX_IMAGE, uid("nokernel"), "true"], { allowFail: true, timeoutMs: 60_000 });
    assert.notEqual(b.code, 0);
    assert.match(b.stderr, /guest kernel .*nope\/vmlinux is missing/);
    // The same for the guest root image, with a kernel and initrd that exist.
    const noRoot = path.join(dir, "noroot.toml");
    writeFileSync(noRoot, readFileSync(cfg, "utf8").replace(/^rootfs = .*$/m, `rootfs = "${dir}/nope/rootfs.erofs"`));
    const c = await ctrd.ctr(["run", "--rm", "--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", noRoot, BUSYBOX_IMAGE, uid("noroot"), "true"], { allowFail: true, timeoutMs: 60_000 });
    assert.notEqual(c.code, 0);
    assert.match(c.stderr, /guest root .*nope\/rootfs\.erofs is missing/);
  });

  it("memory the guest frees goes back to the host (free page reporting)", async () => {
    const state = JSON.parse(readFileSync(path.join(ctrd.state, "io.containerd.runtime.v2.task", "default", pod, "cocoon-state.json"), "utf8"));
    const ram = () => guestRamRssMiB(state.qemuPid, 512);
    const before = ram();
    // ~150 MB of anonymous memory in the guest, held while we look, freed when the process exits.
    const hog = spawn("ctr", ["--address", ctrd.address, "task", "exec", "--exec-id", uid("hog"), pod,
      "awk", 'BEGIN { s = sprintf("%150000000s", ""); print "allocated"; fflush(); system("sleep 4") }'], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    hog.stdout!.on("data", (d) => (out += d));
    const exited = new Promise((r) => hog.on("close", r));
    await waitFor(() => out.includes("allocated"), { timeoutMs: 120_000, what: "the guest process to allocate" });
    const peak = ram();
    assert.ok(peak >= before + 100, `guest RAM resident ${before} MiB before, ${peak} MiB while allocated`);
    await exited;
    await waitFor(() => ram() <= peak - 100, { timeoutMs: 60_000, intervalMs: 1000, what: `guest RAM to drop from ${peak} MiB (now ${ram()} MiB)` });
  });

  it("a guest kernel panic ends the pod's tasks and leaves nothing", async () => {
    const id = uid("panic");
    await ctrd.ctr(["run", "-d", ...rt, "--privileged", BUSYBOX_IMAGE, id, "sleep", "1000"], { timeoutMs: 180_000 });
    const state = JSON.parse(readFileSync(path.join(ctrd.state, "io.containerd.runtime.v2.task", "default", id, "cocoon-state.json"), "utf8"));
    await ctrd.ctr(["task", "exec", "--exec-id", "crash", id, "sh", "-c", "echo c > /proc/sysrq-trigger"], { allowFail: true, timeoutMs: 60_000 });
    await waitFor(() => eventLog.split("\n").some((l) => l.includes("/tasks/exit") && l.includes(`"container_id":"${id}"`) && l.includes(`"id":"${id}"`)), { timeoutMs: 30_000, what: "TaskExit after the guest panicked" });
    await waitFor(() => !existsSync(`/proc/${state.qemuPid}`), { timeoutMs: 10_000, what: "QEMU gone" });
    await ctrd.ctr(["task", "rm", id]);
    await ctrd.ctr(["container", "rm", id]);
    await waitFor(() => !existsSync(state.runDir), { timeoutMs: 10_000, what: "VM run dir removed" });
  });

  it("an agent that does not answer in time fails Create with the end of the guest console, and nothing is left", async () => {
    const slow = path.join(dir, "slow.toml");
    writeFileSync(slow, readFileSync(cfg, "utf8").replace("boot_timeout_sec = 120", "boot_timeout_sec = 1"));
    const before = qemuPids().length;
    const r = await ctrd.ctr(["run", "--rm", "--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", slow, BUSYBOX_IMAGE, uid("slow"), "true"], { allowFail: true, timeoutMs: 60_000 });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /did not come up/);
    assert.match(r.stderr, /end of guest console/);
    await waitFor(() => qemuPids().length === before, { timeoutMs: 10_000, what: "the QEMU of the failed boot to be gone" });
  });

  it("killing QEMU turns into TaskExit for every task of the pod, and nothing is left", async () => {
    const id = uid("victim");
    await ctrd.ctr(["run", "-d", ...rt, BUSYBOX_IMAGE, id, "sleep", "1000"], { timeoutMs: 180_000 });
    const before = new Set(qemuPids());
    const state = JSON.parse(readFileSync(path.join(ctrd.state, "io.containerd.runtime.v2.task", "default", id, "cocoon-state.json"), "utf8"));
    assert.ok(before.has(state.qemuPid));
    process.kill(state.qemuPid, "SIGKILL");
    await waitFor(() => eventLog.split("\n").some((l) => l.includes("/tasks/exit") && l.includes(id)), { timeoutMs: 20_000, what: "TaskExit after QEMU death" });
    await waitFor(async () => /STOPPED/.test((await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(id)) ?? ""), { timeoutMs: 10_000, what: "stopped" });
    await ctrd.ctr(["task", "rm", id]);
    await ctrd.ctr(["container", "rm", id]);
    await sleep(500);
    assert.equal(existsSync(state.runDir), false, "VM run dir removed");
  });
});
