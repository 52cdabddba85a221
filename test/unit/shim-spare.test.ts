// The spare pool's registry rules, and the launcher's own start-time function against Node's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { repoRoot } from "../helpers/util.js";

// The registry lives under COCOON_RUN_DIR, read when the modules load.
const runDir = mkdtempSync(path.join(os.tmpdir(), "cocoon-spare-unit-"));
process.env["COCOON_RUN_DIR"] = runDir;
const pool = await import("../../src/shim/spare-pool.js");
const { processStartTime } = await import("../../src/shim/fast-start.js");
process.on("exit", () => rmSync(runDir, { recursive: true, force: true }));

const LAUNCHER = path.join(repoRoot, "bin", "containerd-shim-cocoon-v2");

/** Runs one shell function of the launcher (its text between `name() {` and the closing brace). */
function launcherFunction(name: string, call: string): string {
  const text = readFileSync(LAUNCHER, "utf8");
  const start = text.indexOf(`${name}() {`);
  const end = text.indexOf("\n}\n", start);
  assert.ok(start >= 0 && end > start, `launcher defines ${name}()`);
  return execFileSync("dash", ["-c", `${text.slice(start, end + 3)}\n${call}`]).toString();
}

test("a pool key is 64 hex digits, nothing that could name another path", () => {
  assert.ok(pool.isSpareKey("0123456789abcdef".repeat(4)));
  assert.ok(!pool.isSpareKey("../etc"));
  assert.ok(!pool.isSpareKey("A".repeat(64)));
});

test("the launcher's start time of a process equals Node's (field 22 of stat, after the command name)", () => {
  assert.equal(launcherFunction("started", `started ${process.pid} && printf '%s' "$st"`), processStartTime(process.pid));
  // A command name with spaces and parentheses does not shift the fields.
  const odd = path.join(runDir, "a b) (c");
  writeFileSync(odd, "#!/bin/sh\nexec sleep 5\n", { mode: 0o755 });
  const child = execFileSync("sh", ["-c", `"$1" >/dev/null 2>&1 & echo $!`, "sh", odd]).toString().trim();
  try {
    assert.equal(launcherFunction("started", `started ${child} && printf '%s' "$st"`), processStartTime(Number(child)));
  } finally {
    process.kill(Number(child), "SIGKILL");
  }
  assert.equal(launcherFunction("started", "started 999999999 || printf gone"), "gone");
});

test("liveSpares counts idle live spares and removes what dead ones left", () => {
  const key = "a".repeat(64);
  const dir = pool.poolDir(key);
  const me = `${process.pid}-${processStartTime(process.pid)}`;
  const parent = `${process.ppid}-${processStartTime(process.ppid)}`;
  for (const n of [me, parent, "999999999-1", ".new-999999999-1"]) mkdirSync(path.join(dir, n), { recursive: true });
  writeFileSync(path.join(dir, parent, "claim"), "123\n");
  assert.deepEqual(pool.liveSpares(key), [process.pid], "a claimed spare is not idle");
  assert.ok(existsSync(path.join(dir, parent)), "a claimed live spare stays");
  assert.ok(!existsSync(path.join(dir, "999999999-1")), "a dead spare's dir is removed");
  assert.ok(!existsSync(path.join(dir, ".new-999999999-1")));
  rmSync(dir, { recursive: true, force: true });
  pool.removeEmptyPoolDirs(key);
  assert.ok(!existsSync(pool.SPARES_DIR), "empty pool dirs go");
});

test("no spare is started without a pool size, a containerd, or a live containerd", () => {
  const address = path.join(runDir, "containerd.sock");
  writeFileSync(address, "");
  const watch = pool.watchOf(process.pid)!;
  const base = { key: "b".repeat(64), want: 1, address, watch, nodeArgs: ["-e", "0"], env: {} };
  assert.equal(pool.topUpSpares({ ...base, want: 0 }), 0);
  assert.equal(pool.topUpSpares({ ...base, address: path.join(runDir, "nope.sock") }), 0);
  assert.equal(pool.topUpSpares({ ...base, watch: "999999999:1" }), 0);
  assert.equal(pool.topUpSpares({ ...base, key: "nokey" }), 0);
  assert.ok(pool.watchAlive(watch));
  assert.ok(!pool.watchAlive(`${process.pid}:1`), "a reused pid is not the watched process");
});

test("sweepSpares removes what dead spares left (boot marker, registration, empty pool) and keeps live ones", () => {
  const dead = "999999-1";
  const keyDead = "d".repeat(64);
  const keyLive = "e".repeat(64);
  mkdirSync(path.join(pool.SPARES_DIR, keyDead, dead), { recursive: true });
  writeFileSync(path.join(pool.SPARES_DIR, `${keyDead}.starting`), "999999");
  const me = `${process.pid}-${processStartTime(process.pid)}`;
  mkdirSync(path.join(pool.SPARES_DIR, keyLive, me), { recursive: true });
  writeFileSync(path.join(pool.SPARES_DIR, `${keyLive}.starting`), String(process.pid));
  pool.sweepSpares();
  assert.equal(existsSync(path.join(pool.SPARES_DIR, keyDead)), false);
  assert.equal(existsSync(path.join(pool.SPARES_DIR, `${keyDead}.starting`)), false);
  assert.equal(existsSync(path.join(pool.SPARES_DIR, keyLive, me)), true);
  assert.equal(existsSync(path.join(pool.SPARES_DIR, `${keyLive}.starting`)), true);
  rmSync(path.join(pool.SPARES_DIR, keyLive), { recursive: true, force: true });
  rmSync(path.join(pool.SPARES_DIR, `${keyLive}.starting`), { force: true });
});

test("sweepDeadDaemons drops records of dead daemons and memos no live daemon backs, but not fresh memos", async () => {
  const { sweepDeadDaemons, recordDaemon, rememberStart, RUN_DIR } = await import("../../src/shim/fast-start.js");
  const { utimesSync } = await import("node:fs");
  const liveSock = "/run/containerd/s/live-sock";
  recordDaemon(liveSock); // this process: alive
  mkdirSync(path.join(RUN_DIR, "daemons"), { recursive: true });
  writeFileSync(path.join(RUN_DIR, "daemons", "dead-sock"), "999999 1 /run/containerd/s/dead-sock");
  writeFileSync(path.join(RUN_DIR, "daemons", "old-format"), "999998");
  rememberStart("k-live", `unix://${liveSock}`);
  rememberStart("k-dead", "unix:///run/containerd/s/dead-sock");
  rememberStart("k-fresh", "unix:///run/containerd/s/booting-sock");
  const old = new Date(Date.now() - 60_000);
  for (const k of ["k-live", "k-dead"]) utimesSync(path.join(RUN_DIR, "start-cache", k), old, old);
  sweepDeadDaemons();
  const has = (...p: string[]) => existsSync(path.join(RUN_DIR, ...p));
  assert.equal(has("daemons", "live-sock"), true);
  assert.equal(has("daemons", "dead-sock"), false);
  assert.equal(has("daemons", "old-format"), false);
  assert.equal(has("start-cache", "k-live"), true);
  assert.equal(has("start-cache", "k-dead"), false);
  assert.equal(has("start-cache", "k-fresh"), true, "a memo whose daemon may still be booting stays");
});
