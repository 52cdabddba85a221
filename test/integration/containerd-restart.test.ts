// A killed containerd: our shim keeps its containers running and serving, and the restarted containerd
// re-attaches to it through the bundle's address file (Connect), as it does with runc-v2's shims.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { openSync, closeSync } from "node:fs";
import { canConnect } from "../../src/shim/address.js";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { startContainerd, type Containerd } from "../helpers/containerd.js";
import { BUSYBOX_IMAGE, importImage } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { repoRoot, sleep, waitFor } from "../helpers/util.js";
import { cocoonShims } from "../helpers/procfs.js";

const RT = ["--runtime", "io.containerd.cocoon.v2"];


describe("containerd killed and restarted under running Cocoon containers", { timeout: 120_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let second: ChildProcess | undefined;

  before(async () => {
    host = await snapshotHost();
    ctrd = await startContainerd({ pathPrepend: [path.join(repoRoot, "bin")] });
    await importImage(ctrd, BUSYBOX_IMAGE);
  });

  after(async () => {
    if (second && second.exitCode === null) {
      second.kill("SIGTERM");
      await new Promise((r) => second!.once("exit", r));
    }
    await ctrd?.stop();
    await assertNoLeaks(host, { harness: ctrd });
  });

  it("keeps the container running, and the new containerd re-attaches to the shim", async () => {
    const id = `survivor-${process.pid}`;
    await ctrd.ctr(["run", "-d", ...RT, BUSYBOX_IMAGE, id, "sleep", "1000"]);
    const pidBefore = (await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(id))!.split(/\s+/)[1];
    process.kill(ctrd.pid, "SIGKILL");
    await waitFor(async () => !(await canConnect(ctrd.address, 1000)), { timeoutMs: 10_000, what: "containerd gone" });
    await sleep(500);
    // The same config, root and state: containerd finds the bundle and dials the address file.
    const log = openSync(path.join(ctrd.dir, "containerd-2.log"), "a");
    second = spawn("containerd", ["--config", ctrd.configPath], { stdio: ["ignore", log, log], env: { ...process.env, PATH: `${path.join(repoRoot, "bin")}:${process.env["PATH"]}` } });
    closeSync(log);
    await waitFor(() => canConnect(ctrd.address, 1000), { timeoutMs: 15_000, what: "containerd back" });
    await waitFor(async () => /RUNNING/.test((await ctrd.ctr(["task", "ls"], { allowFail: true })).stdout.split("\n").find((l) => l.startsWith(id)) ?? ""), { timeoutMs: 15_000, what: "task re-attached" });
    const pidAfter = (await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(id))!.split(/\s+/)[1];
    assert.equal(pidAfter, pidBefore, "the same container process kept running");
    const ex = await ctrd.ctr(["task", "exec", "--exec-id", "after", id, "echo", "still-here"]);
    assert.equal(ex.stdout, "still-here\n");
    await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id]);
    await waitFor(async () => /STOPPED/.test((await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(id)) ?? ""), { timeoutMs: 10_000, what: "stopped" });
    await ctrd.ctr(["task", "rm", id]);
    await ctrd.ctr(["container", "rm", id]);
    // The re-attached shim got Delete and Shutdown from the new containerd, so it exits by itself.
    await waitFor(() => cocoonShims(ctrd.address, "daemon").length === 0, { timeoutMs: 10_000, what: "the shim to exit" });
  });
});
