// The Kubernetes path on one node: containerd's CRI plugin runs pods on Cocoon's `cocoon-runc` handler, driven
// by our CRI client exactly as kubelet would drive it (RunPodSandbox, CreateContainer, ExecSync, ...).
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { CriClient } from "../../src/cli/cri/client.js";
import { toCriConfigs, validatePodSpec } from "../../src/cli/cri/pod-spec.js";
import { removeAllPods, removePod, startPod, type RunningPod } from "../../src/cli/lab/pod.js";
import type { Containerd } from "../helpers/containerd.js";
import { startCriLab } from "../helpers/cri.js";
import { BUSYBOX_IMAGE } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { repoRoot, run } from "../helpers/util.js";

const HANDLER = "cocoon-runc";
const text = (b: Uint8Array) => Buffer.from(b).toString("utf8");
let seq = 0;


/** Interface names in /proc/net/dev text. */
function interfaces(procNetDev: string): Set<string> {
  return new Set(
    procNetDev
      .split("\n")
      .slice(2)
      .map((l) => l.split(":")[0]!.trim())
      .filter(Boolean),
  );
}

describe("CRI: pods on the cocoon-runc handler", { timeout: 150_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let cri: CriClient;
  let cfgDir: string;

  interface Ctr {
    name: string;
    script: string;
  }

  async function runPod(name: string, containers: Ctr[], o: { hostNetwork?: boolean } = {}): Promise<RunningPod> {
    const spec = validatePodSpec({
      name: `${name}-${process.pid}-${++seq}`,
      runtimeHandler: HANDLER,
      hostNetwork: !!o.hostNetwork,
      containers: containers.map((c) => ({ name: c.name, image: BUSYBOX_IMAGE, command: ["sh", "-c", c.script] })),
    });
    return startPod(cri, toCriConfigs(spec, { logRoot: path.join(ctrd.dir, "pods") }), { timeoutMs: 30_000 });
  }

  async function exec(containerId: string, cmd: string[]) {
    const r = await cri.execSync({ containerId, cmd, timeout: 10n });
    return { stdout: text(r.stdout), stderr: text(r.stderr), exitCode: r.exitCode };
  }

  before(async () => {
    host = await snapshotHost();
    cfgDir = mkdtempSync(path.join(os.tmpdir(), "cocoon-cfg-"));
    ({ ctrd, cri } = await startCriLab(HANDLER, path.join(cfgDir, "cocoon-runc.toml"), `mode = "runc"\ngrouping = "pod"\n[runc]\nroot = "${cfgDir}/runc"\n`));
  });

  after(async () => {
    if (cri) {
      await removeAllPods(cri, 30_000).catch(() => {});
      cri.close();
    }
    await ctrd?.stop();
    // Containers whose shim died would still be in the OCI runtime's state; a correct shim leaves none.
    const leftovers: string[] = [];
    for (const ns of readdirSafe(path.join(cfgDir, "runc"))) {
      for (const id of readdirSafe(path.join(cfgDir, "runc", ns))) {
        leftovers.push(`runc state ${ns}/${id}`);
        await run("runc", ["--root", path.join(cfgDir, "runc", ns), "delete", "--force", id], { timeoutMs: 10_000 });
      }
    }
    if (cfgDir) rmSync(cfgDir, { recursive: true, force: true });
    assert.deepEqual(leftovers, []);
    await assertNoLeaks(host, { harness: ctrd, graceMs: 10_000 });
  });

  it("runs a hostNetwork pod in the host's network namespace", async () => {
    const podNet = await runPod("netns", [{ name: "shell", script: "exec sleep 600" }]);
    const pod = await runPod("hostnet", [{ name: "shell", script: "exec sleep 600" }], { hostNetwork: true });
    try {
      const hostBefore = interfaces(readFileSync("/proc/net/dev", "utf8"));
      const inPod = interfaces((await exec(pod.containers[0]!.id, ["cat", "/proc/net/dev"])).stdout);
      const hostAfter = interfaces(readFileSync("/proc/net/dev", "utf8"));
      // Interfaces that existed throughout (veths come and go with other pods) are all visible in the pod.
      const stable = [...hostBefore].filter((i) => hostAfter.has(i));
      assert.ok(stable.includes(ctrd.cni!.bridge), `the CNI bridge is a host interface: ${stable.join(" ")}`);
      for (const i of stable) assert.ok(inPod.has(i), `host interface ${i} visible in the hostNetwork pod (it sees ${[...inPod].join(" ")})`);
      // A pod with its own network namespace sees none of that.
      const isolated = interfaces((await exec(podNet.containers[0]!.id, ["cat", "/proc/net/dev"])).stdout);
      assert.ok(!isolated.has(ctrd.cni!.bridge), `pod network namespace has its own interfaces: ${[...isolated].join(" ")}`);
    } finally {
      await removePod(cri, pod.id);
      await removePod(cri, podNet.id);
    }
  });

  it("cocoon check prints a line for every check", async () => {
    const main = path.join(repoRoot, "dist", "js", "src", "cli", "main.js");
    const args = [main, "check", "--skip-kvm-probe", "--containerd-config", ctrd.configPath];
    const json = await run(process.execPath, [...args, "--json"], { timeoutMs: 60_000 });
    const results = JSON.parse(json.stdout) as { name: string; level: string }[];
    assert.ok(results.length >= 10, `${results.length} checks`);
    const plain = await run(process.execPath, args, { timeoutMs: 60_000 });
    const lines = plain.stdout.split("\n");
    for (const r of results) {
      assert.ok(
        lines.some((l) => new RegExp(`^(OK|WARN|FAIL)\\s+${r.name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\s`).test(l)),
        `a line for check "${r.name}" in:\n${plain.stdout}`,
      );
    }
    assert.match(plain.stdout, /\d+ ok, \d+ warning\(s\), \d+ failure\(s\)/);
  });
});

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
