// Controlling a running container, the same in every runtime mode: pause and resume (the process
// really stops and goes on), metrics, and the task events containerd publishes for them.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { before, describe, it } from "node:test";
import type { Containerd } from "../helpers/containerd.js";
import { BUSYBOX_IMAGE } from "../helpers/image.js";
import { containerdForModes, modesUnderTest, podAnnotations } from "../helpers/modes.js";
import { sleep, waitFor } from "../helpers/util.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-modes-ctl-"));
const modes = modesUnderTest(dir);
let seq = 0;
const uid = (name: string) => `${name}-${process.pid}-${++seq}`;
const T = 180_000;

/** Memory usage and pid count from `ctr task metrics --format json`, cgroup v1 or v2 shaped. */
function usage(json: string): { memory: number; pids: number } {
  const m = JSON.parse(json);
  const mem = m.memory?.usage;
  return { memory: typeof mem === "object" ? Number(mem?.usage ?? 0) : Number(mem ?? 0), pids: Number(m.pids?.current ?? 0) };
}

describe("controlling a running container, in every mode", { timeout: 1_200_000 }, () => {
  const harness = containerdForModes(dir);
  let ctrd: Containerd;
  before(() => {
    ctrd = harness.ctrd();
  });
  const events = () => harness.eventLog();

  const status = async (id: string) => (await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(`${id} `)) ?? "";

  for (const mode of modes) {
    it(`${mode.name} mode: pause stops the process and resume lets it go on; metrics; events`, async () => {
      const id = uid(`tick-${mode.name}`);
      // The loop writes its counter with a rename, so a read never sees a half-written file.
      await ctrd.ctr(["run", "-d", ...mode.rt, ...podAnnotations(id, "sandbox"), BUSYBOX_IMAGE, id, "sh", "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/tick.new; mv /tmp/tick.new /tmp/tick; sleep 0.2; done"], { timeoutMs: T });
      try {
        await waitFor(async () => /RUNNING/.test(await status(id)), { timeoutMs: 60_000, what: "running" });
        const tick = async () => Number((await ctrd.ctr(["task", "exec", "--exec-id", uid("t"), id, "cat", "/tmp/tick"], { timeoutMs: T })).stdout);
        await waitFor(async () => (await tick()) > 0, { timeoutMs: 60_000, what: "the loop to tick" });
        await ctrd.ctr(["task", "pause", id], { timeoutMs: 60_000 });
        assert.match(await status(id), /PAUSED/);
        await waitFor(() => events().includes("/tasks/paused"), { timeoutMs: 10_000, what: "TaskPaused" });
        await ctrd.ctr(["task", "resume", id], { timeoutMs: 60_000 });
        await waitFor(() => events().includes("/tasks/resumed"), { timeoutMs: 10_000, what: "TaskResumed" });
        assert.match(await status(id), /RUNNING/);
        const t1 = await tick();
        await sleep(1500);
        const t2 = await tick();
        assert.ok(t2 > t1, `the loop runs again after resume (${t1} then ${t2})`);
        const m = await ctrd.ctr(["task", "metrics", "--format", "json", id], { timeoutMs: 60_000 });
        const u = usage(m.stdout);
        assert.ok(u.memory > 0, m.stdout.slice(0, 400));
        assert.ok(u.pids >= 1, m.stdout.slice(0, 400));
      } finally {
        await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id], { allowFail: true });
        await waitFor(async () => !/RUNNING|PAUSED/.test(await status(id)), { timeoutMs: 60_000, what: "stopped" });
        await ctrd.ctr(["task", "rm", id], { allowFail: true, timeoutMs: 60_000 });
        await ctrd.ctr(["container", "rm", id], { allowFail: true });
      }
    });
  }
});
