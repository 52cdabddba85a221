// The rules for the shim's own state on disk: private dirs, no symlink followed, exclusive creates;
// the VM run dir claim; config values that make no sense.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

const root = mkdtempSync(path.join(os.tmpdir(), "cocoon-statefs-unit-"));
process.env["COCOON_RUN_DIR"] = path.join(root, "run");
const { assertPrivateDir, createStateFile, ensurePrivateDir, probeOnce, readCachedJson, readStateFile, writeStateFile } = await import("../../src/shim/statefs.js");
const { claimRunDir, runDirName } = await import("../../src/runtime/vm/rundir.js");
const { parseConfig, settingsFor } = await import("../../src/shim/config.js");
const { registerModes } = await import("../../src/shim/modes.js");
registerModes((await import("../../src/runtime/modes.js")).MODES);
const { FakeSys } = await import("../../src/sys/fake.js");
const { ShimError } = await import("../../src/core/errors.js");
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const dir = (name: string, mode = 0o700) => {
  const d = path.join(root, name);
  mkdirSync(d, { recursive: true });
  chmodSync(d, mode);
  return d;
};

test("a private dir: root's, no write for others, no symlink on the way", () => {
  assertPrivateDir(dir("ok"));
  assert.throws(() => assertPrivateDir(dir("group-writable", 0o770)), /writable by group or others/);
  assert.throws(() => assertPrivateDir(path.join(dir("open", 0o777), "x")), /ENOENT|not sticky/);
  mkdirSync(path.join(root, "open", "x"), { mode: 0o700 });
  assert.throws(() => assertPrivateDir(path.join(root, "open", "x")), /open is writable by group or others and not sticky/);
  const theirs = dir("theirs");
  chownSync(theirs, 65534, 65534);
  assert.throws(() => assertPrivateDir(theirs), /owned by uid 65534/);
  symlinkSync(dir("target"), path.join(root, "link"));
  assert.throws(() => assertPrivateDir(path.join(root, "link")), /is a symlink/);
  assert.throws(() => assertPrivateDir("relative/dir"), /not an absolute path/);
});

test("ensurePrivateDir makes a new dir 0700 and an old root-owned 0755 one private", () => {
  const fresh = path.join(root, "fresh", "a", "b");
  ensurePrivateDir(fresh);
  assert.equal(statSync(fresh).mode & 0o777, 0o700);
  const old = dir("old", 0o755);
  ensurePrivateDir(old);
  assert.equal(statSync(old).mode & 0o777, 0o700);
  const theirs = dir("theirs2");
  chownSync(theirs, 65534, 65534);
  assert.throws(() => ensurePrivateDir(theirs), /owned by uid 65534/);
});

test("state files: a symlink or FIFO in their place is never followed, blocked on or written through", () => {
  const d = dir("files");
  const victim = path.join(d, "victim");
  writeFileSync(victim, "precious");
  symlinkSync(victim, path.join(d, "memo"));
  assert.throws(() => readStateFile(path.join(d, "memo")), /ELOOP/);
  assert.throws(() => createStateFile(path.join(d, "memo"), "x"), /EEXIST/);
  execFileSync("mkfifo", [path.join(d, "fifo")]);
  // Would hang forever if the FIFO were opened blocking.
  assert.throws(() => readStateFile(path.join(d, "fifo")), /not a regular file/);
  assert.equal(readStateFile(path.join(d, "missing")), undefined);
  writeStateFile(path.join(d, "memo"), "new");
  assert.equal(readFileSync(victim, "utf8"), "precious");
  assert.ok(!lstatSync(path.join(d, "memo")).isSymbolicLink());
  assert.equal(readStateFile(path.join(d, "memo")), "new");
  assert.equal(statSync(path.join(d, "memo")).mode & 0o777, 0o600);
});

test("a probe runs once per cache file; a cache that is invalid, not JSON or a symlink is probed again", async () => {
  const d = path.join(dir("probe"), "state");
  const file = path.join(d, "answer.json");
  const valid = (v: { ok?: unknown }) => typeof v.ok === "boolean";
  let runs = 0;
  const probe = async () => ({ ok: ++runs === 1 });
  assert.deepEqual(await probeOnce(file, valid, probe), { ok: true });
  assert.deepEqual(await probeOnce(file, valid, probe), { ok: true }, "the cached answer");
  assert.equal(runs, 1);
  for (const bad of ['{"ok": "yes"}', "not json", "null"]) {
    writeFileSync(file, bad);
    assert.equal(readCachedJson(file, valid), undefined, bad);
    assert.deepEqual(await probeOnce(file, valid, probe), { ok: false });
  }
  rmSync(file);
  writeFileSync(path.join(d, "elsewhere.json"), '{"ok": true}');
  symlinkSync(path.join(d, "elsewhere.json"), file);
  assert.equal(readCachedJson(file, valid), undefined, "a symlink is not followed");
});

test("a VM run dir is keyed by namespace and id, and a live owner's is never taken", () => {
  const sys = new FakeSys();
  const state = dir("vmstate");
  assert.notEqual(runDirName("ns1", "pod"), runDirName("ns2", "pod"));
  assert.notEqual(runDirName("a", "bc"), runDirName("ab", "c"));
  const a = claimRunDir(sys, state, "ns1", "pod");
  const b = claimRunDir(sys, state, "ns2", "pod");
  assert.notEqual(a.runDir, b.runDir);
  writeFileSync(path.join(a.runDir, "console.log"), "running pod's");
  // This process owns it and is alive: a clash, refused, and nothing of it touched.
  assert.throws(() => claimRunDir(sys, state, "ns1", "pod"), (err: unknown) => err instanceof ShimError && err.kind === "AlreadyExists" && /pod pod in namespace ns1 already has a VM/.test(err.message));
  assert.equal(readFileSync(path.join(a.runDir, "console.log"), "utf8"), "running pod's");
  // A dead owner's leftovers are cleared.
  writeFileSync(path.join(b.runDir, "owner"), "999999999 1\n");
  const again = claimRunDir(sys, state, "ns2", "pod");
  assert.equal(again.runDir, b.runDir);
  assert.match(readFileSync(path.join(b.runDir, "owner"), "utf8"), new RegExp(`^${process.pid} `));
  assert.ok(lstatSync(again.sharedDir).isDirectory());
  assert.throws(() => claimRunDir(sys, path.join(dir("open2", 0o777), "vm"), "ns", "p"), /not sticky/);
});

test("config: numbers that make no sense and TOML syntax errors are named", () => {
  const bad = (text: string, re: RegExp) => assert.throws(() => parseConfig(text, "c.toml"), (err: unknown) => err instanceof ShimError && err.kind === "InvalidArgument" && re.test(err.message));
  bad("[vm]\ntcg_cache_mib = -5\n", /vm\.tcg_cache_mib .* must be an integer from 0 to 65536, got -5/);
  bad("[vm]\nboot_timeout_sec = -1\n", /vm\.boot_timeout_sec must be a number of seconds above 0/);
  bad("[vm]\nboot_timeout_sec = 0\n", /boot_timeout_sec/);
  bad("[vm]\nvcpus = 0\n", /vm\.vcpus must be an integer from 1/);
  bad("[vm]\nmemory_mib = 12.5\n", /vm\.memory_mib/);
  bad("[vm]\nstate_dir = \"run/vm\"\n", /vm\.state_dir must be an absolute path/);
  bad("mode = \"vm\"\n[vm]\nvcpus = = 2\n", /c\.toml:3:\d+: .*\(line 3, column \d+\)/);
  assert.equal((settingsFor(parseConfig("[vm]\ntcg_cache_mib = 0\nboot_timeout_sec = 0.5\n", "c.toml"), "vm") as { tcgCacheMiB: number }).tcgCacheMiB, 0);
});
