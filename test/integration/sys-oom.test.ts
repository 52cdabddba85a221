// cgroup v1 OOM notification with a real memory cgroup and a real OOM kill. Each scenario runs in a
// child node process, which also proves that watchers never keep a process alive.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";
import { randomBytes } from "node:crypto";

const INDEX = fileURLToPath(new URL("../../src/sys/index.js", import.meta.url));
const MEMORY_ROOT = "/sys/fs/cgroup/memory";
const haveV1Memory = existsSync(join(MEMORY_ROOT, "cgroup.event_control"));

/** The real interpreter (not a version-manager shim), so that the process OOM-killed is the hog itself. */
const PYTHON = haveV1Memory
  ? execFileSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" }).trim()
  : "";

interface Outcome {
  report: Record<string, unknown>;
  /** ms between the scenario's last line and its process exiting. */
  exitDelayMs: number;
  code: number | null;
}

/** sh joins the cgroup, then becomes python writing 256 MiB (bytes * n touches every page). */
function hogArgs(cg: string): string[] {
  return ["-c", 'echo $$ > "$0/cgroup.procs" && exec "$1" -c "$2"', cg, PYTHON, "a = b'x' * (256 << 20)"];
}

/** Runs a scenario (ESM body with `sys`, `cg`, `hog()`, `sleep()` in scope) in a child node. */
function scenario(cg: string, body: string, timeoutMs = 20_000): Promise<Outcome> {
  const script = `
    import { sys } from ${JSON.stringify(INDEX)};
    import { spawn } from "node:child_process";
    import { writeFileSync } from "node:fs";
    const cg = ${JSON.stringify(cg)};
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    // A process that joins the cgroup and then allocates far past its limit; resolves with its signal.
    const hog = () => new Promise((resolve) => {
      const child = spawn("sh", ${JSON.stringify(hogArgs(cg))}, { stdio: "ignore" });
      child.on("exit", (code, signal) => resolve({ code, signal }));
    });
    ${body}`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    let reportedAt = 0;
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("\n") && !reportedAt) reportedAt = Date.now();
    });
    child.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      try {
        resolve({ report: JSON.parse(out), exitDelayMs: Date.now() - reportedAt, code });
      } catch {
        reject(new Error(`scenario gave no report (exit ${code}): ${out}\n${err}`));
      }
    });
  });
}

/** Kills whatever is left in the cgroup and removes it. */
async function removeCgroup(dir: string): Promise<void> {
  for (let i = 0; i < 50 && existsSync(dir); i++) {
    for (const pid of readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n").filter(Boolean)) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        // already gone
      }
    }
    try {
      rmdirSync(dir);
    } catch {
      await new Promise((r) => setTimeout(r, 100)); // EBUSY until the killed tasks are gone
    }
  }
  assert.equal(existsSync(dir), false, `cgroup ${dir} removed`);
}

describe("sys.watchOomV1 (real cgroup v1)", { skip: !haveV1Memory && "no cgroup v1 memory controller", timeout: 60_000 }, () => {
  it("reports an OOM kill in the cgroup, and the process exits by itself after stop()", async () => {
    const cg = join(MEMORY_ROOT, `cocoon-test-${randomBytes(4).toString("hex")}`);
    try {
      const { report, exitDelayMs, code } = await scenario(
        cg,
        `
        const { mkdirSync, rmdirSync } = await import("node:fs");
        mkdirSync(cg);
        writeFileSync(cg + "/memory.limit_in_bytes", String(32 << 20));
        let ooms = 0;
        let firstOomAt = 0;
        const stop = sys.watchOomV1(cg, () => { ooms++; firstOomAt ||= Date.now(); });
        const started = Date.now();
        const hogExit = await hog();
        for (let i = 0; i < 50 && ooms === 0; i++) await sleep(100);
        stop();
        stop();
        rmdirSync(cg);
        console.log(JSON.stringify({ ooms, hogExit, oomAfterMs: firstOomAt - started }));
        `,
      );
      assert.equal(code, 0);
      assert.ok((report.ooms as number) >= 1, `onOom called (${JSON.stringify(report)})`);
      assert.deepEqual(report.hogExit, { code: null, signal: "SIGKILL" });
      assert.ok((report.oomAfterMs as number) < 5000);
      assert.ok(exitDelayMs < 2000, `exited ${exitDelayMs} ms after stop()`);
    } finally {
      await removeCgroup(cg);
    }
  });

  it("does not keep the process alive while watching, and ignores the removal of the cgroup", async () => {
    const cg = join(MEMORY_ROOT, `cocoon-test-${randomBytes(4).toString("hex")}`);
    try {
      const { report, exitDelayMs, code } = await scenario(
        cg,
        `
        const { mkdirSync, rmdirSync } = await import("node:fs");
        mkdirSync(cg);
        let ooms = 0;
        sys.watchOomV1(cg, () => ooms++);
        // Removing the cgroup makes the kernel signal the eventfd once; that must not count as an OOM.
        rmdirSync(cg);
        await sleep(300);
        console.log(JSON.stringify({ ooms }));
        // No stop(): the (now finished) watch must not hold the loop open either way.
        `,
      );
      assert.equal(code, 0);
      assert.deepEqual(report, { ooms: 0 });
      assert.ok(exitDelayMs < 2000, `exited ${exitDelayMs} ms after its last line`);
    } finally {
      await removeCgroup(cg);
    }
  });

  it("exits naturally with an active watcher that was never stopped", async () => {
    const cg = join(MEMORY_ROOT, `cocoon-test-${randomBytes(4).toString("hex")}`);
    try {
      const { mkdirSync } = await import("node:fs");
      mkdirSync(cg);
      const { report, exitDelayMs, code } = await scenario(
        cg,
        `
        sys.watchOomV1(cg, () => {});
        sys.watchOomV1(cg, () => {});
        console.log(JSON.stringify({ watching: true }));
        `,
      );
      assert.equal(code, 0);
      assert.deepEqual(report, { watching: true });
      assert.ok(exitDelayMs < 2000, `exited ${exitDelayMs} ms after its last line`);
    } finally {
      await removeCgroup(cg);
    }
  });

  it("throws for a directory that is not a memory cgroup", async () => {
    const { sys } = await import("../../src/sys/index.js");
    assert.throws(() => sys.watchOomV1("/tmp/cocoon-no-such-cgroup", () => {}), { code: "ENOENT" });
  });
});
