// vm mode: every pod is a QEMU VM with its own guest kernel. The pod's sandbox container boots the
// VM; every container of the pod then runs inside it through the guest agent. Container rootfs and
// volumes reach the guest through one shared directory; the pod network through a tap device.
import { randomBytes } from "node:crypto";
import { existsSync, rmSync, statSync } from "node:fs";
import path from "node:path";
import { alreadyExists, failedPrecondition, internal, invalidArgument, notFound, ShimError, unimplemented } from "../../shim/errors.js";
import { writeBundleState, type BundleState } from "../../shim/delete.js";
import type { CreateRequest, ExecRequest, PidInfo, ProcessRef, Runtime, RuntimeContext, Stats } from "../../shim/runtime.js";
import { ProcessIO } from "../../shim/stdio.js";
import { TtrpcClient } from "../../ttrpc/index.js";
import type { Sys } from "../../sys/types.js";
import type { Logger } from "../../shim/log.js";
import { agentApi, type AgentApi } from "./agent.js";
import type { GuestRoot, Hypervisor, VmHandle, VmSpec } from "./hypervisor.js";
import { chooseAccel } from "./kvm.js";
import { inspectPodNetwork, setupTap, teardownTap, type PodNetwork } from "./network.js";
import { refuseHostOnly } from "./refusals.js";
import { startPortForwarder, type PortForwarder } from "./portforward.js";
import { startRelay, type Relay } from "./relay.js";
import { shareContainer, unshareContainer } from "./sharedfs.js";
import { buildTemplate, connectAgent, lastLines, qemuSaid } from "./boot.js";
import { TEMPLATE_MAC } from "./qemu.js";
import { claimRunDir, releaseRunDir } from "./rundir.js";
import { TemplateStore, templateKey, type TemplateShape } from "./template.js";

/** How long a VM whose agent acknowledged Shutdown gets to power itself off before QEMU is killed. */
const POWER_OFF_GRACE_MS = 300;

export const SANDBOX_ID = "io.kubernetes.cri.sandbox-id";
const CONTAINER_TYPE = "io.kubernetes.cri.container-type";

interface Proc {
  io: ProcessIO;
  relay: Relay | undefined;
  pid: number;
  exited: boolean;
}

interface Sandbox {
  id: string;
  runDir: string;
  sharedDir: string;
  vm: VmHandle;
  client: TtrpcClient;
  agent: AgentApi;
  net: PodNetwork | undefined;
  forwarder: PortForwarder | undefined;
  containers: Set<string>;
  dead: boolean;
}

/** A pod VM whose agent is on the line, and how it came up (times are Date.now() values). */
interface Started {
  vm: VmHandle;
  client: TtrpcClient;
  how: string;
  buildMs?: number;
  spawnedAt: number;
  connectedAt: number;
}

interface Container {
  id: string;
  sandbox: Sandbox;
  bundle: string;
  init: Proc;
  execs: Map<string, Proc>;
}

export interface VmBundleState extends BundleState {
  mode: "vm";
  sandboxId: string;
  runDir: string;
  sharedDir: string;
  qemuPid: number;
  netns: string;
  iface: string;
  isSandbox: boolean;
}

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

export class VmRuntime implements Runtime {
  private sandboxes = new Map<string, Sandbox>();
  private containers = new Map<string, Container>();

  constructor(
    private readonly ctx: RuntimeContext,
    private readonly sys: Sys,
    private readonly hypervisor: Hypervisor,
    private readonly stateDir: string,
  ) {
    this.templates = new TemplateStore(path.join(stateDir, "templates"), ctx.config.vm.templateMax);
  }

  private readonly templates: TemplateStore;

  private rec(id: string): Container {
    const c = this.containers.get(id);
    if (!c) throw notFound(`container ${id}`);
    return c;
  }

  private proc(c: Container, execId: string): Proc {
    if (!execId) return c.init;
    const p = c.execs.get(execId);
    if (!p) throw notFound(`process does not exist ${execId}`);
    return p;
  }

  private live(c: Container): AgentApi {
    if (c.sandbox.dead) throw failedPrecondition(`the VM of pod ${c.sandbox.id} is gone`);
    return c.sandbox.agent;
  }

  async create(req: CreateRequest): Promise<{ pid: number }> {
    if (req.checkpoint) throw unimplemented("restoring from a checkpoint is not supported in vm mode");
    const ann = req.spec.annotations ?? {};
    const sandboxId = ann[SANDBOX_ID] ?? req.id;
    const isSandbox = ann[CONTAINER_TYPE] === "sandbox" || sandboxId === req.id;
    const namespaces = (req.spec.linux?.["namespaces"] ?? []) as Array<{ type: string; path?: string }>;
    const netNs = namespaces.find((n) => n.type === "network");
    refuseHostOnly(req.spec, isSandbox);
    let sandbox = this.sandboxes.get(sandboxId);
    if (sandbox && isSandbox) throw alreadyExists(`pod sandbox ${sandboxId} already runs in this shim`);
    let booted = false;
    if (!sandbox) {
      if (!isSandbox) throw failedPrecondition(`pod sandbox ${sandboxId} of container ${req.id} is not running in this shim`);
      sandbox = await this.bootSandbox(req.namespace, sandboxId, netNs?.path ?? "", String(req.spec["hostname"] ?? ""), podSizing(ann, this.ctx.config.vm.vcpus, this.ctx.config.vm.memoryMiB));
      booted = true;
    }
    const sb = sandbox;
    const log = this.ctx.log.child({ id: req.id, sandbox: sb.id });
    let io: ProcessIO | undefined;
    try {
      const rootfs = path.resolve(req.bundle, req.spec.root?.path ?? "rootfs");
      if (req.rootfs.length === 0 && (!existsSync(rootfs) || !statSync(rootfs).isDirectory())) {
        throw invalidArgument(`bundle ${req.bundle} has no rootfs: no mounts were given and ${rootfs} is missing`);
      }
      const guestSpec = shareContainer(this.sys, sb.sharedDir, req.id, req.rootfs, rootfs, req.spec);
      io = await ProcessIO.open({ ...req.stdio, terminal: false, stderr: req.stdio.terminal ? "" : req.stdio.stderr }, { id: req.id, namespace: req.namespace, sys: this.sys });
      const { pid } = await sb.agent.createContainer({
        containerId: req.id,
        specJson: new TextEncoder().encode(JSON.stringify(guestSpec)),
        stdio: { stdin: !!req.stdio.stdin, stdout: !!req.stdio.stdout, stderr: !!req.stdio.stderr && !req.stdio.terminal, terminal: req.stdio.terminal },
      });
      const init: Proc = { io, relay: undefined, pid, exited: false };
      init.relay = startRelay(sb.agent, req.id, "", io.takeChildFds(), !!req.stdio.stdin);
      const c: Container = { id: req.id, sandbox: sb, bundle: req.bundle, init, execs: new Map() };
      this.containers.set(req.id, c);
      sb.containers.add(req.id);
      const state: VmBundleState = {
        mode: "vm", sandboxId: sb.id, runDir: sb.runDir, sharedDir: sb.sharedDir, qemuPid: sb.vm.pid,
        netns: sb.net?.netns ?? "", iface: sb.net?.iface.name ?? "", isSandbox,
      };
      writeBundleState(req.bundle, state);
      this.watchExit(c, "", init);
      log.info("container created in VM", { pid });
      return { pid };
    } catch (err) {
      io?.close();
      try {
        unshareContainer(this.sys, sb.sharedDir, req.id);
      } catch {}
      if (booted) await this.destroySandbox(sb);
      throw err;
    }
  }

  private watchExit(c: Container, execId: string, p: Proc) {
    c.sandbox.agent.waitProcess({ containerId: c.id, execId }).then(
      async (w) => {
        if (p.exited) return;
        p.exited = true;
        // Output first, so that clients see all of it before the exit.
        await Promise.race([p.relay?.outputDone, new Promise((r) => setTimeout(r, 2000))]);
        this.ctx.events.exited({ containerId: c.id, execId }, p.pid, { status: w.exitStatus, at: new Date(Number(w.exitedAtMs) || Date.now()) });
      },
      () => {
        // The agent connection dropped: handled by the sandbox's death path.
      },
    );
  }

  private async bootSandbox(namespace: string, id: string, netnsPath: string, hostname: string, size: { vcpus: number; memoryMiB: number }): Promise<Sandbox> {
    const vmCfg = this.ctx.config.vm;
    for (const [what, p] of [["guest kernel", vmCfg.kernel], ["guest initrd", vmCfg.initrd]] as const) {
      if (!existsSync(p)) throw failedPrecondition(`${what} ${p} is missing (build it with guest/build.sh and set vm.${what === "guest kernel" ? "kernel" : "initrd"} in the Cocoon config)`);
    }
    const root = guestRoot(vmCfg.rootfs);
    const { runDir, sharedDir } = claimRunDir(this.sys, this.stateDir, namespace, id);
    const log = this.ctx.log.child({ sandbox: id });
    let net: PodNetwork | undefined;
    let vm: VmHandle | undefined;
    let client: TtrpcClient | undefined;
    let forwarder: Promise<PortForwarder | undefined> | undefined;
    try {
      if (netnsPath) {
        net = await inspectPodNetwork(netnsPath);
        if (net) await setupTap(net);
      }
      const accel = await chooseAccel(vmCfg.accel, this.stateDir, log, vmCfg.qemu, vmCfg.kernel);
      const t0 = Date.now();
      const spec: VmSpec = {
        runDir, kernel: vmCfg.kernel, initrd: vmCfg.initrd, root,
        sharedDir, vcpus: size.vcpus, memoryMiB: size.memoryMiB, accel, tcgCacheMiB: vmCfg.tcgCacheMiB, kernelParams: vmCfg.kernelParams,
        netns: net?.netns ?? (netnsPath || undefined), tap: net ? { name: net.tap, mac: net.iface.mac } : undefined,
      };
      const deadline = t0 + vmCfg.bootTimeoutSec * 1000;
      let started: Started | undefined;
      if (vmCfg.template && root?.kind === "image") started = await this.startFromTemplate(spec, deadline, net, log);
      if (!started) {
        vm = await this.hypervisor.start(spec);
        const spawnedAt = Date.now();
        started = { vm, client: await connectAgent(vm, deadline - Date.now()), how: "boot", spawnedAt, connectedAt: Date.now() };
      }
      vm = started.vm;
      client = started.client;
      const agent = agentApi(client);
      const health = await agent.health({}, { timeoutMs: Math.max(1000, deadline - Date.now()) });
      // Boot breakdown (benchmarks read it): VMM spawn, its agent socket up, agent answering; the guest
      // console log has the kernel's own timestamps in between.
      log.info("VM booted", {
        ms: Date.now() - t0, vmmSpawnMs: started.spawnedAt - t0, socketMs: started.connectedAt - t0, agentReadyMs: Date.now() - t0,
        start: started.how, templateBuildMs: started.buildMs,
        guestUptimeMs: Number(health.uptimeMs), accel, kernel: health.kernelRelease, qemuPid: vm.pid,
      });
      // Alongside the guest's network set-up; a pod without it still runs, only port-forward fails.
      if (netnsPath) {
        forwarder = startPortForwarder(netnsPath, agent, this.sys, log).catch((err) => {
          log.warn("port-forward into this pod's VM is unavailable", { err: (err as Error).message });
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
      const sb: Sandbox = { id, runDir, sharedDir, vm, client, agent, net, forwarder: await forwarder, containers: new Set(), dead: false };
      this.sandboxes.set(id, sb);
      const onDeath = () => void this.sandboxDied(sb);
      client.onClose(onDeath);
      void vm.exited.then(onDeath);
      this.watchOom(sb);
      return sb;
    } catch (err) {
      const console = vm ? tail(vm.consoleLog) : "";
      const stderr = tail(path.join(runDir, "qemu.stderr"), 5);
      await (await forwarder)?.close();
      client?.close();
      vm?.kill();
      if (vm) await Promise.race([vm.exited, new Promise((r) => setTimeout(r, 3000))]);
      if (net) await teardownTap(net.netns, net.iface.name).catch(() => undefined);
      try {
        // The guest may still be running: nothing it planted in the share is followed.
        releaseRunDir(this.sys, runDir);
      } catch {}
      if (err instanceof ShimError && !vm) throw err;
      throw internal(`VM for pod ${id} did not come up: ${(err as Error).message}\n--- qemu stderr ---\n${stderr}\n--- end of guest console ---\n${console}`, err);
    }
  }

  /**
   * A pod VM restored from the template of its shape, building the template first when there is none
   * and no other shim is building it. Undefined when the pod must boot instead (another build is under
   * way, or building or restoring failed: a template that failed to restore is dropped).
   */
  private async startFromTemplate(spec: VmSpec, deadline: number, net: PodNetwork | undefined, log: Logger): Promise<Started | undefined> {
    const vmCfg = this.ctx.config.vm;
    const shape: TemplateShape = { qemu: vmCfg.qemu, kernel: spec.kernel, initrd: spec.initrd, root: spec.root!, memoryMiB: spec.memoryMiB, vcpus: spec.vcpus, accel: spec.accel, tcgCacheMiB: spec.tcgCacheMiB, kernelParams: spec.kernelParams };
    const key = templateKey(shape);
    let how = "template";
    let buildMs: number | undefined;
    let tpl = this.templates.ready(key);
    if (!tpl) {
      const build = this.templates.claim(key, shape);
      if (!build) {
        log.info(this.templates.failedRecently(key) ? "VM template failed recently; booting this VM" : "VM template is being built by another shim; booting this VM");
        return undefined;
      }
      const t0 = Date.now();
      try {
        await buildTemplate(this.hypervisor, { ...spec, runDir: build.dir, sharedDir: path.join(build.dir, "shared"), netns: undefined, tap: undefined, template: { role: "build", memoryFile: build.memoryFile, stateFile: build.stateFile } }, deadline);
        tpl = build.commit();
        how = "template (built now)";
        buildMs = Date.now() - t0;
        log.info("VM template built", { key, ms: buildMs, dir: tpl.dir });
      } catch (err) {
        build.abandon();
        log.warn("VM template build failed; booting this VM", { err: (err as Error).message });
        return undefined;
      }
    }
    let vm: VmHandle | undefined;
    let client: TtrpcClient | undefined;
    try {
      vm = await this.hypervisor.start({ ...spec, template: { role: "clone", memoryFile: tpl.memoryFile, stateFile: tpl.stateFile } });
      const spawnedAt = Date.now();
      client = await connectAgent(vm, deadline - Date.now());
      const connectedAt = Date.now();
      await agentApi(client).restored({
        unixTimeNs: BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6)),
        templateMac: TEMPLATE_MAC, mac: net?.iface.mac ?? "", entropy: randomBytes(32),
      }, { timeoutMs: Math.max(1000, deadline - Date.now()) });
      return { vm, client, how, buildMs, spawnedAt, connectedAt };
    } catch (err) {
      client?.close();
      vm?.kill();
      if (vm) await vm.exited;
      rmSync(path.join(spec.runDir, "qmp.sock"), { force: true });
      this.templates.discard(tpl.key, true);
      log.warn("restoring the VM template failed; dropped it, booting this VM", { err: (err as Error).message, qemu: qemuSaid(spec.runDir), console: vm ? tail(vm.consoleLog, 5) : "" });
      return undefined;
    }
  }

  private watchOom(sb: Sandbox) {
    const loop = async () => {
      while (!sb.dead) {
        try {
          const ev = await sb.agent.nextOomEvent({});
          if (ev.containerId) this.ctx.events.oom(ev.containerId);
        } catch {
          return;
        }
      }
    };
    void loop();
  }

  /** QEMU died or the agent hung up: every process of the pod is gone. */
  private async sandboxDied(sb: Sandbox) {
    if (sb.dead) return;
    sb.dead = true;
    this.ctx.log.warn("VM of pod is gone", { sandbox: sb.id, console: tail(sb.vm.consoleLog, 5) });
    const now = new Date();
    for (const cid of sb.containers) {
      const c = this.containers.get(cid);
      if (!c) continue;
      for (const [execId, p] of [["", c.init] as const, ...c.execs]) {
        if (p.exited) continue;
        p.exited = true;
        p.relay?.stop();
        this.ctx.events.exited({ containerId: cid, execId }, p.pid, { status: 128 + 9, at: now });
      }
    }
    await this.destroySandbox(sb);
  }

  private async destroySandbox(sb: Sandbox) {
    sb.dead = true;
    const t0 = Date.now();
    let agentDone = false;
    try {
      await sb.agent.shutdown({}, { timeoutMs: 10_000 });
      agentDone = true;
    } catch {}
    const tAgent = Date.now();
    sb.client.close();
    // Once the agent has stopped the containers and synced, nothing in the guest needs to survive
    // (its disks are host files or tmpfs), so a slow guest power-off (3 s and more under TCG) is
    // not worth waiting for.
    await Promise.race([sb.vm.exited, new Promise((r) => setTimeout(r, agentDone ? POWER_OFF_GRACE_MS : 0))]);
    const tExit = Date.now();
    sb.vm.kill();
    await sb.vm.exited;
    this.ctx.log.info("VM stopped", { sandbox: sb.id, shutdownMs: tAgent - t0, powerOffMs: tExit - tAgent });
    for (const cid of sb.containers) {
      try {
        unshareContainer(this.sys, sb.sharedDir, cid);
      } catch {}
    }
    await sb.forwarder?.close();
    if (sb.net) await teardownTap(sb.net.netns, sb.net.iface.name).catch(() => undefined);
    try {
      releaseRunDir(this.sys, sb.runDir);
    } catch (err) {
      this.ctx.log.warn("pod's shared dir not fully cleaned up", { sandbox: sb.id, err: (err as Error).message });
    }
    this.sandboxes.delete(sb.id);
  }

  async start(ref: ProcessRef): Promise<{ pid: number }> {
    const c = this.rec(ref.containerId);
    const p = this.proc(c, ref.execId);
    const { pid } = await this.live(c).startProcess({ containerId: c.id, execId: ref.execId });
    p.pid = pid;
    return { pid };
  }

  async exec(req: ExecRequest): Promise<void> {
    const c = this.rec(req.containerId);
    const agent = this.live(c);
    const io = await ProcessIO.open({ ...req.stdio, terminal: false, stderr: req.stdio.terminal ? "" : req.stdio.stderr }, { id: req.execId, namespace: "", sys: this.sys });
    try {
      await agent.execProcess({
        containerId: c.id,
        execId: req.execId,
        processJson: new TextEncoder().encode(JSON.stringify({ ...req.process, terminal: req.stdio.terminal })),
        stdio: { stdin: !!req.stdio.stdin, stdout: !!req.stdio.stdout, stderr: !!req.stdio.stderr && !req.stdio.terminal, terminal: req.stdio.terminal },
      });
    } catch (err) {
      io.close();
      throw err;
    }
    const p: Proc = { io, relay: undefined, pid: 0, exited: false };
    p.relay = startRelay(agent, c.id, req.execId, io.takeChildFds(), !!req.stdio.stdin);
    c.execs.set(req.execId, p);
    this.watchExit(c, req.execId, p);
  }

  async kill(ref: ProcessRef, signal: number, all: boolean) {
    const c = this.rec(ref.containerId);
    if (c.sandbox.dead) throw notFound("process already finished");
    await c.sandbox.agent.signalProcess({ containerId: c.id, execId: ref.execId, signal, all });
  }

  async delete(ref: ProcessRef) {
    const c = this.rec(ref.containerId);
    const sb = c.sandbox;
    if (ref.execId) {
      const p = c.execs.get(ref.execId);
      if (!sb.dead) await sb.agent.removeProcess({ containerId: c.id, execId: ref.execId }).catch(() => undefined);
      p?.relay?.stop();
      p?.io.close();
      c.execs.delete(ref.execId);
      return;
    }
    if (!sb.dead) await sb.agent.removeContainer({ containerId: c.id }).catch(() => undefined);
    for (const p of [c.init, ...c.execs.values()]) {
      p.relay?.stop();
      p.io.close();
    }
    if (!sb.dead) unshareContainer(this.sys, sb.sharedDir, c.id);
    sb.containers.delete(c.id);
    this.containers.delete(c.id);
    // The pod's VM lives as long as its sandbox container (or, without CRI, its only container).
    if (c.id === sb.id || sb.containers.size === 0) await this.destroySandbox(sb);
  }

  async pids(containerId: string): Promise<PidInfo[]> {
    const c = this.rec(containerId);
    const r = await this.live(c).pids({ containerId });
    return r.processes.map((p) => ({ pid: p.pid, execId: p.execId }));
  }

  async pause(containerId: string) {
    await this.live(this.rec(containerId)).pause({ containerId });
  }

  async resume(containerId: string) {
    await this.live(this.rec(containerId)).resume({ containerId });
  }

  async update(containerId: string, resources: Record<string, unknown>) {
    await this.live(this.rec(containerId)).updateResources({ containerId, resourcesJson: new TextEncoder().encode(JSON.stringify(resources)) });
  }

  async stats(containerId: string): Promise<Stats> {
    const r = await this.live(this.rec(containerId)).stats({ containerId });
    return { typeUrl: r.typeUrl, value: r.value };
  }

  async resizePty(ref: ProcessRef, width: number, height: number) {
    const c = this.rec(ref.containerId);
    await this.live(c).resizeTty({ containerId: c.id, execId: ref.execId, rows: height, cols: width });
  }

  async closeStdin(ref: ProcessRef) {
    const c = this.rec(ref.containerId);
    this.proc(c, ref.execId).io.closeStdin();
  }

  async checkpoint(): Promise<void> {
    throw unimplemented("checkpoint is not supported in vm mode");
  }

  async shutdown() {
    for (const sb of [...this.sandboxes.values()]) await this.destroySandbox(sb);
  }
}
