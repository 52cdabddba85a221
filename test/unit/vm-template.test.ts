// VM template bookkeeping (one builder per shape, stale locks, failure back-off, sweeping templates of
// old assets) and the guest agent's side of a restore, on temporary directories and FakeSys.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { TemplateStore, templateKey, type TemplateShape } from "../../src/runtime/vm/template.js";
import { restored, unmountedShares } from "../../src/agent/restore.js";
import { Logger } from "../../src/core/log.js";
import { FakeSys } from "../../src/sys/fake.js";

function scratch(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-tpl-unit-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function shape(dir: string, over: Partial<TemplateShape> = {}): TemplateShape {
  for (const f of ["vmlinux", "initrd", "rootfs.erofs"]) if (!existsSync(path.join(dir, f))) writeFileSync(path.join(dir, f), f);
  return {
    qemu: "/bin/sh", kernel: path.join(dir, "vmlinux"), initrd: path.join(dir, "initrd"), root: { kind: "image", path: path.join(dir, "rootfs.erofs"), bytes: 12 },
    memoryMiB: 512, vcpus: 1, accel: "tcg", tcgCacheMiB: 64, kernelParams: "", ...over,
  };
}

test("the template key follows the shape and the assets' contents", (t) => {
  const dir = scratch(t);
  const s = shape(dir);
  const k = templateKey(s);
  assert.match(k, /^[0-9a-f]{16}$/);
  assert.equal(templateKey(shape(dir)), k);
  assert.notEqual(templateKey(shape(dir, { memoryMiB: 1024 })), k);
  assert.notEqual(templateKey(shape(dir, { kernelParams: "nokaslr" })), k);
  const later = new Date(Date.now() + 10_000);
  utimesSync(s.kernel, later, later);
  assert.notEqual(templateKey(shape(dir)), k, "a rebuilt kernel is another template");
});

test("one builder per key; commit leaves only what clones need; a failure backs off", (t) => {
  const dir = scratch(t);
  const store = new TemplateStore(path.join(dir, "templates"));
  const s = shape(dir);
  const key = templateKey(s);
  assert.equal(store.ready(key), undefined);
  const build = store.claim(key, s);
  assert.ok(build);
  assert.equal(store.claim(key, s), undefined, "this process holds the lock and is alive");
  writeFileSync(build.memoryFile, "ram");
  writeFileSync(build.stateFile, "devices");
  writeFileSync(path.join(build.dir, "console.log"), "boot");
  const tpl = build.commit();
  assert.deepEqual(readdirSync(tpl.dir).sort(), ["memory", "meta.json", "ready", "state"]);
  assert.deepEqual(store.ready(key), tpl);
  assert.deepEqual(readdirSync(store.root).sort(), [key], "no lock or build dir left");

  store.discard(key, true);
  assert.equal(store.ready(key), undefined);
  assert.equal(store.failedRecently(key), true);
  assert.equal(store.claim(key, s), undefined, "no rebuild right after a failure");
  const old = new Date(Date.now() - 11 * 60_000);
  utimesSync(path.join(store.root, `${key}.failed`), old, old);
  const again = store.claim(key, s);
  assert.ok(again, "built again once the back-off passed");
  again.abandon();
  assert.equal(store.failedRecently(key), true, "an abandoned build counts as a failure");
});

test("a dead builder's lock is taken over and its QEMU killed", async (t) => {
  const dir = scratch(t);
  const store = new TemplateStore(path.join(dir, "templates"));
  const s = shape(dir);
  const key = templateKey(s);
  mkdirSync(path.join(store.root, `${key}.build`), { recursive: true });
  // A builder that is gone (pid 1's start time never matches "0"), and a process standing in for its
  // QEMU: not a qemu-system, so it must be left alone.
  writeFileSync(path.join(store.root, `${key}.lock`), "1 0\n");
  const bystander = spawn("sleep", ["30"], { stdio: "ignore" });
  t.after(() => bystander.kill("SIGKILL"));
  writeFileSync(path.join(store.root, `${key}.build`, "qemu.pid"), `${bystander.pid}\n`);
  const build = store.claim(key, s);
  assert.ok(build, "the stale lock is taken over");
  assert.equal(bystander.exitCode, null);
  assert.equal(readFileSync(path.join(store.root, `${key}.lock`), "utf8").split(" ")[0], String(process.pid));
  build.abandon();
});

test("building a template sweeps the ready templates of other assets, not other shapes", (t) => {
  const dir = scratch(t);
  const store = new TemplateStore(path.join(dir, "templates"));
  const commit = (s: TemplateShape) => {
    const b = store.claim(templateKey(s), s)!;
    writeFileSync(b.memoryFile, "");
    writeFileSync(b.stateFile, "");
    return b.commit().key;
  };
  const small = commit(shape(dir, { memoryMiB: 256 }));
  const later = new Date(Date.now() + 10_000);
  utimesSync(path.join(dir, "initrd"), later, later);
  const big = commit(shape(dir, { memoryMiB: 1024 }));
  assert.equal(store.ready(small), undefined, "made from the old initrd");
  assert.ok(store.ready(big));
  const other = commit(shape(dir, { memoryMiB: 768 }));
  assert.ok(store.ready(big), "same assets, another shape: kept");
  assert.ok(store.ready(other));
});

test("restore in the guest: clock, entropy, the shares not yet mounted, never the root", async (t) => {
  const dir = scratch(t);
  const devs = path.join(dir, "9p");
  for (const [dev, tag] of [["virtio3", "cocoon-root"], ["virtio4", "cocoon"], ["virtio5", "extra"]]) {
    mkdirSync(path.join(devs, dev!), { recursive: true });
    writeFileSync(path.join(devs, dev!, "mount_tag"), `${tag}\0`);
  }
  const env = {
    ninepDevices: devs, mountRoot: path.join(dir, "mnt"), cmdline: path.join(dir, "cmdline"), mounts: path.join(dir, "mounts"), urandom: path.join(dir, "urandom"),
  };
  writeFileSync(env.cmdline, "console=ttyS0 cocoon.root=cocoon-root cocoon.template=1\n");
  writeFileSync(env.mounts, `cocoon-root / 9p ro 0 0\nextra ${env.mountRoot}/extra 9p rw 0 0\n`);
  assert.deepEqual(unmountedShares(env), ["cocoon"]);
  const sys = new FakeSys();
  const lines: string[] = [];
  await restored({ unixTimeNs: 1_700_000_000_123_456_789n, templateMac: "", mac: "", entropy: new Uint8Array([1, 2, 3]) }, sys, new Logger("info", {}, (l) => lines.push(l)), env);
  assert.equal(sys.realtimeNs, 1_700_000_000_123_456_789n);
  assert.deepEqual([...readFileSync(env.urandom)], [1, 2, 3]);
  assert.deepEqual(sys.mounts.map((m) => [m.source, m.target, m.fstype]), [["cocoon", `${env.mountRoot}/cocoon`, "9p"]]);
  assert.ok(existsSync(`${env.mountRoot}/cocoon`));
  assert.match(lines.join(""), /restored from template/);
});

test("at most template_max ready templates are kept: the least recently used goes when another is built", (t) => {
  const dir = scratch(t);
  const store = new TemplateStore(path.join(dir, "templates"), 2);
  const commit = (memoryMiB: number) => {
    const s = shape(dir, { memoryMiB });
    const b = store.claim(templateKey(s), s)!;
    writeFileSync(b.memoryFile, "");
    writeFileSync(b.stateFile, "");
    return b.commit().key;
  };
  const a = commit(256);
  const b = commit(512);
  // a is used after b, so b is the least recently used when a third shape arrives.
  const past = new Date(Date.now() - 60_000);
  utimesSync(path.join(store.root, b, "ready"), past, past);
  assert.ok(store.ready(a));
  const c = commit(768);
  assert.ok(store.ready(a));
  assert.ok(store.ready(c));
  assert.equal(store.ready(b), undefined);
  assert.equal(readdirSync(store.root).filter((n) => /^[0-9a-f]{16}$/.test(n)).length, 2);
});
