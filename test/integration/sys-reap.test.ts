// Real reaping: subreaper, orphan exit statuses via waitid, peek without reaping, ECHILD.
// The subreaper scenarios run in a child node process so that the test runner itself is not changed.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";
import { sys } from "../../src/sys/index.js";

const INDEX = fileURLToPath(new URL("../../src/sys/index.js", import.meta.url));

/** Runs an ES module body (with `sys`, `spawn` and helpers in scope) in a fresh node; returns its JSON. */
function scenario(body: string): Promise<unknown> {
  const script = `
    import { sys } from ${JSON.stringify(INDEX)};
    import { spawn } from "node:child_process";
    // Starts "sh -c <cmd>" where cmd backgrounds a process and prints its pid; sh exits at once, so
    // the background process is orphaned and re-parented to us (the subreaper).
    const orphan = (cmd) => new Promise((resolve, reject) => {
      const sh = spawn("sh", ["-c", cmd + " & echo $!"], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      sh.stdout.on("data", (d) => (out += d));
      sh.on("error", reject);
      sh.on("exit", () => resolve(Number(out.trim())));
    });
    // Waits for SIGCHLD until tryReap/peekExit reports the pid.
    const waitExit = (pid, peek = false) => new Promise((resolve, reject) => {
      const check = () => {
        try {
          const st = peek ? sys.peekExit(pid) : sys.tryReap(pid);
          if (st) { off(); clearTimeout(timer); resolve(st); }
        } catch (err) { off(); clearTimeout(timer); reject(err); }
      };
      const off = sys.onSigchld(check);
      const timer = setTimeout(() => { off(); reject(new Error("no exit of " + pid)); }, 5000);
      check();
    });
    const codeOf = (fn) => { try { fn(); return "none"; } catch (err) { return err.code; } };
    ${body}`;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ["--input-type=module", "-e", script], { timeout: 15_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`scenario failed: ${err.message}\n${stderr}`));
      try {
        resolve(JSON.parse(stdout));
      } catch {
        reject(new Error(`scenario printed no JSON: ${stdout}\n${stderr}`));
      }
    });
  });
}

describe("sys reaping (real waitid)", { timeout: 30_000 }, () => {
  it("throws ECHILD for a pid that is not our child", () => {
    assert.throws(() => sys.tryReap(1), { code: "ECHILD", syscall: "waitid" });
    assert.throws(() => sys.peekExit(1), { code: "ECHILD" });
    assert.throws(() => sys.tryReap(0x3ffffff0), { code: "ECHILD" });
    assert.throws(() => sys.tryReap(0), { code: "EINVAL" });
    assert.throws(() => sys.peekExit(-1), { code: "EINVAL" });
  });

  it("collects an orphan's exit code as subreaper; peekExit leaves it for tryReap", async () => {
    const result = await scenario(`
      sys.setChildSubreaper();
      const pid = await orphan("sleep 0.3");
      const whileRunning = sys.peekExit(pid);
      const reapWhileRunning = sys.tryReap(pid);
      const peeked = await waitExit(pid, true);
      const peekedAgain = sys.peekExit(pid);
      const reaped = sys.tryReap(pid);
      const afterReap = codeOf(() => sys.tryReap(pid));
      console.log(JSON.stringify({ pid, whileRunning, reapWhileRunning, peeked, peekedAgain, reaped, afterReap }));
    `);
    const r = result as Record<string, unknown>;
    assert.equal(r.whileRunning, null);
    assert.equal(r.reapWhileRunning, null);
    const exited = { pid: r.pid, code: 0, signal: null };
    assert.deepEqual(r.peeked, exited);
    assert.deepEqual(r.peekedAgain, exited);
    assert.deepEqual(r.reaped, exited);
    assert.equal(r.afterReap, "ECHILD");
  });

  it("reports a non-zero exit code and a kill signal", async () => {
    const result = await scenario(`
      sys.setChildSubreaper();
      const seven = await orphan("(sleep 0.1; exit 7)");
      const victim = await orphan("sleep 10");
      process.kill(victim, "SIGKILL");
      const [a, b] = await Promise.all([waitExit(seven), waitExit(victim)]);
      console.log(JSON.stringify({ a, b, seven, victim }));
    `);
    const r = result as { a: unknown; b: unknown; seven: number; victim: number };
    assert.deepEqual(r.a, { pid: r.seven, code: 7, signal: null });
    assert.deepEqual(r.b, { pid: r.victim, code: null, signal: 9 });
  });

  it("peekExit on a child_process child does not take its status from libuv", async () => {
    const result = await scenario(`
      const child = spawn("sh", ["-c", "exit 5"]);
      const peeks = [];
      const off = sys.onSigchld(() => { try { peeks.push(sys.peekExit(child.pid)); } catch (e) { peeks.push(e.code); } });
      const code = await new Promise((resolve) => child.on("exit", (c) => resolve(c)));
      off();
      console.log(JSON.stringify({ code }));
    `);
    assert.deepEqual(result, { code: 5 });
  });

  it("lets the process exit by itself with a SIGCHLD listener installed", async () => {
    const started = Date.now();
    const result = await scenario(`
      sys.setChildSubreaper();
      sys.onSigchld(() => {});
      console.log(JSON.stringify({ ok: true }));
    `);
    assert.deepEqual(result, { ok: true });
    assert.ok(Date.now() - started < 5000);
  });
});
