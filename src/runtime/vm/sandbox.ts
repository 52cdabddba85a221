// A pod VM and everything it holds on the host: the VMM (through a Hypervisor), the connection to its
// agent, the run dir with the directory shared with the guest, the tap device and the port-forward
// listener in the pod's network namespace. However far a boot got, one routine (teardown) releases
// whatever was made, once: after a failed boot, a failed first create, the VM's death (the VMM exits
// or the agent hangs up) and a normal delete or shim shutdown.
import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { failedPrecondition, internal, ShimError } from "../../shim/errors.js";
import type { VmConfig } from "./settings.js";
import type { Logger } from "../../shim/log.js";
import type { Sys } from "../../sys/types.js";
import type { AgentApi, AgentLink, ConnectAgent } from "./agent.js";
import { lastLines } from "./boot.js";
import { startFromTemplate, type Started } from "./clone.js";
import type { GuestRoot, Hypervisor, VmHandle, VmSpec } from "./hypervisor.js";
import { chooseAccel } from "./kvm.js";
import type { PodNetwork } from "./network.js";
import type { PortForwarder } from "./portforward.js";
import type { PodNetworking } from "./resources.js";
import { claimRunDir, releaseRunDir } from "./rundir.js";
import { unshareContainer } from "./sharedfs.js";
import type { TemplateStore } from "./template.js";

/** How long a VM whose agent acknowledged Shutdown gets to power itself off before QEMU is killed. */
const POWER_OFF_GRACE_MS = 300;

/**
 * The VM is sized from the config (the guest's own needs) plus the pod's limits, which the CRI
 * plugin passes on the sandbox as annotations (sum of the containers' limits).
 */
export function podSizing(ann: Record<string, string>, baseVcpus: number, baseMiB: number): { vcpus: number; memoryMiB: number } {
  const mem = Number(ann["io.kubernetes.cri.sandbox-memory"] ?? 0);
  const quota = Number(ann["io.kubernetes.cri.sandbox-cpu-quota"] ?? 0);
  const period = Number(ann["io.kubernetes.cri.sandbox-cpu-period"] ?? 0);
  const extraCpus = quota > 0 && period > 0 ? Math.ceil(quota / period) : 0;
  return { vcpus: baseVcpus + extraCpus, memoryMiB: baseMiB + (mem > 0 ? Math.ceil(mem / (1 << 20)) : 0) };
}

/** vm.rootfs: "" (the initrd holds everything), a directory (9p) or an image file (virtio-pmem). */
export function guestRoot(p: string): GuestRoot | undefined {
  if (!p) return undefined;
  let st;
  try {
    st = statSync(p);
  } catch {
    throw failedPrecondition(`guest root ${p} is missing (build it with guest/build.sh and set vm.rootfs in the Cocoon config)`);
  }
  if (st.isDirectory()) return { kind: "dir", path: p };
  if (!st.isFile() || st.size === 0) throw failedPrecondition(`guest root ${p} is neither a directory nor a file system image`);
  return { kind: "image", path: p, bytes: st.size };
}

function tail(file: string, lines = 20): string {
  return lastLines(file, lines) ?? "(no console output)";
}

export interface SandboxDeps {
  config: VmConfig;
  sys: Sys;
  hypervisor: Hypervisor;
  connect: ConnectAgent;
  networking: PodNetworking;
  templates: TemplateStore;
  /** Where run dirs and the KVM probe cache live. */
  stateDir: string;
  log: Logger;
}

export interface SandboxRequest {
  namespace: string;
  id: string;
  /** The pod's network namespace ("" for none). */
  netnsPath: string;
  hostname: string;
  size: { vcpus: number; memoryMiB: number };
}

export interface SandboxHooks {
  /** The VM died (not torn down by us): every process in it is gone. Called once, before teardown. */
  died(sb: Sandbox): void;
  oom(containerId: string): void;
  /** Teardown finished: nothing of the sandbox is left on the host. */
  released(sb: Sandbox): void;
}

export class Sandbox {
  /** Containers that have (or had) their share in this VM. */
  readonly containers = new Set<string>();
  private vmHandle: VmHandle | undefined;
  private link: AgentLink | undefined;
  private podNet: PodNetwork | undefined;
  private forwarder: Promise<PortForwarder | undefined> | undefined;
  /** The agent answered: the VM is asked to shut down, and its stop logged, at teardown. */
  private up = false;
  private isDead = false;
  private down: Promise<void> | undefined;
  private readonly log: Logger;

  private constructor(
    readonly id: string,
    readonly runDir: string,
    readonly sharedDir: string,
    private readonly deps: SandboxDeps,
    private readonly hooks: SandboxHooks,
  ) {
    this.log = deps.log.child({ sandbox: id });
  }

  /** Boots the pod's VM; on failure nothing of it is left. */
  static async boot(deps: SandboxDeps, req: SandboxRequest, hooks: SandboxHooks): Promise<Sandbox> {
    const cfg = deps.config;
    for (const [what, p] of [["guest kernel", cfg.kernel], ["guest initrd", cfg.initrd]] as const) {
      if (!existsSync(p)) throw failedPrecondition(`${what} ${p} is missing (build it with guest/build.sh and set vm.${what === "guest kernel" ? "kernel" : "initrd"} in the Cocoon config)`);
    }
    const root = guestRoot(cfg.rootfs);
    const { runDir, sharedDir } = claimRunDir(deps.sys, deps.stateDir, req.namespace, req.id);
    const sb = new Sandbox(req.id, runDir, sharedDir, deps, hooks);
    try {
      await sb.start(req, root);
    } catch (err) {
      const vm = sb.vmHandle;
      const console = vm ? tail(vm.consoleLog) : "";
      const stderr = tail(path.join(runDir, "qemu.stderr"), 5);
      await sb.teardown();
      if (err instanceof ShimError && !vm) throw err;
      throw internal(`VM for pod ${req.id} did not come up: ${(err as Error).message}\n--- qemu stderr ---\n${stderr}\n--- end of guest console ---\n${console}`, err);
    }
    sb.watch();
    return sb;
  }

  get vm(): VmHandle {
    if (!this.vmHandle) throw internal(`pod ${this.id} has no VM`);
    return this.vmHandle;
  }

  get agent(): AgentApi {
    if (!this.link) throw internal(`pod ${this.id} has no agent`);
    return this.link.agent;
  }

  get net(): PodNetwork | undefined {
    return this.podNet;
  }

  /** The VM died or is being torn down: nothing more runs in it. */
  get dead(): boolean {
    return this.isDead;
  }

  private async start(req: SandboxRequest, root: GuestRoot | undefined) {
    const { config: cfg, networking } = this.deps;
    const { netnsPath, hostname, size } = req;
    if (netnsPath) {
      this.podNet = await networking.inspect(netnsPath);
      if (this.podNet) await networking.setupTap(this.podNet);
    }
    const net = this.podNet;
    const accel = await chooseAccel(cfg.accel, this.deps.stateDir, this.log, cfg.qemu, cfg.kernel);
    const t0 = Date.now();
    const spec: VmSpec = {
      runDir: this.runDir, kernel: cfg.kernel, initrd: cfg.initrd, root,
      sharedDir: this.sharedDir, vcpus: size.vcpus, memoryMiB: size.memoryMiB, accel, tcgCacheMiB: cfg.tcgCacheMiB, kernelParams: cfg.kernelParams,
      netns: net?.netns ?? (netnsPath || undefined), tap: net ? { name: net.tap, mac: net.iface.mac } : undefined,
    };
    const deadline = t0 + cfg.bootTimeoutSec * 1000;
    let started: Started | undefined;
    if (cfg.template && root?.kind === "image") {
      const { hypervisor, connect, templates } = this.deps;
      started = await startFromTemplate({ hypervisor, connect, templates, qemu: cfg.qemu, log: this.log }, spec, deadline, net?.iface.mac ?? "");
    }
    if (started) {
      this.vmHandle = started.vm;
      this.link = started.link;
    } else {
      const vm = (this.vmHandle = await this.deps.hypervisor.start(spec));
      const spawnedAt = Date.now();
      this.link = await this.deps.connect(vm, deadline - Date.now());
      started = { vm, link: this.link, how: "boot", spawnedAt, connectedAt: Date.now() };
    }
    const agent = this.link.agent;
    const health = await agent.health({}, { timeoutMs: Math.max(1000, deadline - Date.now()) });
    this.up = true;
    // Boot breakdown (benchmarks read it): VMM spawn, its agent socket up, agent answering; the guest
    // console log has the kernel's own timestamps in between.
    this.log.info("VM booted", {
      ms: Date.now() - t0, vmmSpawnMs: started.spawnedAt - t0, socketMs: started.connectedAt - t0, agentReadyMs: Date.now() - t0,
      start: started.how, templateBuildMs: started.buildMs,
      guestUptimeMs: Number(health.uptimeMs), accel, kernel: health.kernelRelease, qemuPid: started.vm.pid,
    });
    // Alongside the guest's network set-up; a pod without it still runs, only port-forward fails.
    if (netnsPath) {
      this.forwarder = networking.startPortForwarder(netnsPath, agent, this.deps.sys, this.log).catch((err) => {
        this.log.warn("port-forward into this pod's VM is unavailable", { err: (err as Error).message });
        return undefined;
      });
    }
    if (net || hostname) {
      await agent.setupNetwork({
        hostname,
        interfaces: net ? [{ mac: net.iface.mac, name: "eth0", addresses: net.iface.addresses.map((cidr) => ({ cidr })), mtu: net.iface.mtu }] : [],
        routes: (net?.routes ?? []).map((r) => ({ destination: r.destination, gateway: r.gateway, device: "eth0" })),
      });
    }
    await this.forwarder;
  }

  /** From now on the VMM exiting or the agent hanging up is the pod's death. */
  private watch() {
    const died = () => {
      if (this.isDead) return;
      this.isDead = true;
      this.log.warn("VM of pod is gone", { console: tail(this.vm.consoleLog, 5) });
      this.hooks.died(this);
      void this.teardown();
    };
    this.link!.onClose(died);
    void this.vm.exited.then(died);
    void this.watchOom();
  }

  private async watchOom() {
    while (!this.isDead) {
      try {
        const ev = await this.agent.nextOomEvent({});
        if (ev.containerId) this.hooks.oom(ev.containerId);
      } catch {
        return;
      }
    }
  }

  /** Releases everything the sandbox holds; every call after the first waits for the same run. */
  teardown(): Promise<void> {
    return (this.down ??= this.release());
  }

  private async release() {
    const died = this.isDead;
    this.isDead = true;
    const vm = this.vmHandle;
    const t0 = Date.now();
    let agentDone = false;
    if (this.up && !died) {
      try {
        await this.link!.agent.shutdown({}, { timeoutMs: 10_000 });
        agentDone = true;
      } catch {}
    }
    const tAgent = Date.now();
    this.link?.close();
    if (vm) {
      // Once the agent has stopped the containers and synced, nothing in the guest needs to survive
      // (its disks are host files or tmpfs), so a slow guest power-off (3 s and more under TCG) is
      // not worth waiting for.
      await Promise.race([vm.exited, new Promise((r) => setTimeout(r, agentDone ? POWER_OFF_GRACE_MS : 0))]);
      const tExit = Date.now();
      vm.kill();
      await vm.exited;
      if (this.up) this.log.info("VM stopped", { shutdownMs: tAgent - t0, powerOffMs: tExit - tAgent });
    }
    for (const cid of this.containers) {
      try {
        unshareContainer(this.deps.sys, this.sharedDir, cid);
      } catch {}
    }
    await (await this.forwarder)?.close();
    if (this.podNet) await this.deps.networking.teardownTap(this.podNet.netns, this.podNet.iface.name).catch(() => undefined);
    try {
      // The guest may still have been running: nothing it planted in the share is followed.
      releaseRunDir(this.deps.sys, this.runDir);
    } catch (err) {
      this.log.warn("pod's shared dir not fully cleaned up", { err: (err as Error).message });
    }
    this.hooks.released(this);
  }
}
