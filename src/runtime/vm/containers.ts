// The containers of vm-mode pods: each one's processes run in its pod's VM, driven through the guest
// agent; their stdio is relayed between the agent and what containerd opened on the host.
import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { failedPrecondition, invalidArgument, notFound } from "../../core/errors.js";
import { writeBundleState, type BundleState } from "../../shim/delete.js";
import type { CreateRequest, ExecRequest, PidInfo, ProcessRef, RuntimeContext, Stats } from "../../shim/runtime.js";
import { ProcessIO } from "../../shim/stdio.js";
import type { Sys } from "../../sys/types.js";
import type { AgentApi } from "./agent.js";
import { startRelay, type Relay } from "./relay.js";
import type { Sandbox } from "./sandbox.js";
import { shareContainer, unshareContainer } from "./sharedfs.js";

/** The bundle state of a vm-mode container: what `delete` needs when the shim is gone (cleanup.ts). */
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

interface Proc {
  io: ProcessIO;
  relay: Relay | undefined;
  pid: number;
  exited: boolean;
}

interface Container {
  id: string;
  sandbox: Sandbox;
  bundle: string;
  init: Proc;
  execs: Map<string, Proc>;
}

const gone = (sb: Sandbox) => failedPrecondition(`the VM of pod ${sb.id} is gone`);

export class VmContainers {
  private readonly containers = new Map<string, Container>();

  constructor(
    private readonly ctx: RuntimeContext,
    private readonly sys: Sys,
  ) {}

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
    if (c.sandbox.dead) throw gone(c.sandbox);
    return c.sandbox.agent;
  }

  /** Creates the container in `sb`'s VM; on failure nothing of it is left (the VM itself stays). */
  async create(req: CreateRequest, sb: Sandbox, isSandbox: boolean): Promise<{ pid: number }> {
    if (sb.dead) throw gone(sb);
    const log = this.ctx.log.child({ id: req.id, sandbox: sb.id });
    let io: ProcessIO | undefined;
    try {
      const rootfs = path.resolve(req.bundle, req.spec.root?.path ?? "rootfs");
      if (req.rootfs.length === 0 && (!existsSync(rootfs) || !statSync(rootfs).isDirectory())) {
        throw invalidArgument(`bundle ${req.bundle} has no rootfs: no mounts were given and ${rootfs} is missing`);
      }
      const guestSpec = shareContainer(this.sys, sb.sharedDir, req.id, req.rootfs, rootfs, req.spec);
      io = await ProcessIO.open({ ...req.stdio, terminal: false, stderr: req.stdio.terminal ? "" : req.stdio.stderr }, { id: req.id, namespace: req.namespace, sys: this.sys });
      const agent = sb.agent;
      const { pid } = await agent.createContainer({
        containerId: req.id,
        specJson: new TextEncoder().encode(JSON.stringify(guestSpec)),
        stdio: { stdin: !!req.stdio.stdin, stdout: !!req.stdio.stdout, stderr: !!req.stdio.stderr && !req.stdio.terminal, terminal: req.stdio.terminal },
      });
      // The VM may have died meanwhile: a container registered now would never see its exit.
      if (sb.dead) throw gone(sb);
      const init: Proc = { io, relay: undefined, pid, exited: false };
      init.relay = startRelay(agent, req.id, "", io.takeChildFds(), !!req.stdio.stdin);
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
      if (sb.dead) throw failedPrecondition(`the VM of pod ${sb.id} is gone; container ${req.id} was not created (${(err as Error).message})`);
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
        // The agent connection dropped: handled by the sandbox's death path (podDied).
      },
    );
  }

  /** `sb`'s VM died: every process of its containers is gone (SIGKILL, as far as anyone can tell). */
  podDied(sb: Sandbox) {
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
    if (c.id === sb.id || sb.containers.size === 0) await sb.teardown();
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
}
