// vm mode: every pod is a QEMU VM with its own guest kernel. The pod's sandbox container boots the
// VM (sandbox.ts); every container of the pod then runs inside it through the guest agent
// (containers.ts). Container rootfs and volumes reach the guest through one shared directory; the pod
// network through a tap device (resources.ts).
import path from "node:path";
import { alreadyExists, failedPrecondition, unimplemented } from "../../shim/errors.js";
import type { CreateRequest, ExecRequest, PidInfo, ProcessRef, Runtime, RuntimeContext, Stats } from "../../shim/runtime.js";
import type { Sys } from "../../sys/types.js";
import type { ConnectAgent } from "./agent.js";
import { connectQemuAgent } from "./boot.js";
import { VmContainers } from "./containers.js";
import type { Hypervisor } from "./hypervisor.js";
import { refuseHostOnly } from "./refusals.js";
import { hostNetworking, type PodNetworking } from "./resources.js";
import { podSizing, Sandbox, type SandboxDeps, type SandboxHooks } from "./sandbox.js";
import { TemplateStore } from "./template.js";
import type { VmConfig } from "./settings.js";

export { podSizing, guestRoot } from "./sandbox.js";
export type { VmBundleState } from "./containers.js";

export const SANDBOX_ID = "io.kubernetes.cri.sandbox-id";
const CONTAINER_TYPE = "io.kubernetes.cri.container-type";

/** What the runtime is wired to besides the hypervisor: the real agent socket and host network by default. */
export interface VmRuntimeOptions {
  connect?: ConnectAgent;
  networking?: PodNetworking;
}

export class VmRuntime implements Runtime {
  private readonly sandboxes = new Map<string, Sandbox>();
  private readonly containers: VmContainers;
  private readonly deps: SandboxDeps;
  private readonly hooks: SandboxHooks;

  constructor(
    private readonly ctx: RuntimeContext<VmConfig>,
    sys: Sys,
    hypervisor: Hypervisor,
    stateDir: string,
    opts: VmRuntimeOptions = {},
  ) {
    this.containers = new VmContainers(ctx, sys);
    this.deps = {
      config: ctx.settings, sys, hypervisor, stateDir, log: ctx.log,
      connect: opts.connect ?? connectQemuAgent,
      networking: opts.networking ?? hostNetworking,
      templates: new TemplateStore(path.join(stateDir, "templates"), ctx.settings.templateMax),
    };
    this.hooks = {
      died: (sb) => this.containers.podDied(sb),
      oom: (containerId) => ctx.events.oom(containerId),
      released: (sb) => {
        if (this.sandboxes.get(sb.id) === sb) this.sandboxes.delete(sb.id);
      },
    };
  }

  async create(req: CreateRequest): Promise<{ pid: number }> {
    if (req.checkpoint) throw unimplemented("restoring from a checkpoint is not supported in vm mode");
    const ann = req.spec.annotations ?? {};
    const sandboxId = ann[SANDBOX_ID] ?? req.id;
    const isSandbox = ann[CONTAINER_TYPE] === "sandbox" || sandboxId === req.id;
    const namespaces = (req.spec.linux?.["namespaces"] ?? []) as Array<{ type: string; path?: string }>;
    const netNs = namespaces.find((n) => n.type === "network");
    refuseHostOnly(req.spec, isSandbox);
    let sb = this.sandboxes.get(sandboxId);
    if (sb && isSandbox) throw alreadyExists(`pod sandbox ${sandboxId} already runs in this shim`);
    let booted = false;
    if (!sb) {
      if (!isSandbox) throw failedPrecondition(`pod sandbox ${sandboxId} of container ${req.id} is not running in this shim`);
      const cfg = this.ctx.settings;
      sb = await Sandbox.boot(this.deps, {
        namespace: req.namespace, id: sandboxId, netnsPath: netNs?.path ?? "", hostname: String(req.spec["hostname"] ?? ""),
        size: podSizing(ann, cfg.vcpus, cfg.memoryMiB),
      }, this.hooks);
      this.sandboxes.set(sandboxId, sb);
      booted = true;
    }
    try {
      return await this.containers.create(req, sb, isSandbox);
    } catch (err) {
      if (booted) await sb.teardown();
      throw err;
    }
  }

  start(ref: ProcessRef): Promise<{ pid: number }> {
    return this.containers.start(ref);
  }

  exec(req: ExecRequest): Promise<void> {
    return this.containers.exec(req);
  }

  kill(ref: ProcessRef, signal: number, all: boolean): Promise<void> {
    return this.containers.kill(ref, signal, all);
  }

  delete(ref: ProcessRef): Promise<void> {
    return this.containers.delete(ref);
  }

  pids(containerId: string): Promise<PidInfo[]> {
    return this.containers.pids(containerId);
  }

  pause(containerId: string): Promise<void> {
    return this.containers.pause(containerId);
  }

  resume(containerId: string): Promise<void> {
    return this.containers.resume(containerId);
  }

  update(containerId: string, resources: Record<string, unknown>): Promise<void> {
    return this.containers.update(containerId, resources);
  }

  stats(containerId: string): Promise<Stats> {
    return this.containers.stats(containerId);
  }

  resizePty(ref: ProcessRef, width: number, height: number): Promise<void> {
    return this.containers.resizePty(ref, width, height);
  }

  closeStdin(ref: ProcessRef): Promise<void> {
    return this.containers.closeStdin(ref);
  }

  async checkpoint(): Promise<void> {
    throw unimplemented("checkpoint is not supported in vm mode");
  }

  async shutdown() {
    for (const sb of [...this.sandboxes.values()]) await sb.teardown();
  }
}
