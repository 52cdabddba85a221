import { test } from "node:test";
import assert from "node:assert/strict";
import { parseMountOptions, MS } from "../../src/shim/mount.js";
import { parseOutputTarget } from "../../src/shim/stdio.js";
import { cgroupRelPath } from "../../src/runtime/runc/cgroups.js";
import { lastLoggedError } from "../../src/runtime/runc/cli.js";
import { writeFileSync, mkdtempSync, rmSync } from "node:fs";
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
  assert.match(lastLoggedError(f), /executable file not found/);
  assert.equal(lastLoggedError(path.join(d, "none")), "");
  rmSync(d, { recursive: true });
});

import { podSizing } from "../../src/runtime/vm/runtime.js";
test("vm sizing: config base plus the pod's limits from CRI annotations", () => {
  assert.deepEqual(podSizing({}, 1, 256), { vcpus: 1, memoryMiB: 256 });
  assert.deepEqual(podSizing({ "io.kubernetes.cri.sandbox-memory": String(128 << 20), "io.kubernetes.cri.sandbox-cpu-quota": "150000", "io.kubernetes.cri.sandbox-cpu-period": "100000" }, 1, 256), { vcpus: 3, memoryMiB: 384 });
});
