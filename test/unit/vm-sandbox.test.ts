// The pod VM's life on the host without QEMU or a guest: FakeHypervisor and FakeAgent stand in for
// them, FakeSys records the share's mounts (its *at calls run on a temp dir), and the pod network is
// a recorder. Whatever ends a sandbox (a failed boot, a failed first create, the VM's death, a
// delete), its VM, agent connection, tap and run dir must all be gone, released exactly once.
import { describe, it, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { FakeSys } from "../../src/sys/fake.js";
import { defaultConfig, type CocoonConfig } from "../../src/shim/config.js";
import { vmMode } from "../../src/runtime/vm/mode.js";
import type { VmConfig } from "../../src/runtime/vm/settings.js";
import { Logger, type Level } from "../../src/shim/log.js";
import { ShimError } from "../../src/shim/errors.js";
import type { CreateRequest, ExitInfo, ProcessRef, RuntimeContext } from "../../src/shim/runtime.js";
import { VmRuntime, SANDBOX_ID } from "../../src/runtime/vm/runtime.js";
import { FakeHypervisor, fakeConnector, pending, type FakeAgent } from "../../src/runtime/vm/fake.js";
import type { PodNetworking } from "../../src/runtime/vm/resources.js";
import type { PodNetwork } from "../../src/runtime/vm/network.js";
import { runDirName } from "../../src/runtime/vm/rundir.js";
import { templateKey } from "../../src/runtime/vm/template.js";

interface Line {
  level: Level;
  msg: string;
  fields: Record<string, unknown>;
}

class RecordingLogger extends Logger {
  constructor(readonly lines: Line[], private readonly fields: Record<string, unknown> = {}) {
    super("debug", fields);
  }
  override child(fields: Record<string, unknown>): Logger {
    return new RecordingLogger(this.lines, { ...this.fields, ...fields });
  }
  override log(level: Level, msg: string, fields: Record<string, unknown> = {}) {
    this.lines.push({ level, msg, fields: { ...this.fields, ...fields } });
  }
}

const NETNS = "/var/run/netns/cni-fake";

class FakeNetworking implements PodNetworking {
  readonly calls: string[] = [];
  async inspect(netns: string): Promise<PodNetwork | undefined> {
    this.calls.push(`inspect ${netns}`);
    return { netns, iface: { name: "eth0", mac: "02:00:00:00:00:01", mtu: 1500, addresses: ["10.0.0.2/24"] }, routes: [{ destination: "0.0.0.0/0", gateway: "10.0.0.1" }], tap: "tap0_cocoon" };
  }
  async setupTap(net: PodNetwork) {
    this.calls.push(`setup ${net.netns}`);
  }
  async teardownTap(netns: string, iface: string) {
    this.calls.push(`teardown ${netns} ${iface}`);
  }
  async startPortForwarder() {
    this.calls.push("forwarder");
    return { port: 40000, close: async () => void this.calls.push("forwarder closed") };
  }
  count(prefix: string) {
    return this.calls.filter((c) => c.startsWith(prefix)).length;
  }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean) {
  for (let i = 0; i < 400; i++) {
    if (cond()) return;
    await tick(5);
  }
  assert.fail(`timed out waiting for ${what}`);
}

describe("vm sandbox lifecycle (fake hypervisor and agent)", () => {
  let tmp: string;
  let stateDir: string;
  let config: CocoonConfig;
  let vm: VmConfig;
  let lines: Line[];
  let exits: Array<{ ref: ProcessRef; pid: number; exit: ExitInfo }>;
  let ooms: string[];
  let hv: FakeHypervisor;
  let net: FakeNetworking;
  let agents: FakeAgent[];
  let prepareAgent: (a: FakeAgent) => void;
  let rt: VmRuntime;

  beforeEach(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), "cocoon-sandbox-"));
    stateDir = path.join(tmp, "state");
    writeFileSync(path.join(tmp, "vmlinuz"), "k");
    writeFileSync(path.join(tmp, "initrd"), "i");
    config = defaultConfig([vmMode]);
    vm = config.settings["vm"] = { ...(config.settings["vm"] as VmConfig), kernel: path.join(tmp, "vmlinuz"), initrd: path.join(tmp, "initrd"), rootfs: "", accel: "tcg" as const, template: false, bootTimeoutSec: 5, stateDir };
    lines = [];
    exits = [];
    ooms = [];
    hv = new FakeHypervisor();
    net = new FakeNetworking();
    prepareAgent = () => {};
    const fc = fakeConnector((a) => prepareAgent(a));
    agents = fc.agents;
    const ctx: RuntimeContext<VmConfig> = {
      config,
      settings: vm,
      log: new RecordingLogger(lines),
      events: { exited: (ref, pid, exit) => exits.push({ ref, pid, exit }), oom: (id) => ooms.push(id) },
    };
    rt = new VmRuntime(ctx, new FakeSys(), hv, stateDir, { connect: fc.connect, networking: net });
  });
  afterEach(() => rmSync(tmp, { recursive: true, force: true }));

  const runDir = (sandboxId: string) => path.join(stateDir, runDirName("k8s.io", sandboxId));
  const logged = (msg: string) => lines.filter((l) => l.msg === msg);

  function request(id: string, sandboxId = id): CreateRequest {
    const bundle = path.join(tmp, "bundles", id);
    mkdirSync(path.join(bundle, "rootfs"), { recursive: true });
    const isSandbox = id === sandboxId;
    return {
      id, namespace: "k8s.io", bundle, rootfs: [], checkpoint: "",
      stdio: { stdin: "", stdout: "", stderr: "", terminal: false },
      spec: {
        root: { path: "rootfs" },
        annotations: { [SANDBOX_ID]: sandboxId, "io.kubernetes.cri.container-type": isSandbox ? "sandbox" : "container" },
        linux: { namespaces: [{ type: "network", path: NETNS }, { type: "ipc" }, { type: "pid" }] },
      },
    };
  }

  /** Everything the pod held on the host is gone, released once. */
  function assertReleased(sandboxId: string, vms = 1) {
    assert.equal(existsSync(runDir(sandboxId)), false, "run dir removed");
    assert.equal(net.count("teardown"), 1, "tap torn down once");
    assert.equal(hv.vms.length, vms);
    for (const vm of hv.vms) {
      assert.equal(vm.running, false, "no VM left running");
      assert.equal(vm.kills, 1, "VM killed once");
    }
    for (const a of agents) assert.ok(a.isClosed, "agent connection closed");
  }

  it("boots a pod: VM booted logged, bundle state written, network set up in the guest", async () => {
    const { pid } = await rt.create(request("p1"));
    assert.ok(pid > 0);
    const booted = logged("VM booted");
    assert.equal(booted.length, 1);
    assert.equal(booted[0]!.fields["start"], "boot");
    assert.equal(booted[0]!.fields["qemuPid"], hv.vms[0]!.pid);
    assert.equal(booted[0]!.fields["sandbox"], "p1");
    const state = JSON.parse(readFileSync(path.join(tmp, "bundles", "p1", readdirSync(path.join(tmp, "bundles", "p1")).find((f) => f !== "rootfs")!), "utf8"));
    assert.deepEqual({ ...state }, { mode: "vm", sandboxId: "p1", runDir: runDir("p1"), sharedDir: path.join(runDir("p1"), "shared"), qemuPid: hv.vms[0]!.pid, netns: NETNS, iface: "eth0", isSandbox: true });
    assert.equal(agents[0]!.callsOf("setupNetwork")[0].interfaces[0].mac, "02:00:00:00:00:01");
    assert.deepEqual(net.calls.slice(0, 3), [`inspect ${NETNS}`, `setup ${NETNS}`, "forwarder"]);
    await rt.delete({ containerId: "p1", execId: "" });
    assert.equal(agents[0]!.callsOf("shutdown").length, 1, "the agent was asked to shut down");
    assert.equal(logged("VM stopped").length, 1);
    assert.ok(net.calls.includes("forwarder closed"));
    assertReleased("p1");
    assert.equal(exits.length, 0, "a delete is not a death");
  });

  it("the guest's OOM events reach the container's task", async () => {
    let n = 0;
    prepareAgent = (a) => (a.answers.nextOomEvent = () => (n++ === 0 ? { containerId: "p1" } : pending()));
    await rt.create(request("p1"));
    await until("the OOM event", () => ooms.length > 0);
    assert.deepEqual(ooms, ["p1"]);
    await rt.shutdown();
    assertReleased("p1");
  });

  it("a VMM that fails to start leaves nothing: run dir removed, tap torn down", async () => {
    hv.beforeStart = () => {
      throw new Error("qemu-system-x86_64: cannot open /dev/kvm");
    };
    await assert.rejects(rt.create(request("p1")), (err: unknown) => {
      assert.ok(err instanceof ShimError);
      assert.equal(err.kind, "Internal");
      assert.match(err.message, /^VM for pod p1 did not come up: qemu-system-x86_64: cannot open \/dev\/kvm/);
      return true;
    });
    assertReleased("p1", 0);
    assert.equal(logged("VM stopped").length, 0);
    // The pod can be created again: nothing of the failed one is in the way.
    hv.beforeStart = () => {};
    await rt.create(request("p1"));
    await rt.shutdown();
  });

  it("an agent that does not answer at boot: the VM is killed and everything released", async () => {
    prepareAgent = (a) => (a.answers.health = () => Promise.reject(new Error("deadline exceeded")));
    await assert.rejects(rt.create(request("p1")), /VM for pod p1 did not come up: deadline exceeded/);
    assertReleased("p1");
    assert.equal(agents[0]!.callsOf("shutdown").length, 0, "a VM that never came up is not asked to shut down");
  });

  it("a failed first create tears the new VM down", async () => {
    prepareAgent = (a) => (a.answers.createContainer = () => Promise.reject(new ShimError("InvalidArgument", "crun: bad spec")));
    await assert.rejects(rt.create(request("p1")), (err: unknown) => err instanceof ShimError && err.kind === "InvalidArgument" && err.message === "crun: bad spec");
    assertReleased("p1");
    assert.equal(agents[0]!.callsOf("shutdown").length, 1);
  });

  it("QEMU dying while a container is created: the create fails clearly, every task of the pod exits, teardown runs once", async () => {
    await rt.create(request("p1"));
    await rt.start({ containerId: "p1", execId: "" });
    await rt.exec({ containerId: "p1", execId: "e1", stdio: { stdin: "", stdout: "", stderr: "", terminal: false }, process: { args: ["sh"] } });
    await rt.start({ containerId: "p1", execId: "e1" });
    const agent = agents[0]!;
    let createCalled!: () => void;
    const called = new Promise<void>((r) => (createCalled = r));
    agent.answers.createContainer = () => {
      createCalled();
      return pending();
    };
    const creating = rt.create(request("c2", "p1"));
    await called;
    hv.vms[0]!.exit({ code: 1, signal: null });
    await assert.rejects(creating, (err: unknown) => {
      assert.ok(err instanceof ShimError);
      assert.equal(err.kind, "FailedPrecondition");
      assert.match(err.message, /^the VM of pod p1 is gone; container c2 was not created/);
      return true;
    });
    await until("the pod released", () => !existsSync(runDir("p1")));
    assert.deepEqual(exits.map((e) => [e.ref.containerId, e.ref.execId, e.exit.status]).sort(), [["p1", "", 137], ["p1", "e1", 137]]);
    assert.equal(logged("VM of pod is gone").length, 1);
    assertReleased("p1");
    // What containerd does next: the calls fail cleanly, delete runs no second teardown.
    await assert.rejects(rt.start({ containerId: "p1", execId: "" }), (err: unknown) => err instanceof ShimError && err.kind === "FailedPrecondition");
    await assert.rejects(rt.kill({ containerId: "p1", execId: "" }, 9, false), (err: unknown) => err instanceof ShimError && err.kind === "NotFound");
    await rt.delete({ containerId: "p1", execId: "e1" });
    await rt.delete({ containerId: "p1", execId: "" });
    assert.equal(logged("VM stopped").length, 1);
    assert.equal(exits.length, 2);
    assertReleased("p1");
  });

  it("the agent hanging up is the VM's death too", async () => {
    await rt.create(request("p1"));
    agents[0]!.hangUp();
    await until("the pod released", () => !existsSync(runDir("p1")));
    assert.deepEqual(exits.map((e) => [e.ref.containerId, e.ref.execId, e.exit.status]), [["p1", "", 137]]);
    assertReleased("p1");
    assert.equal(agents[0]!.callsOf("shutdown").length, 0);
    // The sandbox is gone from the shim: the pod can run again.
    await rt.create(request("p1"));
    assert.equal(hv.vms.length, 2);
    await rt.shutdown();
  });

  it("teardown is idempotent: delete, shutdown and death together release once", async () => {
    await rt.create(request("p1"));
    await Promise.all([rt.delete({ containerId: "p1", execId: "" }), rt.shutdown(), rt.shutdown()]);
    hv.vms[0]!.exit();
    agents[0]!.hangUp();
    await tick(10);
    assert.equal(agents[0]!.callsOf("shutdown").length, 1);
    assert.equal(logged("VM stopped").length, 1);
    assert.equal(logged("VM of pod is gone").length, 0);
    assertReleased("p1");
  });

  it("a template that fails to restore is dropped and the pod boots instead", async () => {
    const image = path.join(tmp, "rootfs.erofs");
    writeFileSync(image, "image");
    Object.assign(vm, { rootfs: image, template: true });
    const cfg = vm;
    const key = templateKey({ qemu: cfg.qemu, kernel: cfg.kernel, initrd: cfg.initrd, root: { kind: "image", path: image, bytes: 5 }, memoryMiB: cfg.memoryMiB, vcpus: cfg.vcpus, accel: "tcg", tcgCacheMiB: cfg.tcgCacheMiB, kernelParams: cfg.kernelParams });
    const tplDir = path.join(stateDir, "templates", key);
    mkdirSync(tplDir, { recursive: true });
    for (const f of ["memory", "state", "ready"]) writeFileSync(path.join(tplDir, f), "");
    prepareAgent = (a) => {
      if (agents.length === 0) a.answers.restored = () => Promise.reject(new Error("guest clock jump refused"));
    };
    await rt.create(request("p1"));
    assert.equal(hv.vms.length, 2);
    assert.equal(hv.vms[0]!.spec.template?.role, "clone");
    assert.equal(hv.vms[0]!.running, false, "the failed clone is gone");
    assert.ok(agents[0]!.isClosed);
    assert.equal(hv.vms[1]!.spec.template, undefined);
    assert.equal(logged("VM booted")[0]!.fields["start"], "boot");
    assert.equal(logged("restoring the VM template failed; dropped it, booting this VM").length, 1);
    assert.equal(existsSync(tplDir), false, "the template was dropped");
    assert.ok(existsSync(path.join(stateDir, "templates", `${key}.failed`)));
    await rt.shutdown();
    assert.equal(existsSync(runDir("p1")), false);
    assert.equal(hv.vms[1]!.running, false);
  });
});
