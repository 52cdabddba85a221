// Processes in a pod, the same in every runtime mode (runc, vm, ...): output and exit codes, signals,
// stdin, exec with and without a TTY, kill --all. Each mode runs one long-lived pod whose sandbox
// container stays up; the cases run member containers and execs in it, as the CRI plugin would.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { Containerd } from "../helpers/containerd.js";
import { BUSYBOX_IMAGE } from "../helpers/image.js";
import { containerdForModes, modesUnderTest, podAnnotations } from "../helpers/modes.js";
import { sleep, underPty, waitFor } from "../helpers/util.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-modes-proc-"));
const modes = modesUnderTest(dir);
let seq = 0;
const uid = (name: string) => `${name}-${process.pid}-${++seq}`;
const T = 180_000;

describe("processes in a pod, in every mode", { timeout: 1_200_000 }, () => {
  const harness = containerdForModes(dir);
  let ctrd: Containerd;
  before(() => {
    ctrd = harness.ctrd();
  });
  const events = () => harness.eventLog();

  /** A ctr process we drive ourselves (stdin timing, concurrent kills); bounded by a timer. */
  function ctrChild(args: string[]) {
    const child = spawn("ctr", ["--address", ctrd.address, args[0]!, "--fifo-dir", ctrd.fifoDir, ...args.slice(1)], { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d) => (stdout += d));
    child.stderr!.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), T);
    const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
      child.on("close", (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      }));
    return { child, done };
  }

  const status = async (id: string) => (await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(`${id} `)) ?? "";

  for (const mode of modes) {
    describe(`${mode.name} mode`, () => {
      const pod = uid(`pod-${mode.name}`);
      const member = (id: string) => [...mode.rt, ...podAnnotations(pod, "container"), BUSYBOX_IMAGE, id];

      before(async () => {
        await ctrd.ctr(["run", "-d", ...mode.rt, ...podAnnotations(pod, "sandbox"), BUSYBOX_IMAGE, pod, "sleep", "100000"], { timeoutMs: T });
      });

      after(async () => {
        await ctrd.ctr(["task", "kill", "-s", "SIGKILL", pod], { allowFail: true });
        await waitFor(async () => !/RUNNING/.test(await status(pod)), { timeoutMs: 60_000, what: "pod sandbox stopped" });
        await ctrd.ctr(["task", "rm", pod], { allowFail: true, timeoutMs: 60_000 });
        await ctrd.ctr(["container", "rm", pod], { allowFail: true });
      });

      it("a container's output and exit code reach ctr; death by signal is 128+n", async () => {
        const r = await ctrd.ctr(["run", "--rm", ...member(uid("out")), "sh", "-c", "echo hello; echo err >&2; exit 3"], { allowFail: true, timeoutMs: T });
        assert.equal(r.stdout, "hello\n");
        assert.equal(r.stderr, "err\n");
        assert.equal(r.code, 3);
        const id = uid("sig");
        const fg = ctrChild(["run", "--rm", ...member(id), "sleep", "1000"]);
        await waitFor(async () => /RUNNING/.test(await status(id)), { timeoutMs: 60_000, what: "running" });
        await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id]);
        assert.equal((await fg.done).code, 137);
      });

      it("a signal reaches the container's process, which may handle it", async () => {
        const id = uid("term");
        await ctrd.ctr(["run", "-d", ...member(id), "sh", "-c", "trap 'exit 42' TERM; while true; do sleep 0.2; done"], { timeoutMs: T });
        await waitFor(async () => /RUNNING/.test(await status(id)), { timeoutMs: 60_000, what: "running" });
        await sleep(1000);
        await ctrd.ctr(["task", "kill", "-s", "SIGTERM", id]);
        await waitFor(() => events().split("\n").some((l) => l.includes("/tasks/exit") && l.includes(id) && l.includes('exit_status":42')), { timeoutMs: 60_000, what: "exit 42 after SIGTERM" });
        await ctrd.ctr(["task", "rm", id], { timeoutMs: 60_000 });
        await ctrd.ctr(["container", "rm", id]);
      });

      it("stdin passes through and its close reaches the process (CloseIO)", async () => {
        const c = ctrChild(["run", "--rm", ...member(uid("stdin")), "sh", "-c", "read a; echo got:$a; cat; echo done"]);
        // ctr sends CloseIO only once its stdin copy is set up, so the input comes a little later (as from a user).
        await sleep(mode.name === "runc" ? 1500 : 5000);
        c.child.stdin!.write("line1\n");
        await sleep(300);
        c.child.stdin!.end("rest\n");
        const r = await c.done;
        assert.equal(r.stdout, "got:line1\nrest\ndone\n");
      });

      it("exec: output, stderr, exit code; the exec id is free again afterwards; ps lists the processes", async () => {
        const r = await ctrd.ctr(["task", "exec", "--exec-id", "e1", pod, "sh", "-c", "echo out; echo err >&2; exit 4"], { allowFail: true, timeoutMs: T });
        assert.deepEqual([r.stdout, r.stderr, r.code], ["out\n", "err\n", 4]);
        const again = await ctrd.ctr(["task", "exec", "--exec-id", "e1", pod, "echo", "again"], { timeoutMs: T });
        assert.equal(again.stdout, "again\n");
        const ps = await ctrd.ctr(["task", "ps", pod]);
        assert.match(ps.stdout, /PID/);
        assert.ok(ps.stdout.trim().split("\n").length >= 2, ps.stdout);
        await waitFor(() => events().includes("/tasks/exec-started"), { timeoutMs: 10_000, what: "TaskExecStarted" });
      });

      it("exec with a TTY: the client's terminal size, a terminal on stdout", async () => {
        const r = await underPty(`stty cols 90 rows 20; ctr --address ${ctrd.address} task exec --fifo-dir ${ctrd.fifoDir} -t --exec-id ${uid("tty")} ${pod} sh -c 'sleep 2; stty size; [ -t 1 ] && echo tty-yes'`, T);
        assert.match(r, /20 90/);
        assert.match(r, /tty-yes/);
      });

      it("kill --all signals every process of the container", async () => {
        const id = uid("killall");
        await ctrd.ctr(["run", "-d", ...member(id), "sh", "-c", "sleep 1000 & sleep 1000 & wait"], { timeoutMs: T });
        await waitFor(async () => /RUNNING/.test(await status(id)), { timeoutMs: 60_000, what: "running" });
        await ctrd.ctr(["task", "kill", "--all", "-s", "SIGKILL", id]);
        await waitFor(async () => /STOPPED/.test(await status(id)), { timeoutMs: 60_000, what: "task stopped" });
        await ctrd.ctr(["task", "rm", id], { timeoutMs: 60_000 });
        await ctrd.ctr(["container", "rm", id]);
      });
    });
  }
});
