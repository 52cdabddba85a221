// Real mount(2)/umount2(2) on temp dirs (needs root): tmpfs, bind, read-only remount, lazy unmount.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { MNT_DETACH, MS_BIND, MS_NODEV, MS_NOSUID, MS_RDONLY, MS_REMOUNT, sys } from "../../src/sys/index.js";

function mountOptions(target: string): string[] | undefined {
  // mountinfo field 5 is the mount point, field 6 its per-mount options; the last entry is on top.
  const lines = readFileSync("/proc/self/mountinfo", "utf8").split("\n");
  const hit = lines.map((l) => l.split(" ")).filter((f) => f[4] === target).pop();
  return hit?.[5]?.split(",");
}

describe("sys mount/umount (real)", { timeout: 20_000 }, () => {
  let dir = "";
  let a = "";
  let b = "";

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "cocoon-sys-mount-"));
    a = join(dir, "a");
    b = join(dir, "b");
    mkdirSync(a);
    mkdirSync(b);
  });
  after(() => {
    // Whatever a failed test left mounted goes first (top of the stack first), then the dir.
    for (const target of [b, b, a, a]) {
      try {
        sys.umount(target, MNT_DETACH);
      } catch {
        // not mounted
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it("mounts a tmpfs, binds it, remounts the bind read-only and detaches both", () => {
    sys.mount("cocoon-test", a, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755");
    assert.ok(mountOptions(a)?.includes("nosuid"));
    writeFileSync(join(a, "f"), "hello");

    sys.mount(a, b, "", MS_BIND, "");
    assert.equal(readFileSync(join(b, "f"), "utf8"), "hello");
    sys.mount("", b, "", MS_BIND | MS_REMOUNT | MS_RDONLY, "");
    assert.ok(mountOptions(b)?.includes("ro"));
    assert.throws(() => writeFileSync(join(b, "g"), "x"), { code: "EROFS" });
    writeFileSync(join(a, "g"), "still writable");

    sys.umount(b, MNT_DETACH);
    assert.equal(mountOptions(b), undefined);
    sys.umount(a, 0);
    assert.equal(mountOptions(a), undefined);
  });

  it("reports errno names and the target in errors", () => {
    assert.throws(
      () => sys.mount("x", a, "cocoon-no-such-fs", 0, ""),
      (err: NodeJS.ErrnoException) => {
        assert.equal(err.code, "ENODEV");
        assert.equal(err.syscall, "mount");
        assert.ok(err.message.includes(a), err.message);
        return true;
      },
    );
    assert.throws(() => sys.mount("x", join(dir, "missing"), "tmpfs", 0, ""), { code: "ENOENT" });
    assert.throws(() => sys.umount(a, 0), { code: "EINVAL", syscall: "umount2" });
  });
});
