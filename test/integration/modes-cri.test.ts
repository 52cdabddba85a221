// A pod through the CRI plugin, the same in every runtime mode: kubelet's calls (RunPodSandbox,
// CreateContainer, ExecSync, ContainerStats, ...) on each mode's RuntimeClass handler. Logs in CRI
// format, exit codes and reasons, exec, stats, one shim per pod, the pod network between pods, and a
// removal that leaves nothing (no shim, no address lease, no network namespace).
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { CriClient } from "../../src/cli/cri/client.js";
import { toCriConfigs, validatePodSpec } from "../../src/cli/cri/pod-spec.js";
import { readContainerLog, removePod, startPod, waitForExit, type RunningPod } from "../../src/cli/lab/pod.js";
import { ContainerState } from "../../src/gen/cri/runtime/v1/api_pb.js";
import type { Containerd } from "../helpers/containerd.js";
import { startCriLabWith, stopCriLab } from "../helpers/cri.js";
import { BUSYBOX_IMAGE } from "../helpers/image.js";
import { snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { criRuntimes, modesUnderTest } from "../helpers/modes.js";
import { cocoonShims } from "../helpers/procfs.js";
import { waitFor } from "../helpers/util.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-modes-cri-"));
const modes = modesUnderTest(dir, false);
const text = (b: Uint8Array) => Buffer.from(b).toString("utf8");
const readdirSafe = (d: string) => {
  try {
    return readdirSync(d);
  } catch {
    return [];
  }
};
let seq = 0;
const T = 180_000;

describe("a pod through the CRI, in every mode", { timeout: 1_200_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let cri: CriClient;

  before(async () => {
    host = await snapshotHost();
    ({ ctrd, cri } = await startCriLabWith(criRuntimes(modes), T));
  });

  after(() => stopCriLab({ ctrd, cri }, host, dir));

  async function runPod(handler: string, name: string, containers: Array<{ name: string; script: string }>): Promise<RunningPod> {
    const spec = validatePodSpec({
      name: `${name}-${process.pid}-${++seq}`,
      runtimeHandler: handler,
      containers: containers.map((c) => ({ name: c.name, image: BUSYBOX_IMAGE, command: ["sh", "-c", c.script] })),
    });
    return startPod(cri, toCriConfigs(spec, { logRoot: path.join(ctrd.dir, "pods") }), { timeoutMs: T });
  }

  async function exec(containerId: string, cmd: string[]) {
    const r = await cri.execSync({ containerId, cmd, timeout: 30n }, { timeoutMs: 60_000 });
    return { stdout: text(r.stdout), stderr: text(r.stderr), exitCode: r.exitCode };
  }

  for (const mode of modes) {
    it(`${mode.name} mode (handler ${mode.handler}): logs, exit codes, exec, stats, one shim, pods reach each other, clean removal`, async () => {
      const web = await runPod(mode.handler, "web", [
        // nc, not httpd: busybox httpd's replies do not arrive through the old runsc's host network (README, gVisor mode).
        { name: "server", script: "echo out-line; echo err-line >&2; echo 'second out'; while true; do echo pong | nc -l -p 9000 2>/dev/null; done" },
        { name: "quitter", script: "echo about to fail; exit 7" },
      ]);
      let client: RunningPod | undefined;
      try {
        const [httpd, quitter] = web.containers;
        assert.ok(web.ip.startsWith(ctrd.cni!.subnet.split(".").slice(0, 3).join(".") + "."), `pod IP ${web.ip} in ${ctrd.cni!.subnet}`);
        assert.equal(cocoonShims(ctrd.address, "daemon").length, 1, "one Cocoon shim daemon serves the pod");

        const failed = await waitForExit(cri, quitter!.id, 60_000);
        assert.equal(failed.exitCode, 7);
        assert.equal(failed.reason, "Error");
        assert.equal(failed.state, ContainerState.CONTAINER_EXITED);

        // Logs come back from the CRI log files, in CRI format, with the stream of each line.
        await waitFor(() => readContainerLog(httpd!.logPath).length >= 3 && readContainerLog(quitter!.logPath).length >= 1, { timeoutMs: 30_000, what: "container logs" });
        const talked = readContainerLog(httpd!.logPath).map((l) => `${l.stream}:${l.text}`);
        assert.deepEqual(talked.filter((l) => l.startsWith("stdout:")), ["stdout:out-line", "stdout:second out"]);
        assert.deepEqual(talked.filter((l) => l.startsWith("stderr:")), ["stderr:err-line"]);
        assert.deepEqual(readContainerLog(quitter!.logPath).map((l) => `${l.stream}:${l.text}`), ["stdout:about to fail"]);

        assert.deepEqual(await exec(httpd!.id, ["sh", "-c", "echo out; echo err >&2; exit 3"]), { stdout: "out\n", stderr: "err\n", exitCode: 3 });
        assert.deepEqual(await exec(httpd!.id, ["hostname"]), { stdout: `${web.name}\n`, stderr: "", exitCode: 0 });

        const { stats } = await cri.containerStats({ containerId: httpd!.id });
        assert.ok((stats?.memory?.workingSetBytes?.value ?? 0n) > 0n, `working set ${stats?.memory?.workingSetBytes?.value}`);
        assert.ok((stats?.cpu?.usageCoreNanoSeconds?.value ?? 0n) > 0n, `CPU usage ${stats?.cpu?.usageCoreNanoSeconds?.value}`);

        // A second pod talks TCP to the first at its pod IP, over the CNI bridge.
        client = await runPod(mode.handler, "client", [{ name: "shell", script: "exec sleep 600" }]);
        assert.notEqual(client.ip, web.ip);
        const shell = client.containers[0]!.id;
        const reply = await waitFor(async () => {
          const r = await exec(shell, ["sh", "-c", `echo ping | timeout 5 nc ${web.ip} 9000`]);
          return r.exitCode === 0 && r.stdout ? r.stdout : undefined;
        }, { timeoutMs: 60_000, intervalMs: 500, what: `the server on ${web.ip}:9000 from another pod` });
        assert.equal(reply, "pong\n");
        assert.equal(cocoonShims(ctrd.address, "daemon").length, 2, "one shim daemon per pod");
      } finally {
        if (client) await removePod(cri, client.id);
        await removePod(cri, web.id);
      }
      await waitFor(() => cocoonShims(ctrd.address, "daemon").length === 0, { timeoutMs: 30_000, what: "shim daemons to exit with their pods" });
      // The CNI DEL ran: no address is still leased, no network namespace is left.
      const leases = readdirSafe(path.join(ctrd.cni!.ipamDir, ctrd.cni!.name)).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f));
      assert.deepEqual(leases, []);
      assert.deepEqual(readdirSafe(path.join(ctrd.state, "io.containerd.grpc.v1.cri", "netns")), []);
    });
  }
});
