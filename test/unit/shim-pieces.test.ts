import { test } from "node:test";
import assert from "node:assert/strict";
import { parseMountOptions, MS } from "../../src/shim/mount.js";
import { parseOutputTarget, ProcessIO } from "../../src/shim/stdio.js";
import { FakeSys } from "../../src/sys/fake.js";
import { cgroupRelPath } from "../../src/core/cgroups.js";
import { lastLoggedError } from "../../src/core/oci-cli.js";
import { execFileSync } from "node:child_process";
import { fstatSync, readFileSync, statSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

test("mount options become flags, propagation and data like containerd's", () => {
  const o = parseMountOptions(["ro", "nosuid", "nodev", "rbind", "rprivate", "lowerdir=/a:/b", "index=off"]);
  assert.equal(o.flags, MS.RDONLY | MS.NOSUID | MS.NODEV | MS.BIND | MS.REC);
  assert.equal(o.propagation, MS.PRIVATE | MS.REC);
  assert.equal(o.data, "lowerdir=/a:/b,index=off");
  assert.equal(parseMountOptions(["ro", "rw"]).flags & MS.RDONLY, 0);
});

test("stdio targets: FIFOs, file://, binary://, none", () => {
  const base = { stdin: "", stderr: "", terminal: false };
  assert.deepEqual(parseOutputTarget({ ...base, stdout: "" }), { kind: "null" });
  assert.deepEqual(parseOutputTarget({ ...base, stdout: "/run/x/out", stderr: "/run/x/err" }), { kind: "fifo", stdout: "/run/x/out", stderr: "/run/x/err" });
  assert.deepEqual(parseOutputTarget({ ...base, stdout: "file:///var/log/c.log" }), { kind: "file", path: "/var/log/c.log" });
  assert.deepEqual(parseOutputTarget({ ...base, stdout: "binary:///usr/bin/logger?foo=bar" }), { kind: "binary", path: "/usr/bin/logger", args: ["foo", "bar"] });
  assert.throws(() => parseOutputTarget({ ...base, stdout: "http://x/y" }), /unsupported stdio scheme/);
});

test("stdio owner (IoUid/IoGid): the process's FIFOs are chowned, files and /dev/null are not", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-ioowner-"));
  try {
    for (const f of ["in", "out", "err"]) execFileSync("mkfifo", [path.join(dir, f)]);
    const owner = { uid: 100_000, gid: 100_001 };
    const ctx = { id: "c", namespace: "default", sys: new FakeSys(), owner };
    const fifos = await ProcessIO.open({ stdin: path.join(dir, "in"), stdout: path.join(dir, "out"), stderr: path.join(dir, "err"), terminal: false }, ctx);
    try {
      for (const fd of fifos.childFds()) assert.deepEqual([fstatSync(fd).uid, fstatSync(fd).gid], [owner.uid, owner.gid]);
    } finally {
      fifos.close();
    }
    execFileSync("mkfifo", [path.join(dir, "plain")]);
    const unowned = await ProcessIO.open({ stdin: "", stdout: path.join(dir, "plain"), stderr: "", terminal: false }, { ...ctx, owner: undefined });
    unowned.close();
    assert.equal(statSync(path.join(dir, "plain")).uid, 0, "without an owner the FIFOs stay root's");
    const log = path.join(dir, "c.log");
    const file = await ProcessIO.open({ stdin: "", stdout: `file://${log}`, stderr: "", terminal: false }, ctx);
    try {
      const [stdin, out, err] = file.childFds().map((fd) => fstatSync(fd));
      assert.ok(stdin!.isCharacterDevice() && stdin!.uid === 0, "/dev/null stays root's");
      assert.equal(out!.uid, 0);
      assert.equal(err!.uid, 0);
    } finally {
      file.close();
    }
    assert.equal(statSync(log).uid, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("cgroup paths: cgroupfs and systemd forms", () => {
  assert.equal(cgroupRelPath("/default/c1", "c1"), "/default/c1");
  assert.equal(cgroupRelPath("", "c1"), "/c1");
  assert.equal(cgroupRelPath("kubepods-besteffort-pod1.slice:cri-containerd:abc", "abc"),
    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope");
});

test("the OCI runtime's last logged error is what users see", () => {
  const d = mkdtempSync(path.join(os.tmpdir(), "cocoon-unit-"));
  const f = path.join(d, "log.json");
  writeFileSync(f, '{"level":"info","msg":"x"}\n{"level":"error","msg":"runc create failed: unable to start container process: exec: \\"nosuch\\": executable file not found in $PATH"}\n');
  assert.match(lastLoggedError(readFileSync(f, "utf8")), /executable file not found/);
  assert.equal(lastLoggedError(""), "");
  rmSync(d, { recursive: true });
});

import { podSizing } from "../../src/runtime/vm/runtime.js";
test("vm sizing: config base plus the pod's limits from CRI annotations", () => {
  assert.deepEqual(podSizing({}, 1, 256), { vcpus: 1, memoryMiB: 256 });
  assert.deepEqual(podSizing({ "io.kubernetes.cri.sandbox-memory": String(128 << 20), "io.kubernetes.cri.sandbox-cpu-quota": "150000", "io.kubernetes.cri.sandbox-cpu-period": "100000" }, 1, 256), { vcpus: 3, memoryMiB: 384 });
});
