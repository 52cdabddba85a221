// VM templates through containerd and ctr: the first pod VM of a shape builds the template, later
// ones are restored from it. Each clone must come up as its own machine (clock, randomness, boot id,
// shares), a template that cannot be restored must never cost a pod its start, and templates of old
// assets must not be restored.
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, utimesSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { startContainerd, type Containerd } from "../helpers/containerd.js";
import { BUSYBOX_IMAGE, importImage } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { isAlive, listProcesses } from "../helpers/procfs.js";
import { repoRoot, waitFor } from "../helpers/util.js";
import { qemuPids } from "../helpers/cri.js";

const OUT = path.join(repoRoot, "guest", "out");
const built = existsSync(path.join(OUT, "manifest.json")) && existsSync(path.join(OUT, "rootfs.erofs"));
let seq = 0;
const uid = (name: string) => `${name}-${process.pid}-${++seq}`;

/** What a container reports about the machine it runs on. */
const PROBE = "cat /data/f; cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s";

describe("vm mode: VM templates", { skip: !built && "guest/out not built (run guest/build.sh)", timeout: 600_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let dir: string;
  let vol: string;
  let templates: string;

  const config = (name: string, kernel = `${OUT}/vmlinux`, memoryMiB = 256) => {
    const p = path.join(dir, `${name}.toml`);
    writeFileSync(p, [
      'mode = "vm"', "[vm]", `kernel = "${kernel}"`, `initrd = "${OUT}/initramfs-9p.cpio.zst"`, `rootfs = "${OUT}/rootfs.erofs"`,
      'accel = "auto"', `memory_mib = ${memoryMiB}`, "boot_timeout_sec = 120", `state_dir = "${dir}/vm"`, "",
    ].join("\n"));
    return p;
  };

  /** Runs one pod VM to completion and returns what its container printed. */
  const probe = async (cfg: string) => {
    const r = await ctrd.ctr(["run", "--rm", "--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", cfg,
      "--mount", `type=bind,src=${vol},dst=/data,options=rbind:ro`, BUSYBOX_IMAGE, uid("p"), "sh", "-c", PROBE], { allowFail: true, timeoutMs: 180_000 });
    assert.equal(r.code, 0, r.stderr);
    const [share, bootId, random, clock] = r.stdout.trim().split("\n");
    return { share, bootId, random, clock: Number(clock) };
  };
  const starts = () => [...ctrd.log().matchAll(/msg="VM booted".* start=("[^"]*"|\S+)/g)].map((m) => m[1]!.replace(/"/g, ""));
  const templateDirs = () => (existsSync(templates) ? readdirSync(templates).filter((n) => /^[0-9a-f]{16}$/.test(n)) : []);

  before(async () => {
    host = await snapshotHost();
    dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-tpl-"));
    vol = path.join(dir, "vol");
    mkdirSync(vol);
    writeFileSync(path.join(vol, "f"), "from-host\n");
    templates = path.join(dir, "vm", "templates");
    ctrd = await startContainerd({ pathPrepend: [path.join(repoRoot, "bin")] });
    await importImage(ctrd, BUSYBOX_IMAGE);
  });

  after(async () => {
    await ctrd?.stop();
    await assertNoLeaks(host, { harness: ctrd });
    rmSync(dir, { recursive: true, force: true });
  });

  it("the first pod VM builds the template; later ones are restored, each with its own clock, randomness, boot id and shares", async () => {
    const cfg = config("a");
    const first = await probe(cfg);
    assert.deepEqual(starts(), ["template (built now)"]);
    assert.equal(qemuPids().length, 0, "the template's own QEMU is gone once it is saved");
    const [key] = templateDirs();
    assert.ok(key, "a template directory");
    assert.deepEqual(readdirSync(path.join(templates, key)).sort(), ["memory", "meta.json", "ready", "state"]);
    assert.deepEqual(readdirSync(templates).filter((n) => n.endsWith(".lock") || n.endsWith(".build")), [], "no lock or build left");

    const a = await probe(cfg);
    const b = await probe(cfg);
    assert.deepEqual(starts(), ["template (built now)", "template", "template"]);
    const now = Date.now() / 1000;
    for (const p of [first, a, b]) {
      assert.equal(p.share, "from-host");
      assert.ok(Math.abs(p.clock - now) < 60, `guest clock ${p.clock} vs host ${now}`);
    }
    assert.equal(new Set([first.bootId, a.bootId, b.bootId]).size, 3, "every VM has its own boot id");
    assert.equal(new Set([first.random, a.random, b.random]).size, 3, "every VM has its own random stream");
  });

  it("a template that cannot be restored is dropped: the pod boots instead, and no QEMU is left", async () => {
    const cfg = config("a");
    const [key] = templateDirs();
    assert.ok(key);
    truncateSync(path.join(templates, key, "state"), 100);
    const before = starts().length;
    const p = await probe(cfg);
    assert.equal(p.share, "from-host");
    assert.deepEqual(starts().slice(before), ["boot"]);
    assert.match(ctrd.log(), /restoring the VM template failed; dropped it/);
    assert.deepEqual(templateDirs(), []);
    assert.ok(existsSync(path.join(templates, `${key}.failed`)), "the failure is remembered, so the next pods do not rebuild it at once");
    await probe(cfg);
    assert.deepEqual(starts().slice(before), ["boot", "boot"]);
    assert.equal(qemuPids().length, 0);
  });

  it("a template made from other assets is never restored, and is removed when the new one is built", async () => {
    const kernel = path.join(dir, "kernel", "vmlinux");
    mkdirSync(path.dirname(kernel));
    copyFileSync(`${OUT}/vmlinux`, kernel);
    const cfg = config("b", kernel);
    const before = starts().length;
    await probe(cfg);
    const [old] = templateDirs();
    assert.ok(old);
    // A rebuilt guest kernel: same path, new contents (here: a new modification time).
    const later = new Date(Date.now() + 5000);
    utimesSync(kernel, later, later);
    await probe(cfg);
    assert.deepEqual(starts().slice(before), ["template (built now)", "template (built now)"]);
    const [now] = templateDirs();
    assert.ok(now && now !== old, `a new template (${now}) replaced ${old}`);
    assert.equal(templateDirs().length, 1);
    assert.equal(readFileSync(path.join(templates, now, "meta.json"), "utf8").includes(kernel), true);
  });

  it("a shim killed while it builds a template takes the template's QEMU with it; the next pod builds it", async () => {
    const cfg = config("c", `${OUT}/vmlinux`, 288);
    const id = uid("killed");
    const run = ctrd.ctr(["run", "-d", "--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", cfg, BUSYBOX_IMAGE, id, "sleep", "100"], { allowFail: true, timeoutMs: 180_000 });
    const qemu = await waitFor(() => listProcesses().find((p) => /qemu-system/.test(p.args[0] ?? "") && p.args.some((a) => a.includes(".build/"))), { timeoutMs: 60_000, intervalMs: 50, what: "the template build's QEMU" });
    process.kill(qemu.ppid, "SIGKILL");
    await waitFor(() => !isAlive(qemu.pid), { timeoutMs: 10_000, what: `template QEMU ${qemu.pid} gone with its shim` });
    const r = await run;
    assert.notEqual(r.code, 0);
    await ctrd.ctr(["task", "rm", "-f", id], { allowFail: true });
    await ctrd.ctr(["container", "rm", id], { allowFail: true });
    assert.equal(qemuPids().length, 0);
    const before = starts().length;
    await probe(cfg);
    assert.deepEqual(starts().slice(before), ["template (built now)"], "the dead builder's lock did not block the next build");
  });
});
