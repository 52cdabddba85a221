// Containers of the pod, run by crun inside the guest. Bundles live in /run/cocoon/<id>/; container
// processes are re-parented to the agent (PID 1), whose reaper reports their exits.
import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Reaper } from "../sys/reaper.js";
import type { Sys } from "../sys/types.js";
import { Cgroup, type EncodedMetrics } from "../core/cgroups.js";
import { alreadyExists, failedPrecondition, invalidArgument, notFound, errorText } from "../core/errors.js";
import { launchProcess } from "../core/launch.js";
import type { Logger } from "../core/log.js";
import type { OciCli } from "../core/oci-cli.js";
import { watchOom } from "../core/oom.js";
import { signalPid, type ExitInfo } from "../core/process.js";
import type { OomEvents } from "./oom.js";
import { AgentProcess } from "./process.js";
import { cgroupPathOf, guestProcess, guestSpec, parseJsonObject } from "./spec.js";
import { ProcessStdio } from "./stdio.js";
import type { StdioFlags, StreamName } from "./stdio.js";

export const BUNDLE_ROOT = "/run/cocoon";

interface Exec {
  proc: AgentProcess;
  /** The OCI process, kept until StartProcess hands it to `crun exec`. */
  process: Record<string, unknown>;
  terminal: boolean;
  starting: boolean;
}

interface Container {
  id: string;
  bundle: string;
  /** Its status is the container's. */
  init: AgentProcess;
  cgroup: Cgroup;
  execs: Map<string, Exec>;
  stopOom: () => void;
}

export interface ContainerDeps {
  sys: Sys;
  reaper: Reaper;
  crun: OciCli;
  oom: OomEvents;
  log: Logger;
  /** Where bundles go (tests may point it elsewhere). */
  bundleRoot?: string;
  /** Applies the net.* sysctls a spec asked for to the VM's network namespace. */
  applySysctl?: (key: string, value: string) => void;
}

export interface ProcessRef {
  containerId: string;
  execId: string;
}

/** Ids become file names (bundle, pid files), so they must be plain names. */
function checkId(kind: string, id: string) {
  if (!id) throw invalidArgument(`${kind} id is empty`);
  if (id.length > 1024 || !/^[\w.+@:-]+$/.test(id) || id === "." || id === "..") {
    throw invalidArgument(`${kind} id ${JSON.stringify(id)} has characters that cannot be used in a path`);
  }
}

function defaultApplySysctl(key: string, value: string) {
  writeFileSync(path.join("/proc/sys", key.replaceAll(".", "/")), value);
}

export class Containers {
  private readonly containers = new Map<string, Container>();
  /** Ids whose CreateContainer is under way. */
  private readonly creating = new Set<string>();
  private readonly bundleRoot: string;

  constructor(private readonly d: ContainerDeps) {
    this.bundleRoot = d.bundleRoot ?? BUNDLE_ROOT;
  }

  get ids(): string[] {
    return [...this.containers.keys()];
  }

  private get(id: string): Container {
    const c = this.containers.get(id);
    if (!c) throw notFound(`container ${id} not found`);
    return c;
  }

  private proc(ref: ProcessRef): AgentProcess {
    const c = this.get(ref.containerId);
    if (!ref.execId) return c.init;
    const e = c.execs.get(ref.execId);
    if (!e) throw notFound(`process ${ref.execId} not found in container ${ref.containerId}`);
    return e.proc;
  }

  /** Containers whose init still runs, by its pid: the ones whose namespaces another may join. */
  private namespaceOwners(): Map<number, string> {
    const owners = new Map<number, string>();
    for (const c of this.containers.values()) if (c.init.status !== "stopped" && c.init.pid > 0) owners.set(c.init.pid, c.id);
    return owners;
  }

  async create(id: string, specJson: Uint8Array, flags: StdioFlags): Promise<number> {
    checkId("container", id);
    if (this.containers.has(id) || this.creating.has(id)) throw alreadyExists(`container ${id} already exists`);
    this.creating.add(id);
    const log = this.d.log.child({ container: id });
    const bundle = path.join(this.bundleRoot, id);
    let stdio: ProcessStdio | undefined;
    let created = false;
    try {
      const { spec, netSysctls, notes } = guestSpec(specJson, id, flags.terminal, this.namespaceOwners());
      for (const n of notes) log.debug("spec adjusted", { note: n });
      for (const [k, v] of Object.entries(netSysctls)) {
        try {
          (this.d.applySysctl ?? defaultApplySysctl)(k, v);
        } catch (err) {
          log.warn("sysctl not applied", { key: k, err: errorText(err) });
        }
      }
      rmSync(bundle, { recursive: true, force: true });
      mkdirSync(bundle, { recursive: true, mode: 0o700 });
      writeFileSync(path.join(bundle, "config.json"), JSON.stringify(spec));
      const io = ProcessStdio.open(flags, this.d.sys);
      stdio = io;
      const pidFile = path.join(bundle, "init.pid");
      const pid = await launchProcess(async (consoleSocket) => {
        await this.d.crun.create(id, { bundle, pidFile, consoleSocket, stdio: io.childFds() });
        created = true;
      }, { sys: this.d.sys, io, terminal: flags.terminal, consoleDir: this.bundleRoot, pidFile });
      const init = new AgentProcess(id, "", io);
      init.pid = pid;
      const cgroup = new Cgroup(cgroupPathOf(id));
      const c: Container = { id, bundle, init, cgroup, execs: new Map(), stopOom: () => {} };
      c.stopOom = watchOom(cgroup, this.d.sys, () => this.d.oom.publish(id));
      this.containers.set(id, c);
      this.d.reaper.watch(init.pid, (e) => {
        log.info("init exited", { pid: init.pid, status: e.status });
        init.exited(e);
      });
      log.info("container created", { pid: init.pid, terminal: flags.terminal });
      return init.pid;
    } catch (err) {
      stdio?.abandon();
      if (created) await this.d.crun.delete(id).catch(() => {});
      rmSync(bundle, { recursive: true, force: true });
      log.warn("create failed", { err: errorText(err) });
      throw err;
    } finally {
      this.creating.delete(id);
    }
  }

  async start(ref: ProcessRef): Promise<number> {
    const c = this.get(ref.containerId);
    if (!ref.execId) {
      if (c.init.status !== "created") throw failedPrecondition(`container ${c.id} is ${c.init.status}, not created`);
      await this.d.crun.start(c.id);
      // The init may already have exited (and been recorded) by now.
      c.init.started(c.init.pid);
      this.d.log.info("container started", { container: c.id, pid: c.init.pid });
      return c.init.pid;
    }
    const e = c.execs.get(ref.execId);
    if (!e) throw notFound(`process ${ref.execId} not found in container ${c.id}`);
    if (e.proc.status !== "created" || e.starting) throw failedPrecondition(`process ${ref.execId} was already started`);
    if (!c.init.alive) throw failedPrecondition(`container ${c.id} is ${c.init.status}: cannot start process ${ref.execId}`);
    e.starting = true;
    const tag = randomBytes(4).toString("hex");
    const processFile = path.join(c.bundle, `exec-${tag}.json`);
    const pidFile = path.join(c.bundle, `exec-${tag}.pid`);
    writeFileSync(processFile, JSON.stringify(e.process));
    const io = e.proc.stdio;
    try {
      const pid = await launchProcess(
        (consoleSocket) => this.d.crun.exec(c.id, { processFile, pidFile, consoleSocket, stdio: io.childFds() }),
        { sys: this.d.sys, io, terminal: e.terminal, consoleDir: this.bundleRoot, pidFile },
      );
      e.proc.started(pid);
    } catch (err) {
      // Nothing will run: WaitProcess callers learn it as an exit, readers get eof.
      e.proc.stdio.abandon();
      e.proc.exited({ status: 255, at: new Date() });
      throw err;
    } finally {
      e.starting = false;
      rmSync(processFile, { force: true });
      rmSync(pidFile, { force: true });
    }
    const proc = e.proc;
    this.d.reaper.watch(proc.pid, (x) => {
      this.d.log.info("exec exited", { container: c.id, exec: ref.execId, pid: proc.pid, status: x.status });
      proc.exited(x);
    });
    this.d.log.info("exec started", { container: c.id, exec: ref.execId, pid: proc.pid, terminal: e.terminal });
    return proc.pid;
  }

  exec(containerId: string, execId: string, processJson: Uint8Array, flags: StdioFlags): void {
    const c = this.get(containerId);
    checkId("exec", execId);
    if (c.execs.has(execId)) throw alreadyExists(`process ${execId} already exists in container ${containerId}`);
    const proc = parseJsonObject(processJson, "process_json");
    if (!Array.isArray(proc["args"]) || proc["args"].length === 0) throw invalidArgument(`exec ${execId}: process has no args`);
    const stdio = ProcessStdio.open(flags, this.d.sys);
    c.execs.set(execId, {
      proc: new AgentProcess(containerId, execId, stdio),
      process: guestProcess(proc, flags.terminal),
      terminal: flags.terminal,
      starting: false,
    });
  }

  async signal(ref: ProcessRef, signal: number, all: boolean): Promise<void> {
    const c = this.get(ref.containerId);
    if (ref.execId) {
      const p = this.proc(ref);
      if (p.status === "created") throw failedPrecondition(`exec ${ref.execId} has not been started`);
      if (p.exit) throw notFound(`process ${ref.execId}: process already finished`);
      signalPid(p.pid, signal);
      return;
    }
    if (c.init.exit && !all) throw notFound(`container ${c.id}: process already finished`);
    try {
      await this.d.crun.kill(c.id, signal, all);
    } catch (err) {
      // The init exited while crun was on its way.
      if (c.init.exit) {
        if (all) return;
        throw notFound(`container ${c.id}: process already finished`);
      }
      throw err;
    }
  }

  wait(ref: ProcessRef, signal?: AbortSignal): Promise<ExitInfo> {
    return this.proc(ref).wait(signal);
  }

  removeProcess(ref: ProcessRef): void {
    if (!ref.execId) throw invalidArgument("the init process goes with RemoveContainer");
    const c = this.get(ref.containerId);
    const e = c.execs.get(ref.execId);
    if (!e) throw notFound(`process ${ref.execId} not found in container ${c.id}`);
    if (e.proc.alive || e.starting) throw failedPrecondition(`process ${ref.execId} is still running`);
    e.proc.stdio.close();
    c.execs.delete(ref.execId);
  }

  async removeContainer(id: string): Promise<void> {
    const c = this.get(id);
    await this.d.crun.delete(id);
    this.forget(c);
    this.d.log.info("container removed", { container: id });
  }

  private forget(c: Container) {
    c.stopOom();
    for (const e of c.execs.values()) e.proc.stdio.close();
    c.init.stdio.close();
    rmSync(c.bundle, { recursive: true, force: true });
    this.containers.delete(c.id);
  }

  stdio(ref: ProcessRef): ProcessStdio {
    return this.proc(ref).stdio;
  }

  read(ref: ProcessRef, stream: StreamName, signal?: AbortSignal) {
    return this.stdio(ref).read(stream, signal);
  }

  async pids(id: string): Promise<Array<{ pid: number; execId: string }>> {
    const c = this.get(id);
    const pids = await this.d.crun.ps(id);
    const byPid = new Map<number, string>();
    for (const [execId, e] of c.execs) if (e.proc.pid) byPid.set(e.proc.pid, execId);
    return pids.map((pid) => ({ pid, execId: byPid.get(pid) ?? "" }));
  }

  async pause(id: string): Promise<void> {
    const c = this.get(id);
    await this.d.crun.pause(id);
    if (c.init.status === "running") c.init.status = "paused";
  }

  async resume(id: string): Promise<void> {
    const c = this.get(id);
    await this.d.crun.resume(id);
    if (c.init.status === "paused") c.init.status = "running";
  }

  async update(id: string, resourcesJson: Uint8Array): Promise<void> {
    const c = this.get(id);
    const resources = parseJsonObject(resourcesJson, "resources_json");
    const file = path.join(c.bundle, `resources-${randomBytes(4).toString("hex")}.json`);
    writeFileSync(file, JSON.stringify(resources));
    try {
      await this.d.crun.update(id, file);
    } finally {
      rmSync(file, { force: true });
    }
  }

  stats(id: string): EncodedMetrics {
    return this.get(id).cgroup.stats();
  }

  /** Kills and deletes every container (for Shutdown); never throws. */
  async removeAll(): Promise<void> {
    await Promise.all(
      [...this.containers.values()].map(async (c) => {
        await this.d.crun.kill(c.id, 9, true).catch(() => {});
        await this.d.crun.delete(c.id).catch((err) => {
          this.d.log.warn("delete at shutdown failed", { container: c.id, err: errorText(err) });
        });
        this.forget(c);
      }),
    );
  }
}
