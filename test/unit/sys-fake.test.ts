// FakeSys: the scripted stand-in that upper layers are unit-tested with.
import assert from "node:assert/strict";
import { closeSync, constants, mkdtempSync, readdirSync, readSync, rmSync, symlinkSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { FakeSys } from "../../src/sys/fake.js";
import { AT_FDCWD, AT_REMOVEDIR, MNT_DETACH, MS_BIND, MS_RDONLY, MS_REMOUNT, RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS } from "../../src/sys/types.js";

describe("FakeSys", () => {
  it("records calls and the subreaper flag", () => {
    const fake = new FakeSys();
    fake.setChildSubreaper();
    fake.setWinsize(7, 24, 80);
    assert.equal(fake.subreaper, true);
    assert.deepEqual(fake.calls.map((c) => c.method), ["setChildSubreaper", "setWinsize"]);
    assert.deepEqual(fake.callsOf("setWinsize"), [[7, 24, 80]]);
    assert.deepEqual(fake.winsizes.get(7), { rows: 24, cols: 80 });
  });

  it("scripts exits: running, peek without reaping, reap once, then ECHILD", () => {
    const fake = new FakeSys();
    fake.addChild(100);
    assert.equal(fake.tryReap(100), null);
    fake.exit(100, { code: 3 });
    assert.deepEqual(fake.peekExit(100), { pid: 100, code: 3, signal: null });
    assert.deepEqual(fake.tryReap(100), { pid: 100, code: 3, signal: null });
    assert.throws(() => fake.tryReap(100), { code: "ECHILD" });
    assert.throws(() => fake.peekExit(5), { code: "ECHILD" });
    fake.exit(101, { signal: 9 });
    assert.deepEqual(fake.tryReap(101), { pid: 101, code: null, signal: 9 });
  });

  it("delivers SIGCHLD asynchronously after exit() and stops after unsubscribe", async () => {
    const fake = new FakeSys();
    let calls = 0;
    const off = fake.onSigchld(() => calls++);
    fake.exit(1, { code: 0 });
    assert.equal(calls, 0, "not synchronous, like a real signal");
    await new Promise((r) => setImmediate(r));
    assert.equal(calls, 1);
    off();
    fake.exit(2, { code: 0 });
    await new Promise((r) => setImmediate(r));
    assert.equal(calls, 1);
  });

  it("keeps a mount table: mount, bind, remount, umount", () => {
    const fake = new FakeSys();
    fake.mount("tmpfs", "/a", "tmpfs", 0, "size=1m");
    fake.mount("/a", "/b", "", MS_BIND, "");
    fake.mount("", "/b", "", MS_BIND | MS_REMOUNT | MS_RDONLY, "");
    assert.equal(fake.mounts.length, 2);
    assert.equal(fake.mounts[1]!.flags & MS_RDONLY, MS_RDONLY);
    assert.equal(fake.mounts[1]!.fstype, "tmpfs");
    fake.umount("/b", MNT_DETACH);
    assert.equal(fake.isMounted("/b"), false);
    assert.throws(() => fake.umount("/b", 0), { code: "EINVAL" });
    assert.throws(() => fake.mount("", "/nowhere", "", MS_REMOUNT, ""), { code: "EINVAL" });
  });

  it("fails the next call of a method on request", () => {
    const fake = new FakeSys();
    fake.failNext("mount", "EBUSY");
    assert.throws(() => fake.mount("x", "/t", "tmpfs", 0, ""), (err: NodeJS.ErrnoException) => {
      assert.equal(err.code, "EBUSY");
      assert.match(err.message, /mount/);
      return true;
    });
    fake.mount("x", "/t", "tmpfs", 0, "");
    assert.equal(fake.isMounted("/t"), true);
  });

  it("resolves receivers from the test, rejects on close and on timeout", async () => {
    const fake = new FakeSys();
    const r = fake.receiveFd("/run/x.sock");
    assert.throws(() => fake.receiveFd("/run/x.sock"), { code: "EADDRINUSE" });
    fake.deliverFd("/run/x.sock", 42);
    assert.equal(await r.received, 42);
    assert.equal(fake.receivers.size, 0);

    const closed = fake.receiveFd("/run/y.sock");
    closed.close();
    await assert.rejects(closed.received, { code: "ECANCELED" });

    const slow = fake.receiveFd("/run/z.sock", 10);
    await assert.rejects(slow.received, { code: "ETIMEDOUT" });
    assert.throws(() => fake.deliverFd("/run/z.sock", 1));
  });

  it("makes real pipes by default and scripted ones on request", () => {
    const fake = new FakeSys();
    const [r, w] = fake.pipe();
    try {
      writeSync(w, "x");
      const buf = Buffer.alloc(1);
      assert.equal(readSync(r, buf), 1);
      assert.equal(buf.toString(), "x");
    } finally {
      closeSync(r);
      closeSync(w);
    }
    fake.pipeImpl = () => [500, 501];
    assert.deepEqual(fake.pipe(), [500, 501]);
    assert.equal(fake.callsOf("pipe").length, 2);
  });

  it("fans OOM events out to the watchers of a cgroup until they stop", () => {
    const fake = new FakeSys();
    let a = 0;
    let b = 0;
    const stopA = fake.watchOomV1("/sys/fs/cgroup/memory/x", () => a++);
    const stopB = fake.watchOomV1("/sys/fs/cgroup/memory/x", () => b++);
    assert.equal(fake.oom("/sys/fs/cgroup/memory/x"), 2);
    stopA();
    stopA();
    fake.oom("/sys/fs/cgroup/memory/x");
    assert.deepEqual([a, b], [1, 2]);
    stopB();
    assert.equal(fake.isWatchingOom("/sys/fs/cgroup/memory/x"), false);
    assert.equal(fake.oom("/sys/fs/cgroup/memory/x"), 0);
  });

  it("runs openat2/mkdirat/unlinkat on the real filesystem and mounts through fds where they point", () => {
    const dir = mkdtempSync(join(tmpdir(), "cocoon-fake-at-"));
    const fake = new FakeSys();
    try {
      const root = fake.openat2(AT_FDCWD, dir, constants.O_RDONLY | constants.O_DIRECTORY, 0, 0);
      try {
        fake.mkdirat(root, "d", 0o700);
        symlinkSync("/", join(dir, "up"));
        assert.throws(() => fake.openat2(root, "up", constants.O_RDONLY, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), { code: "ELOOP" });
        assert.throws(() => fake.openat2(root, "../x", constants.O_RDONLY, 0, RESOLVE_BENEATH), { code: "EXDEV" });
        const d = fake.openat2(root, "d", constants.O_RDONLY | constants.O_DIRECTORY, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS);
        fake.mount("/src", `/proc/self/fd/${d}`, "", MS_BIND, "");
        closeSync(d);
        assert.deepEqual(fake.mountPoints(), [join(dir, "d")]);
        fake.renamed(join(dir, "d"), join(dir, "e"));
        assert.equal(fake.isMounted(join(dir, "e")), true, "mounts move with a rename, as in mountinfo");
        fake.umount(`/proc/self/fd/${root}/e`, 0);
        assert.deepEqual(fake.mountPoints(), []);
        fake.unlinkat(root, "up", 0);
        fake.unlinkat(root, "d", AT_REMOVEDIR);
        assert.deepEqual(readdirSync(dir), []);
        fake.failNext("mkdirat", "EEXIST");
        assert.throws(() => fake.mkdirat(root, "z", 0o700), { code: "EEXIST" });
      } finally {
        closeSync(root);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
