// The task state machine containerd expects from any shim: process states, exec id rules, Wait,
// and event ordering (create -> start -> exit -> delete; exec-added -> exec-started -> exit).
// Runtimes only run processes; everything containerd can observe is decided here.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  TaskCreateSchema, TaskDeleteSchema, TaskExecAddedSchema, TaskExecStartedSchema, TaskExitSchema,
  TaskOOMSchema, TaskPausedSchema, TaskResumedSchema, TaskStartSchema,
} from "../gen/containerd/events/task_pb.js";
import { alreadyExists, failedPrecondition, notFound } from "../core/errors.js";
import { ProcessLife, type ProcessStatus } from "../core/process.js";
import type { EventSink } from "./publisher.js";
import type {
  CreateRequest, ExecRequest, ExitInfo, PidInfo, ProcessRef, Runtime, Stats, Stdio,
} from "./runtime.js";

export interface ProcessState {
  id: string;
  execId: string;
  bundle: string;
  pid: number;
  status: ProcessStatus;
  stdio: Stdio;
  exitStatus: number;
  exitedAt: Date | undefined;
}

class Proc extends ProcessLife {
  /** True while Start runs: an exit seen meanwhile is held back until the start event is out. */
  starting = false;
  heldExit: { pid: number; exit: ExitInfo } | undefined;

  constructor(
    readonly containerId: string,
    readonly execId: string,
    readonly stdio: Stdio,
  ) {
    super();
  }
}

class Container {
  readonly init: Proc;
  readonly execs = new Map<string, Proc>();
  private lock: Promise<unknown> = Promise.resolve();

  constructor(
    readonly id: string,
    readonly namespace: string,
    readonly bundle: string,
    stdio: Stdio,
  ) {
    this.init = new Proc(id, "", stdio);
  }

  /** Serializes state-changing calls on one container (e.g. Delete racing Start). */
  serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lock.then(fn, fn);
    this.lock = run.catch(() => undefined);
    return run;
  }
}

/** Go's zero time, which containerd uses for "has not exited". */
export function exitedAtOrZero(d: Date | undefined) {
  return d ? timestampFromDate(d) : { seconds: -62135596800n, nanos: 0 };
}

export class TaskManager {
  private containers = new Map<string, Container>();
  private emptyListeners: Array<() => void> = [];

  constructor(
    private readonly runtime: Runtime,
    private readonly events: EventSink,
  ) {}

  get size() {
    return this.containers.size;
  }

  /** Runs fn when no container is left (used to exit the daemon after the last Shutdown). */
  onEmpty(fn: () => void) {
    this.emptyListeners.push(fn);
  }

  private container(id: string): Container {
    const c = this.containers.get(id);
    if (!c) throw notFound(`container ${id}`);
    return c;
  }

  private proc(ref: ProcessRef): Proc {
    const c = this.container(ref.containerId);
    if (!ref.execId) return c.init;
    const p = c.execs.get(ref.execId);
    if (!p) throw notFound(`process does not exist ${ref.execId}`);
    return p;
  }

  async create(req: CreateRequest): Promise<{ pid: number }> {
    if (this.containers.has(req.id)) throw alreadyExists(`container ${req.id}`);
    const c = new Container(req.id, req.namespace, req.bundle, req.stdio);
    this.containers.set(req.id, c);
    try {
      const { pid } = await c.serial(() => this.runtime.create(req));
      c.init.pid = pid;
      this.events.publish(c.namespace, "/tasks/create", TaskCreateSchema, create(TaskCreateSchema, {
        containerId: req.id,
        bundle: req.bundle,
        rootfs: req.rootfs,
        io: { stdin: req.stdio.stdin, stdout: req.stdio.stdout, stderr: req.stdio.stderr, terminal: req.stdio.terminal },
        checkpoint: req.checkpoint,
        pid,
      }));
      return { pid };
    } catch (err) {
      this.containers.delete(req.id);
      throw err;
    }
  }

  async start(ref: ProcessRef): Promise<{ pid: number }> {
    const c = this.container(ref.containerId);
    return c.serial(async () => {
      const p = this.proc(ref);
      if (p.status !== "created") throw failedPrecondition(`process ${ref.execId || ref.containerId} is already ${p.status}, cannot start`);
      if (ref.execId && c.init.status !== "running") throw failedPrecondition(`container ${c.id} is ${c.init.status}, cannot start exec`);
      p.starting = true;
      try {
        const { pid } = await this.runtime.start(ref);
        p.started(pid);
        if (ref.execId) {
          this.events.publish(c.namespace, "/tasks/exec-started", TaskExecStartedSchema,
            create(TaskExecStartedSchema, { containerId: c.id, execId: ref.execId, pid }));
        } else {
          this.events.publish(c.namespace, "/tasks/start", TaskStartSchema, create(TaskStartSchema, { containerId: c.id, pid }));
        }
        return { pid };
      } catch (err) {
        if (ref.execId) p.setExited({ status: 255, at: new Date() });
        throw err;
      } finally {
        p.starting = false;
        const held = p.heldExit;
        p.heldExit = undefined;
        if (held) this.applyExit(c, p, held.pid, held.exit);
      }
    });
  }

  /** Called by the runtime when a process exits. */
  exited(ref: ProcessRef, pid: number, exit: ExitInfo) {
    const c = this.containers.get(ref.containerId);
    if (!c) return;
    const p = ref.execId ? c.execs.get(ref.execId) : c.init;
    if (!p || p.exit) return;
    if (p.starting) {
      p.heldExit = { pid, exit };
      return;
    }
    this.applyExit(c, p, pid, exit);
  }

  oom(containerId: string) {
    const c = this.containers.get(containerId);
    if (!c) return;
    this.events.publish(c.namespace, "/tasks/oom", TaskOOMSchema, create(TaskOOMSchema, { containerId }));
  }

  private applyExit(c: Container, p: Proc, pid: number, exit: ExitInfo) {
    if (p.exit) return;
    p.setExited(exit);
    this.events.publish(c.namespace, "/tasks/exit", TaskExitSchema, create(TaskExitSchema, {
      containerId: c.id,
      id: p.execId || c.id,
      pid: pid || p.pid,
      exitStatus: exit.status,
      exitedAt: timestampFromDate(exit.at),
    }));
  }

  async exec(req: ExecRequest): Promise<void> {
    const c = this.container(req.containerId);
    return c.serial(async () => {
      if (c.execs.has(req.execId)) throw alreadyExists(`id ${req.execId}`);
      if (c.init.status === "stopped") throw failedPrecondition(`container ${c.id} is stopped, cannot exec`);
      const p = new Proc(c.id, req.execId, req.stdio);
      c.execs.set(req.execId, p);
      try {
        await this.runtime.exec(req);
      } catch (err) {
        c.execs.delete(req.execId);
        throw err;
      }
      this.events.publish(c.namespace, "/tasks/exec-added", TaskExecAddedSchema,
        create(TaskExecAddedSchema, { containerId: c.id, execId: req.execId }));
    });
  }

  state(ref: ProcessRef): ProcessState {
    const c = this.container(ref.containerId);
    const p = this.proc(ref);
    return {
      id: ref.execId || c.id,
      execId: ref.execId,
      bundle: c.bundle,
      pid: p.pid,
      status: p.status,
      stdio: p.stdio,
      exitStatus: p.exit?.status ?? 0,
      exitedAt: p.exit?.at,
    };
  }

  async kill(ref: ProcessRef, signal: number, all: boolean) {
    const p = this.proc(ref);
    if (p.status === "stopped" && !(all && !ref.execId)) throw notFound("process already finished");
    if (ref.execId && p.status === "created") throw failedPrecondition(`exec ${ref.execId} has not been started`);
    await this.runtime.kill(ref, signal, all && !ref.execId);
  }

  wait(ref: ProcessRef): Promise<ExitInfo> {
    return this.proc(ref).wait();
  }

  async delete(ref: ProcessRef): Promise<{ pid: number; exitStatus: number; exitedAt: Date | undefined }> {
    const c = this.container(ref.containerId);
    return c.serial(async () => {
      const p = this.proc(ref);
      if (p.status === "running" || p.status === "paused") {
        throw failedPrecondition(`cannot delete ${ref.execId ? "exec" : "task"} ${ref.execId || c.id}: process is ${p.status}`);
      }
      const result = { pid: p.pid, exitStatus: p.exit?.status ?? 0, exitedAt: p.exit?.at };
      if (ref.execId) {
        await this.runtime.delete(ref);
        c.execs.delete(ref.execId);
        p.abandon(notFound(`process ${ref.execId} was deleted`));
        return result;
      }
      await this.runtime.delete(ref);
      for (const e of c.execs.values()) e.abandon(notFound(`container ${c.id} was deleted`));
      this.containers.delete(c.id);
      this.events.publish(c.namespace, "/tasks/delete", TaskDeleteSchema, create(TaskDeleteSchema, {
        containerId: c.id,
        pid: result.pid,
        exitStatus: result.exitStatus,
        exitedAt: exitedAtOrZero(result.exitedAt),
      }));
      if (this.containers.size === 0) for (const fn of this.emptyListeners) fn();
      return result;
    });
  }

  pids(id: string): Promise<PidInfo[]> {
    this.container(id);
    return this.runtime.pids(id);
  }

  async pause(id: string) {
    const c = this.container(id);
    await c.serial(async () => {
      if (c.init.status !== "running") throw failedPrecondition(`container ${id} is ${c.init.status}, cannot pause`);
      await this.runtime.pause(id);
      c.init.status = "paused";
      this.events.publish(c.namespace, "/tasks/paused", TaskPausedSchema, create(TaskPausedSchema, { containerId: id }));
    });
  }

  async resume(id: string) {
    const c = this.container(id);
    await c.serial(async () => {
      if (c.init.status !== "paused") throw failedPrecondition(`container ${id} is ${c.init.status}, cannot resume`);
      await this.runtime.resume(id);
      if (c.init.status === "paused") c.init.status = "running";
      this.events.publish(c.namespace, "/tasks/resumed", TaskResumedSchema, create(TaskResumedSchema, { containerId: id }));
    });
  }

  async update(id: string, resources: Record<string, unknown>) {
    const c = this.container(id);
    if (c.init.status === "stopped") throw failedPrecondition(`container ${id} is stopped`);
    await this.runtime.update(id, resources);
  }

  stats(id: string): Promise<Stats> {
    this.container(id);
    return this.runtime.stats(id);
  }

  async resizePty(ref: ProcessRef, width: number, height: number) {
    const p = this.proc(ref);
    if (!p.stdio.terminal) return;
    await this.runtime.resizePty(ref, width, height);
  }

  async closeIO(ref: ProcessRef, stdin: boolean) {
    this.proc(ref);
    if (stdin) await this.runtime.closeStdin(ref);
  }

  async checkpoint(id: string, path: string, options: Record<string, unknown>) {
    this.container(id);
    await this.runtime.checkpoint(id, path, options);
  }

  initPid(id: string): number {
    return this.containers.get(id)?.init.pid ?? 0;
  }

  ids(): string[] {
    return [...this.containers.keys()];
  }
}
