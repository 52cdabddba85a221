// A guest that turns on the host: root in a privileged container of a vm pod plants symlinks in the
// pod's shared directory (the host dir exported over 9p) before and while the host prepares the next
// containers. Whatever it plants, the host mounts nothing outside the pod's directory, deletes nothing
// outside it, and leaves nothing mounted once the pod is gone.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { GUEST_SHARED_DIR } from "../../src/core/guest-abi.js";
import { isUnder, mountsUnder } from "../../src/cli/lab/host-state.js";
import { MNT_DETACH, sys } from "../../src/sys/index.js";
import { startContainerd, type Containerd } from "../helpers/containerd.js";
import { qemuPids } from "../helpers/cri.js";
import { BUSYBOX_IMAGE, importImage } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { repoRoot, waitFor } from "../helpers/util.js";

const OUT = path.join(repoRoot, "guest", "out");
const built = existsSync(path.join(OUT, "manifest.json")) && existsSync(path.join(OUT, "vmlinux"));
let seq = 0;
const uid = (name: string) => `${name}-${process.pid}-${++seq}`;

/** Single-quotes a string for sh. */
const shellQuote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

describe("a hostile guest cannot steer the host's mounts through the shared directory", { skip: !built && "guest/out not built (run guest/build.sh)", timeout: 600_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let dir: string;
  let rt: string[];
  /** A host directory the guest must never get anything mounted on, created or deleted in. */
  let hostDir: string;
  let vol: string;
  let runDir = "";
  let qemuPid = 0;
  const pod = uid("hostile");
  // Guest root, as a privileged container gets it: it points the guest kernel's core_pattern at a
  // script in its own rootfs and crashes a process, and the kernel runs that script as root in the
  // VM's own namespaces, where the agent mounted the share (/mnt/cocoon, the host's shared dir).
  const share = GUEST_SHARED_DIR;
  let calls = 0;
  const guest = async (script: string) => {
    const n = ++calls;
    const inRootfs = `${share}/${pod}/rootfs`;
    const out = (ext: string) => `${inRootfs}/r${n}.${ext}`;
    const body = `#!/bin/sh\n( ${script} ) >${out("out")} 2>&1; echo $? >${out("tmp")}; mv ${out("tmp")} ${out("rc")}\n`;
    const setup = [
      `printf '%s' ${shellQuote(body)} >/x${n}.sh && chmod +x /x${n}.sh`,
      `echo '|${inRootfs}/x${n}.sh' >/proc/sys/kernel/core_pattern`,
      "ulimit -c unlimited; sh -c 'kill -SEGV $$'",
      `i=0; while [ ! -f /r${n}.rc ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; cat /r${n}.out; exit $(cat /r${n}.rc)`,
    ].join("\n");
    const r = await ctrd.ctr(["task", "exec", "--exec-id", uid("g"), pod, "sh", "-c", setup], { allowFail: true, timeoutMs: 90_000 });
    assert.equal(r.code, 0, `guest script failed: ${script}\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  // Other test files on this host mount in their own temp dirs meanwhile: those are not this pod's doing.
  const othersTmp = new RegExp(`^${os.tmpdir()}/cocoon-[^/]+`);
  const foreign = (p: string) => othersTmp.test(p) && !isUnder(p, dir) && !isUnder(p, ctrd.dir);
  const mountsOutsidePod = () => mountsUnder("/").filter((p) => !isUnder(p, runDir) && !foreign(p));
  const newMountsOutsidePod = (before: string[]) => {
    const known = new Set(before);
    return mountsOutsidePod().filter((p) => !known.has(p));
  };
  const hostDirUntouched = () => assert.deepEqual(readdirSync(hostDir).sort(), ["canary"], `nothing may appear in or vanish from ${hostDir}`);

  /** Runs `id` in the pod with a read-only volume; it either works or fails clearly, and only inside the pod dir. */
  async function runHostile(id: string) {
    const outside = mountsOutsidePod();
    const r = await ctrd.ctr(["run", "-d", ...rt, "--annotation", `io.kubernetes.cri.sandbox-id=${pod}`,
      "--mount", `type=bind,src=${vol},dst=/data,options=rbind:ro`, BUSYBOX_IMAGE, id, "sleep", "1000"], { allowFail: true, timeoutMs: 120_000 });
    try {
      assert.deepEqual(newMountsOutsidePod(outside), [], "nothing mounted outside the pod's directory");
      hostDirUntouched();
      if (r.code === 0) {
        const cat = await ctrd.ctr(["task", "exec", "--exec-id", uid("cat"), id, "cat", "/data/f"], { allowFail: true, timeoutMs: 60_000 });
        assert.equal(cat.stdout, "from-host\n", cat.stderr);
      } else {
        assert.match(r.stderr, /shared dir|symlink/, r.stderr);
      }
    } finally {
      await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id], { allowFail: true });
      await waitFor(async () => !/RUNNING/.test((await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(id + " ")) ?? ""), { timeoutMs: 30_000, what: `${id} stopped` });
      await ctrd.ctr(["task", "rm", id], { allowFail: true });
      await ctrd.ctr(["container", "rm", id], { allowFail: true });
    }
    assert.deepEqual(newMountsOutsidePod(outside), [], "nothing left mounted outside the pod's directory");
    hostDirUntouched();
    return r;
  }

  before(async () => {
    host = await snapshotHost();
    dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-hostile-"));
    hostDir = path.join(dir, "host-only");
    mkdirSync(hostDir);
    writeFileSync(path.join(hostDir, "canary"), "host\n");
    vol = path.join(dir, "vol");
    mkdirSync(vol);
    writeFileSync(path.join(vol, "f"), "from-host\n");
    const cfg = path.join(dir, "vm.toml");
    writeFileSync(cfg, [
      'mode = "vm"', "[vm]",
      `kernel = "${OUT}/vmlinux"`, `initrd = "${OUT}/initramfs-9p.cpio.zst"`, `rootfs = "${OUT}/rootfs.erofs"`,
      'accel = "auto"', "memory_mib = 384", "boot_timeout_sec = 120", `state_dir = "${dir}/vm"`, "template = false", "",
    ].join("\n"));
    rt = ["--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", cfg];
    ctrd = await startContainerd({ pathPrepend: [path.join(repoRoot, "bin")] });
    await importImage(ctrd, BUSYBOX_IMAGE);
    await ctrd.ctr(["run", "-d", ...rt, "--privileged", "--annotation", `io.kubernetes.cri.sandbox-id=${pod}`,
      BUSYBOX_IMAGE, pod, "sleep", "100000"], { timeoutMs: 180_000 });
    const state = JSON.parse(readFileSync(path.join(ctrd.state, "io.containerd.runtime.v2.task", "default", pod, "cocoon-state.json"), "utf8"));
    runDir = state.runDir;
    qemuPid = state.qemuPid;
    // The guest's view of the share really is the host dir: the pod's own container is in it.
    assert.match(await guest(`ls ${share}`), new RegExp(`^${pod}$`, "m"));
  });

  after(async () => {
    await ctrd?.stop();
    // A host that followed the guest's links left mounts in the test's dir: take them down first.
    if (dir) {
      for (let round = 0; round < 10 && mountsUnder(dir).length > 0; round++) {
        for (const mp of mountsUnder(dir)) {
          try {
            sys.umount(mp, MNT_DETACH);
          } catch {}
        }
      }
      rmSync(dir, { recursive: true, force: true });
    }
    await assertNoLeaks(host, { harness: ctrd });
  });

  it("a container id planted as a symlink to a host dir (and `escape -> /`) does not move its mounts", async (t) => {
    const id = uid("planted");
    await guest(`cd ${share} && ln -s / escape && ln -s ${hostDir} ${id}`);
    const r = await runHostile(id);
    t.diagnostic(r.code === 0 ? "the container ran" : `the container was refused: ${r.stderr.trim()}`);
  });

  it("a container dir planted with symlinks inside it does not move its rootfs or volumes", async (t) => {
    const id = uid("inner");
    await guest(`cd ${share} && mkdir ${id} && ln -s ${hostDir} ${id}/rootfs && ln -s ${hostDir} ${id}/mounts`);
    const r = await runHostile(id);
    t.diagnostic(r.code === 0 ? "the container ran" : `the container was refused: ${r.stderr.trim()}`);
  });

  it("a running container's dir swapped for a symlink: deleting the container touches nothing outside", async () => {
    const id = uid("swapped");
    const outside = mountsOutsidePod();
    await ctrd.ctr(["run", "-d", ...rt, "--annotation", `io.kubernetes.cri.sandbox-id=${pod}`,
      "--mount", `type=bind,src=${vol},dst=/data,options=rbind:ro`, BUSYBOX_IMAGE, id, "sleep", "1000"], { timeoutMs: 120_000 });
    // The dir holding the container's mount points moves away; links take its place and appear in it.
    await guest(`cd ${share} && ln -s ${hostDir} ${id}/evil && mv ${id} moved-${id} && ln -s ${hostDir} ${id}`);
    await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id]);
    await waitFor(async () => /STOPPED/.test((await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(id + " ")) ?? ""), { timeoutMs: 30_000, what: "stopped" });
    await ctrd.ctr(["task", "rm", id]);
    await ctrd.ctr(["container", "rm", id]);
    assert.deepEqual(newMountsOutsidePod(outside), []);
    hostDirUntouched();
  });

  it("deleting the pod unmounts everything under its dir, whatever the guest moved, and leaves no QEMU", async () => {
    assert.ok(mountsUnder(runDir).length > 0, "the pod has mounts to clean up");
    await ctrd.ctr(["task", "kill", "-s", "SIGKILL", pod]);
    await waitFor(async () => /STOPPED/.test((await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(pod + " ")) ?? ""), { timeoutMs: 30_000, what: "pod stopped" });
    await ctrd.ctr(["task", "rm", pod]);
    await ctrd.ctr(["container", "rm", pod]);
    assert.deepEqual(mountsUnder(runDir), [], "nothing under the pod dir stays mounted");
    assert.equal(existsSync(runDir), false, "the pod dir is removed");
    await waitFor(() => !qemuPids().includes(qemuPid), { timeoutMs: 10_000, what: "the pod's QEMU to be gone" });
    hostDirUntouched();
  });
});
