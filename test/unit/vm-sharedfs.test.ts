// What a vm-mode container's spec exposes to the guest: only what the spec names, resolved on the host
// (symlinks included), mounted into the pod's shared dir, with read-only kept read-only.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { FakeSys } from "../../src/sys/fake.js";
import { MS_BIND, MS_RDONLY, MS_REMOUNT } from "../../src/sys/types.js";
import { shareContainer, unshareContainer, GUEST_SHARED_DIR } from "../../src/runtime/vm/sharedfs.js";
import { ShimError } from "../../src/shim/errors.js";

test("bind sources are resolved on the host; the spec points at the guest's view of the shared dir", () => {
  const tmp = mkdtempSync(path.join(os.tmpdir(), "cocoon-share-"));
  try {
    const shared = path.join(tmp, "shared");
    const real = path.join(tmp, "data");
    mkdirSync(real);
    writeFileSync(path.join(tmp, "secret"), "x");
    // A symlink that points elsewhere: the guest must get what it really is, not the link.
    symlinkSync(real, path.join(tmp, "link"));
    const sys = new FakeSys();
    const spec = {
      root: { path: "rootfs", readonly: true },
      mounts: [
        { destination: "/proc", type: "proc", source: "proc" },
        { destination: "/data", type: "bind", source: path.join(tmp, "link"), options: ["rbind", "ro"] },
        { destination: "/etc/hostname", type: "bind", source: path.join(tmp, "secret"), options: ["rbind", "rw"] },
      ],
    };
    const guest = shareContainer(sys, shared, "c1", [{ type: "overlay", source: "overlay", target: "", options: ["lowerdir=/l"] }], "/unused", spec) as any;
    assert.equal(guest.root.path, `${GUEST_SHARED_DIR}/c1/rootfs`);
    assert.equal(guest.root.readonly, true);
    assert.equal(guest.mounts[0].source, "proc", "non-bind mounts are the guest's own");
    assert.equal(guest.mounts[1].source, `${GUEST_SHARED_DIR}/c1/mounts/1`);
    assert.equal(guest.mounts[2].source, `${GUEST_SHARED_DIR}/c1/mounts/2`);
    assert.equal(spec.mounts[1]!.source, path.join(tmp, "link"), "the caller's spec is not modified");
    const mounts = sys.callsOf("mount") as Array<[string, string, string, number, string]>;
    const binds = mounts.filter(([, , , f]) => (f & MS_BIND) && !(f & MS_REMOUNT));
    assert.deepEqual(binds.map(([src, dst]) => [src, dst]), [
      [real, path.join(shared, "c1", "mounts", "1")],
      [path.join(tmp, "secret"), path.join(shared, "c1", "mounts", "2")],
    ]);
    const remounts = mounts.filter(([, , , f]) => f & MS_REMOUNT);
    assert.deepEqual(remounts.map(([, dst, , f]) => [dst, !!(f & MS_RDONLY)]), [[path.join(shared, "c1", "mounts", "1"), true]]);
    assert.throws(() => shareContainer(sys, shared, "c2", [], tmp, { mounts: [{ destination: "/x", type: "bind", source: path.join(tmp, "nope"), options: ["rbind"] }] }),
      (e: ShimError) => e.kind === "InvalidArgument" && /does not exist/.test(e.message));
    unshareContainer(sys, shared, "c1");
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
