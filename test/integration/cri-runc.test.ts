// The Kubernetes path on one node: containerd's CRI plugin runs pods on Cocoon's `cocoon-runc` handler, driven
// by our CRI client exactly as kubelet would drive it (RunPodSandbox, CreateContainer, ExecSync, ...).
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { CriClient } from "../../src/cli/cri/client.js";
import { toCriConfigs, validatePodSpec } from "../../src/cli/cri/pod-spec.js";
import { readContainerLog, removeAllPods, removePod, startPod, waitForExit, type RunningPod } from "../../src/cli/lab/pod.js";
import { ContainerState } from "../../src/gen/cri/runtime/v1/api_pb.js";
import type { Containerd } from "../helpers/containerd.js";
import { startCriLab } from "../helpers/cri.js";
import { BUSYBOX_IMAGE, INDEX_HTML } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { cocoonShims } from "../helpers/procfs.js";
import { repoRoot, run, waitFor } from "../helpers/util.js";

const HANDLER = "cocoon-runc";
const text = (b: Uint8Array) => Buffer.from(b).toString("utf8");
let seq = 0;

/** Cocoon daemons serving this containerd (their arguments carry its socket path); idle spares do not count. */
function shimDaemons(ctrd: Containerd): number[] {
  return cocoonShims(ctrd.address, "daemon");
}

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

  it("runs a three-container pod on one shim: logs, exec, stats, exit codes, clean removal", async () => {
    const before = await snapshotHost();
    const pod = await runPod("trio", [
      { name: "talker", script: "echo out-line; echo err-line >&2; echo 'second out'; exec sleep 600" },
      // Burns a little CPU so that the stats have something to show.
      { name: "burner", script: "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo burned; exec sleep 600" },
      { name: "quitter", script: "echo about to fail; exit 7" },
    ]);
    try {
      const [talker, burner, quitter] = pod.containers;
      assert.ok(pod.ip.startsWith(ctrd.cni!.subnet.split(".").slice(0, 3).join(".") + "."), `pod IP ${pod.ip} in ${ctrd.cni!.subnet}`);

      // One daemon serves the sandbox and all three containers.
      assert.equal(shimDaemons(ctrd).length, 1, "exactly one Cocoon shim daemon for the pod");
      const listed = await cri.listContainers({ filter: { podSandboxId: pod.id } });
      assert.equal(listed.containers.length, 3);

      const failed = await waitForExit(cri, quitter!.id, 20_000);
      assert.equal(failed.exitCode, 7);
      assert.equal(failed.reason, "Error");
      assert.equal(failed.state, ContainerState.CONTAINER_EXITED);

      // Logs come back from the CRI log files, in CRI format, with the stream of each line.
      await waitFor(() => readContainerLog(talker!.logPath).length >= 3 && readContainerLog(burner!.logPath).length >= 1, { timeoutMs: 20_000, what: "container logs" });
      const talked = readContainerLog(talker!.logPath).map((l) => `${l.stream}:${l.text}`);
      assert.deepEqual(talked.filter((l) => l.startsWith("stdout:")), ["stdout:out-line", "stdout:second out"]);
      assert.deepEqual(talked.filter((l) => l.startsWith("stderr:")), ["stderr:err-line"]);
      assert.deepEqual(readContainerLog(burner!.logPath).map((l) => l.text), ["burned"]);
      assert.deepEqual(readContainerLog(quitter!.logPath).map((l) => `${l.stream}:${l.text}`), ["stdout:about to fail"]);
      const status = await cri.containerStatus({ containerId: talker!.id });
      assert.equal(status.status?.logPath, talker!.logPath);

      const r = await exec(talker!.id, ["sh", "-c", "echo out; echo err >&2; exit 3"]);
      assert.deepEqual(r, { stdout: "out\n", stderr: "err\n", exitCode: 3 });
      const h = await exec(talker!.id, ["hostname"]);
      assert.deepEqual(h, { stdout: `${pod.name}\n`, stderr: "", exitCode: 0 });

      const { stats } = await cri.containerStats({ containerId: burner!.id });
      assert.ok((stats?.cpu?.usageCoreNanoSeconds?.value ?? 0n) > 0n, `CPU usage ${stats?.cpu?.usageCoreNanoSeconds?.value}`);
      assert.ok((stats?.memory?.workingSetBytes?.value ?? 0n) > 0n, `working set ${stats?.memory?.workingSetBytes?.value}`);
      assert.equal(shimDaemons(ctrd).length, 1, "execs and stats did not start more daemons");
    } finally {
      await removePod(cri, pod.id);
    }
    await assertNoLeaks(before, { graceMs: 10_000 });
    assert.deepEqual(shimDaemons(ctrd), []);
    // The CNI DEL ran: no address is still leased, no network namespace is left.
    const leases = readdirSafe(path.join(ctrd.cni!.ipamDir, ctrd.cni!.name)).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f));
    assert.deepEqual(leases, []);
    assert.deepEqual(readdirSafe(path.join(ctrd.state, "io.containerd.grpc.v1.cri", "netns")), []);
  });

  it("connects pods over the CNI bridge", async () => {
    const server = await runPod("web", [{ name: "httpd", script: "exec httpd -f -p 8080 -h /var/www" }]);
    const client = await runPod("client", [{ name: "shell", script: "exec sleep 600" }]);
    try {
      assert.ok(server.ip && client.ip && server.ip !== client.ip, `pod IPs ${server.ip} and ${client.ip}`);
      const shell = client.containers[0]!.id;
      const page = await waitFor(
        async () => {
          // Not wget's own -T: Debian's busybox 1.35 wget crashes on it.
          const r = await exec(shell, ["timeout", "3", "wget", "-qO-", `http://${server.ip}:8080/`]);
          return r.exitCode === 0 ? r.stdout : undefined;
        },
        { timeoutMs: 20_000, intervalMs: 200, what: `httpd on ${server.ip}:8080` },
      );
      assert.equal(page, INDEX_HTML);
    } finally {
      await removePod(cri, client.id);
      await removePod(cri, server.id);
    }
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
