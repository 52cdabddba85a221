// A vm pod's namespaces through containerd's CRI plugin: inside the VM the app containers share the
// sandbox's IPC and UTS namespaces (so the pod's sysctls reach them), each has a PID namespace of its
// own unless the pod shares one, and none ever sees the guest agent. What only the host can give
// (hostIPC, hostPID, bidirectional mount propagation) is refused before any VM boots.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { CriClient } from "../../src/cli/cri/client.js";
import { toCriConfigs, validatePodSpec, type CriPod } from "../../src/cli/cri/pod-spec.js";
import { removePod, startPod, type RunningPod } from "../../src/cli/lab/pod.js";
import { ContainerConfigSchema, MountPropagation } from "../../src/gen/cri/runtime/v1/api_pb.js";
import type { Containerd } from "../helpers/containerd.js";
import { qemuPids, startCriLab, stopCriLab, vmLabConfig } from "../helpers/cri.js";
import { BUSYBOX_IMAGE, pauseImage } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { repoRoot, run } from "../helpers/util.js";

const HANDLER = "cocoon";
const OUT = path.join(repoRoot, "guest", "out");
const built = existsSync(path.join(OUT, "manifest.json"));
const text = (b: Uint8Array) => Buffer.from(b).toString("utf8");
const SYSCTLS = { "kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100" };
/** What the lab's pause image runs (as `ps` shows it). */
const PAUSE = (pauseImage.cmd ?? []).join(" ");
let seq = 0;

/** `ps -o pid,args` output as [pid, args] pairs. */
function processes(ps: string): Array<[number, string]> {
  return ps.trim().split("\n").slice(1).map((l) => {
    const m = /^\s*(\d+)\s+(.*)$/.exec(l);
    assert.ok(m, `ps line ${JSON.stringify(l)}`);
    return [Number(m[1]), m[2]!.trim()];
  });
}

describe("CRI: a vm pod's namespaces", { skip: !built && "guest/out not built (run guest/build.sh)", timeout: 600_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let cri: CriClient;
  let cfgDir: string;
  /** Two containers, own PID namespaces, the pod's sysctls. */
  let own: { pod: RunningPod; config: CriPod };
  /** Two containers sharing the pod's process namespace. */
  let shared: { pod: RunningPod; config: CriPod };

  function podConfig(name: string, scripts: string[], fields: Record<string, unknown> = {}): CriPod {
    const spec = validatePodSpec({
      name: `${name}-${process.pid}-${++seq}`,
      runtimeHandler: HANDLER,
      ...fields,
      containers: scripts.map((script, i) => ({ name: `c${i}`, image: BUSYBOX_IMAGE, command: ["sh", "-c", script] })),
    });
    return toCriConfigs(spec, { logRoot: path.join(ctrd.dir, "pods") });
  }

  async function runPod(name: string, scripts: string[], fields: Record<string, unknown> = {}) {
    const config = podConfig(name, scripts, fields);
    return { pod: await startPod(cri, config, { timeoutMs: 180_000 }), config };
  }

  async function exec(containerId: string, cmd: string[]) {
    const r = await cri.execSync({ containerId, cmd, timeout: 30n }, { timeoutMs: 60_000 });
    assert.equal(r.exitCode, 0, `${cmd.join(" ")}: ${text(r.stderr)}`);
    return text(r.stdout);
  }

  /** QEMU processes of this file's pods (other test runs may have VMs of their own). */
  const ourQemus = () => qemuPids().filter((p) => {
    try {
      return readFileSync(`/proc/${p}/cmdline`, "utf8").includes(cfgDir);
    } catch {
      return false;
    }
  });

  before(async () => {
    host = await snapshotHost();
    cfgDir = mkdtempSync(path.join(os.tmpdir(), "cocoon-cfg-"));
    ({ ctrd, cri } = await startCriLab(HANDLER, path.join(cfgDir, "cocoon-vm.toml"), vmLabConfig(cfgDir), 180_000));
    own = await runPod("own-pid", ["exec sleep 6001", "exec sleep 6002"], { sysctls: SYSCTLS });
    shared = await runPod("shared-pid", ["exec sleep 7001", "exec sleep 7002"], { shareProcessNamespace: true });
  });

  after(() => stopCriLab({ ctrd, cri }, host, cfgDir));

  it("every app container sees the pod's sysctls, IPC and UTS namespaces (the sandbox's)", async () => {
    const probe = ["sh", "-c", "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/fs/mqueue/msg_max; readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts; hostname"];
    const seen = await Promise.all(own.pod.containers.map((c) => exec(c.id, probe)));
    for (const s of seen) assert.match(s, /^1\n100\nipc:\[\d+\]\nuts:\[\d+\]\n/);
    assert.equal(seen[0], seen[1], "both containers are in the same IPC and UTS namespaces");
    assert.match(seen[0]!, new RegExp(`\n${own.pod.name}\n$`));
    // The other pod, without sysctls, has the kernel's defaults: the values above were set for this pod only.
    assert.match(await exec(shared.pod.containers[0]!.id, ["cat", "/proc/sys/kernel/shm_rmid_forced", "/proc/sys/fs/mqueue/msg_max"]), /^0\n10\n$/);
  });

  it("a container with its own PID namespace sees only itself", async () => {
    for (const [i, c] of own.pod.containers.entries()) {
      const ps = processes(await exec(c.id, ["ps", "-o", "pid,args"]));
      assert.deepEqual(ps.find(([pid]) => pid === 1), [1, `sleep 600${i + 1}`]);
      assert.deepEqual(ps.map(([, args]) => args).sort(), ["ps -o pid,args", `sleep 600${i + 1}`], JSON.stringify(ps));
    }
  });

  it("with shareProcessNamespace each container sees the others and pause, never the agent", async () => {
    for (const c of shared.pod.containers) {
      const ps = processes(await exec(c.id, ["ps", "-o", "pid,args"]));
      assert.deepEqual(ps.find(([pid]) => pid === 1), [1, PAUSE], JSON.stringify(ps));
      assert.deepEqual(ps.map(([, args]) => args).sort(), [PAUSE, "ps -o pid,args", "sleep 7001", "sleep 7002"].sort(), JSON.stringify(ps));
    }
  });

  it("refuses hostIPC and hostPID pods with an error naming cocoon-runc, and leaves nothing behind", async () => {
    const snap = await snapshotHost();
    const qemus = ourQemus().length;
    await assert.rejects(runPod("host-ipc", ["sleep 1"], { hostIPC: true }), /host IPC cannot be used in vm mode.*cocoon-runc handler/s);
    await assert.rejects(runPod("host-pid", ["sleep 1"], { hostPID: true }), /host PID cannot be used in vm mode.*cocoon-runc handler/s);
    assert.equal(ourQemus().length, qemus, "no VM was started");
    await assertNoLeaks(snap, { graceMs: 15_000 });
  });

  it("refuses a container with a bidirectional mount, naming the mount; its pod carries on", async () => {
    // The CRI plugin only passes Bidirectional on for a source on a shared mount.
    const vol = path.join(cfgDir, "shared-vol");
    mkdirSync(vol);
    const sh = async (args: string[]) => assert.equal((await run(args[0]!, args.slice(1))).code, 0, args.join(" "));
    await sh(["mount", "-t", "tmpfs", "-o", "size=1m", "cocoon-test", vol]);
    try {
      await sh(["mount", "--make-shared", vol]);
      const snap = await snapshotHost();
      const config = create(ContainerConfigSchema, {
        metadata: { name: "bidi" },
        image: { image: BUSYBOX_IMAGE },
        command: ["sleep", "60"],
        logPath: "bidi/0.log",
        mounts: [{ containerPath: "/vol", hostPath: vol, propagation: MountPropagation.PROPAGATION_BIDIRECTIONAL }],
      });
      // The CRI plugin creates the task (our Create) in StartContainer.
      const { containerId } = await cri.createContainer({ podSandboxId: own.pod.id, config, sandboxConfig: own.config.sandbox });
      await assert.rejects(
        cri.startContainer({ containerId }, { timeoutMs: 120_000 }),
        new RegExp(`mount ${vol} on /vol asks for bidirectional \\(rshared\\) propagation.*cocoon-runc handler`, "s"),
      );
      await cri.removeContainer({ containerId });
      assert.equal((await exec(own.pod.containers[0]!.id, ["echo", "alive"])), "alive\n");
      await assertNoLeaks(snap, { graceMs: 15_000 });
    } finally {
      await run("umount", [vol]);
    }
  });

  it("pods are removed with their VMs", async () => {
    for (const p of [own, shared]) await removePod(cri, p.pod.id);
    assert.equal(ourQemus().length, 0);
  });
});
