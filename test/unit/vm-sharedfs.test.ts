// What a vm-mode container's spec exposes to the guest: only what the spec names, resolved on the host
// (symlinks included), mounted into the pod's shared dir, with read-only kept read-only. The guest
// writes that dir, so whatever it plants there (links, swapped dirs, FIFOs) must not move a mount,
// an unmount or a removal out of it. FakeSys records mounts; the *at calls run on a real temp dir.
import { describe, it, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, renameSync, rmdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { FakeSys } from "../../src/sys/fake.js";
import { MS_BIND, MS_RDONLY, MS_REMOUNT } from "../../src/sys/types.js";
import { shareContainer, unshareAll, unshareContainer, GUEST_SHARED_DIR } from "../../src/runtime/vm/sharedfs.js";
import { isEntryName, removeTree } from "../../src/runtime/vm/beneath.js";
import { mountPointsUnder } from "../../src/shim/mount.js";
import { ShimError } from "../../src/core/errors.js";

const OVERLAY = [{ type: "overlay", source: "overlay", target: "", options: ["lowerdir=/l"] }];

describe("the pod's shared dir", () => {
  let tmp: string;
  let runDir: string;
  let shared: string;
  /** A host dir the guest would like the host to mount on or empty. */
  let outside: string;

  beforeEach(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), "cocoon-share-"));
    runDir = path.join(tmp, "run");
    shared = path.join(runDir, "shared");
    mkdirSync(shared, { recursive: true });
    outside = path.join(tmp, "outside");
    mkdirSync(outside);
    writeFileSync(path.join(outside, "canary"), "host");
  });
  afterEach(() => rmSync(tmp, { recursive: true, force: true }));

  const untouched = () => assert.deepEqual(readdirSync(outside), ["canary"]);
  const mountsOutsideShare = (sys: FakeSys) => sys.mounts.map((m) => m.target).filter((t) => !t.startsWith(shared + "/"));

  it("resolves bind sources on the host; the spec points at the guest's view of the shared dir", () => {
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
    const guest = shareContainer(sys, shared, "c1", OVERLAY, "/unused", spec) as any;
    assert.equal(guest.root.path, `${GUEST_SHARED_DIR}/c1/rootfs`);
    assert.equal(guest.root.readonly, true);
    assert.equal(guest.mounts[0].source, "proc", "non-bind mounts are the guest's own");
    assert.equal(guest.mounts[1].source, `${GUEST_SHARED_DIR}/c1/mounts/1`);
    assert.equal(guest.mounts[2].source, `${GUEST_SHARED_DIR}/c1/mounts/2`);
    assert.equal(spec.mounts[1]!.source, path.join(tmp, "link"), "the caller's spec is not modified");
    assert.deepEqual(sys.mounts.map((m) => [m.source, m.target, m.fstype]), [
      ["overlay", path.join(shared, "c1", "rootfs"), "overlay"],
      [real, path.join(shared, "c1", "mounts", "1"), "none"],
      [path.join(tmp, "secret"), path.join(shared, "c1", "mounts", "2"), "none"],
    ]);
    assert.equal(lstatSync(path.join(shared, "c1", "mounts", "2")).isFile(), true, "a file is bound onto a file");
    const ro = sys.mounts.filter((m) => m.flags & MS_RDONLY).map((m) => m.target);
    assert.deepEqual(ro, [path.join(shared, "c1", "mounts", "1")], "the read-only remount reached the bind, not the dir under it");
    assert.ok(sys.callsOf("mount").every(([, , , f]) => !((f as number) & MS_REMOUNT) || (f as number) & MS_BIND));

    assert.throws(() => shareContainer(sys, shared, "c2", [], tmp, { mounts: [{ destination: "/x", type: "bind", source: path.join(tmp, "nope"), options: ["rbind"] }] }),
      (e: ShimError) => e.kind === "InvalidArgument" && /does not exist/.test(e.message));
    assert.equal(existsSync(path.join(shared, "c2")), false, "a failed share leaves nothing");

    unshareContainer(sys, shared, "c1");
    assert.deepEqual(sys.mounts, []);
    assert.equal(existsSync(path.join(shared, "c1")), false);
  });

  it("binds a bundle's own rootfs dir when containerd gives no rootfs mounts, unless it is in the share", () => {
    const bundleRootfs = path.join(tmp, "bundle", "rootfs");
    mkdirSync(bundleRootfs, { recursive: true });
    const sys = new FakeSys();
    const guest = shareContainer(sys, shared, "c1", [], bundleRootfs, {}) as any;
    assert.equal(guest.root.path, `${GUEST_SHARED_DIR}/c1/rootfs`);
    assert.deepEqual(sys.mounts.map((m) => [m.source, m.target, !!(m.flags & MS_BIND)]), [[bundleRootfs, path.join(shared, "c1", "rootfs"), true]]);
    mkdirSync(path.join(shared, "planted"));
    assert.throws(() => shareContainer(sys, shared, "c2", [], path.join(shared, "planted"), {}),
      (e: ShimError) => e.kind === "InvalidArgument" && /inside the pod's shared dir/.test(e.message));
  });

  it("replaces a container dir the guest planted as a link (to a host dir, or to /) with its own", () => {
    symlinkSync("/", path.join(shared, "escape"));
    symlinkSync(outside, path.join(shared, "c1"));
    const sys = new FakeSys();
    shareContainer(sys, shared, "c1", OVERLAY, "/unused", { mounts: [{ destination: "/d", type: "bind", source: outside, options: ["rbind"] }] });
    assert.deepEqual(mountsOutsideShare(sys), []);
    assert.equal(lstatSync(path.join(shared, "c1")).isDirectory(), true);
    assert.equal(readlinkSync(path.join(shared, "escape")), "/", "other entries are the guest's business");
    untouched();
  });

  it("replaces a planted dir whose rootfs and mounts are links", () => {
    mkdirSync(path.join(shared, "c1"));
    symlinkSync(outside, path.join(shared, "c1", "rootfs"));
    symlinkSync(outside, path.join(shared, "c1", "mounts"));
    const sys = new FakeSys();
    shareContainer(sys, shared, "c1", OVERLAY, "/unused", { mounts: [{ destination: "/d", type: "bind", source: path.join(tmp, "outside"), options: ["rbind"] }] });
    assert.deepEqual(mountsOutsideShare(sys), []);
    assert.deepEqual(sys.mounts.map((m) => path.relative(shared, m.target)), ["c1/rootfs", "c1/mounts/0"]);
    untouched();
  });

  /** A FakeSys on which the "guest" gets to act right after each mkdirat of the given name. */
  function racingGuest(name: string, plant: (p: string) => void): FakeSys {
    const sys = new FakeSys();
    const mkdirat = sys.mkdirat.bind(sys);
    sys.mkdirat = (dirFd, p, mode) => {
      mkdirat(dirFd, p, mode);
      if (p === name) plant(path.join(readlinkSync(`/proc/self/fd/${dirFd}`), p));
    };
    return sys;
  }

  it("fails clearly, mounting nothing, when the guest swaps a fresh dir for a link before it is opened", () => {
    const sys = racingGuest("rootfs", (p) => {
      rmdirSync(p);
      symlinkSync(outside, p);
    });
    assert.throws(() => shareContainer(sys, shared, "c1", OVERLAY, "/unused", {}),
      (e: ShimError) => e.kind === "FailedPrecondition" && /shared dir entry .*c1\/rootfs is not a directory \(a symlink/.test(e.message));
    assert.deepEqual(sys.mounts, []);
    assert.equal(existsSync(path.join(shared, "c1")), false, "the failed container's dir is removed, link and all");
    untouched();
  });

  it("never opens a FIFO (or anything else) the guest puts where a file bind goes", () => {
    const sys = racingGuest("mounts", (p) => execFileSync("mkfifo", [path.join(p, "0")]));
    assert.throws(() => shareContainer(sys, shared, "c1", OVERLAY, "/unused", { mounts: [{ destination: "/f", type: "bind", source: path.join(outside, "canary"), options: ["rbind"] }] }),
      (e: ShimError) => e.kind === "FailedPrecondition" && /mounts\/0 already exists/.test(e.message));
    assert.deepEqual(sys.mounts, [], "the rootfs mounted first is unmounted again");
  });

  it("refuses bind sources inside the shared dir, however they are named", () => {
    const sys = new FakeSys();
    mkdirSync(path.join(shared, "planted"));
    symlinkSync(path.join(shared, "planted"), path.join(tmp, "innocent"));
    for (const source of [path.join(shared, "planted"), path.join(tmp, "innocent"), path.join(shared, "escape")]) {
      if (source.endsWith("escape")) symlinkSync(outside, source);
      assert.throws(() => shareContainer(sys, shared, "c1", OVERLAY, "/unused", { mounts: [{ destination: "/d", type: "bind", source, options: ["rbind"] }] }),
        (e: ShimError) => e.kind === "InvalidArgument" && /inside the pod's shared dir/.test(e.message), source);
    }
    assert.throws(() => shareContainer(sys, shared, "c1", [{ type: "overlay", source: "overlay", target: "", options: [`lowerdir=/l:${shared}/planted`] }], "/unused", {}),
      (e: ShimError) => e.kind === "InvalidArgument" && /rootfs mount overlay uses/.test(e.message));
    assert.deepEqual(sys.mounts, []);
  });

  it("unshares what is really mounted: a moved container dir and a planted link touch nothing outside", () => {
    const sys = new FakeSys();
    shareContainer(sys, shared, "c1", OVERLAY, "/unused", { mounts: [{ destination: "/d", type: "bind", source: outside, options: ["rbind", "ro"] }] });
    shareContainer(sys, shared, "c2", OVERLAY, "/unused", {});
    // The guest moves c1 away (mounts and all), puts a link in its place and one inside.
    symlinkSync(outside, path.join(shared, "c1", "evil"));
    renameSync(path.join(shared, "c1"), path.join(shared, "moved"));
    sys.renamed(path.join(shared, "c1"), path.join(shared, "moved"));
    symlinkSync(outside, path.join(shared, "c1"));
    unshareContainer(sys, shared, "c1");
    assert.equal(existsSync(path.join(shared, "c1")), false, "the link is removed, not followed");
    untouched();
    assert.deepEqual(sys.mounts.map((m) => path.relative(shared, m.target)).sort(), ["c2/rootfs", "moved/mounts/0", "moved/rootfs"]);
    // The pod's end takes everything below the share, wherever it is, and removes the run dir.
    unshareAll(sys, shared, runDir);
    assert.deepEqual(sys.mounts, []);
    assert.equal(existsSync(runDir), false);
    untouched();
    assert.ok(sys.callsOf("umount").every(([t]) => /^\/proc\/self\/fd\/\d+\/[^/]+$/.test(t as string)), "every unmount goes through a verified parent");
  });

  it("removes a tree without following links in it or entering what is still mounted", () => {
    const sys = new FakeSys();
    mkdirSync(path.join(shared, "a", "b"), { recursive: true });
    symlinkSync(outside, path.join(shared, "a", "b", "link"));
    symlinkSync("/", path.join(shared, "a", "root"));
    writeFileSync(path.join(shared, "a", "b", "f"), "");
    assert.equal(removeTree(sys, runDir), true);
    assert.equal(existsSync(runDir), false);
    untouched();
  });

  it("names: one entry, never a path or a way up", () => {
    for (const ok of ["c1", "a.b-c_d", "..x"]) assert.equal(isEntryName(ok), true, ok);
    for (const bad of ["", ".", "..", "a/b", "/abs", "a\0b"]) assert.equal(isEntryName(bad), false, bad);
    assert.throws(() => shareContainer(new FakeSys(), shared, "..", OVERLAY, "/unused", {}), (e: ShimError) => e.kind === "InvalidArgument");
  });
});

describe("mountPointsUnder", () => {
  it("lists the dir and what is below it, deepest first, each stacked mount once per layer", () => {
    const points = ["/", "/run/pod/shared", "/run/pod/shared/c1/rootfs", "/run/pod/shared2/x", "/run/pod/shared/c1/rootfs", "/run/pod/shared/c1/mounts/0"];
    assert.deepEqual(mountPointsUnder("/run/pod/shared", points), [
      "/run/pod/shared/c1/mounts/0", "/run/pod/shared/c1/rootfs", "/run/pod/shared/c1/rootfs", "/run/pod/shared",
    ]);
  });
});
