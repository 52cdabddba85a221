// The Kubernetes path in gVisor mode: containerd's CRI plugin runs pods on the `cocoon-gvisor` handler,
// driven by our CRI client as kubelet would. A pod is one runsc sandbox that all its containers join;
// its network is runsc's netstack on the interface CNI put in the pod's network namespace.
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { CriClient } from "../../src/cli/cri/client.js";
import { toCriConfigs, validatePodSpec } from "../../src/cli/cri/pod-spec.js";
import { removePod, startPod, waitForExit, type RunningPod } from "../../src/cli/lab/pod.js";
import type { Containerd } from "../helpers/containerd.js";
import { startCriLab, stopCriLab } from "../helpers/cri.js";
import { BUSYBOX_IMAGE } from "../helpers/image.js";
import { snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { cocoonShims, listProcesses } from "../helpers/procfs.js";
import { waitFor } from "../helpers/util.js";

const HANDLER = "cocoon-gvisor";
const text = (b: Uint8Array) => Buffer.from(b).toString("utf8");
let seq = 0;

describe("CRI: pods on the cocoon-gvisor handler", { timeout: 240_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let cri: CriClient;
  let cfgDir: string;
  let root: string;

  /** runsc sandbox processes of this lab, by the sandbox (pod) id they were started for. */
  const sandboxes = () =>
    listProcesses().filter((p) => p.args[0] === "runsc-sandbox" && p.args.some((a) => a.startsWith(`--root=${root}/`))).map((p) => p.args[p.args.length - 1]!);

  async function runPod(name: string, containers: { name: string; script: string }[]): Promise<RunningPod> {
    const spec = validatePodSpec({
      name: `${name}-${process.pid}-${++seq}`,
      runtimeHandler: HANDLER,
      containers: containers.map((c) => ({ name: c.name, image: BUSYBOX_IMAGE, command: ["sh", "-c", c.script] })),
    });
    return startPod(cri, toCriConfigs(spec, { logRoot: path.join(ctrd.dir, "pods") }), { timeoutMs: 60_000 });
  }

  async function exec(containerId: string, cmd: string[]) {
    const r = await cri.execSync({ containerId, cmd, timeout: 20n });
    return { stdout: text(r.stdout), stderr: text(r.stderr), exitCode: r.exitCode };
  }

  before(async () => {
    host = await snapshotHost();
    cfgDir = mkdtempSync(path.join(os.tmpdir(), "cocoon-cfg-"));
    root = path.join(cfgDir, "runsc");
    ({ ctrd, cri } = await startCriLab(HANDLER, path.join(cfgDir, "cocoon-gvisor.toml"),
      `mode = "gvisor"\ngrouping = "pod"\n[gvisor]\nroot = "${root}"\nstate_dir = "${cfgDir}/gvisor"\n`, 60_000));
  });

  after(async () => {
    const left = readdirSafe(path.join(root, "k8s.io")).filter((f) => !f.startsWith("."));
    await stopCriLab({ ctrd, cri }, host, cfgDir);
    assert.deepEqual(left, [], "runsc state left under --root");
  });

  // Logs, exit codes, exec, stats and pod-to-pod TCP are checked for every mode in modes-cri.test.ts.
  it("a pod is one gVisor sandbox on one shim: one kernel, hostname and network for its containers; Update refused; nothing left", async () => {
    const pod = await runPod("trio", [
      { name: "talker", script: "echo out-line; echo err-line >&2; exec sleep 600" },
      { name: "burner", script: "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo burned; exec sleep 600" },
      { name: "quitter", script: "echo about to fail; exit 7" },
    ]);
    try {
      const [talker, burner, quitter] = pod.containers;
      assert.deepEqual(sandboxes(), [pod.id], "one runsc sandbox, started for the pod sandbox");
      assert.equal(cocoonShims(ctrd.address, "daemon").length, 1, "one shim daemon for the pod");
      const failed = await waitForExit(cri, quitter!.id, 20_000);
      assert.equal(failed.exitCode, 7, "a container that joined the sandbox reports its own exit (runsc wait)");

      // Every container of the pod is in the same gVisor kernel: one boot, one hostname, one network.
      assert.match((await exec(burner!.id, ["sh", "-c", "dmesg | head -1"])).stdout, /Starting gVisor/);
      assert.equal((await exec(talker!.id, ["hostname"])).stdout, `${pod.name}\n`);
      const addrs = (await exec(burner!.id, ["ip", "-o", "-4", "addr"])).stdout;
      assert.ok(addrs.includes(` ${pod.ip}/`), `pod IP ${pod.ip} on an interface in the sandbox: ${addrs}`);

      await assert.rejects(cri.updateContainerResources({ containerId: talker!.id, linux: { memoryLimitInBytes: 100n << 20n } }), /runsc has no `update`/);
    } finally {
      await removePod(cri, pod.id);
    }
    await waitFor(() => sandboxes().length === 0 || undefined, { timeoutMs: 15_000, what: "the sandbox gone with the pod" });
    assert.deepEqual(cocoonShims(ctrd.address, "daemon"), []);
  });
});

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
