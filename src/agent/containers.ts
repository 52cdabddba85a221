// Containers of the pod, run by crun inside the guest. Bundles live in /run/cocoon/<id>/; container
// processes are re-parented to the agent (PID 1), whose reaper reports their exits.
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Reaper } from "../sys/reaper.js";
import type { FdReceiver, Sys } from "../sys/types.js";
import { CGROUP_ROOT, readMetrics } from "./cgroup-stats.js";
import type { Crun } from "./crun.js";
import { alreadyExists, failedPrecondition, invalidArgument, notFound, errorText } from "./errors.js";
import type { Logger } from "./log.js";
import type { OomMonitor } from "./oom.js";
import { AgentProcess } from "./process.js";
import type { ProcessExit } from "./process.js";
import { cgroupPathOf, guestProcess, guestSpec, parseJsonObject } from "./spec.js";
import { ProcessStdio } from "./stdio.js";
import type { StdioFlags, StreamName } from "./stdio.js";
import type { Metrics } from "../gen/cgroups/v2/metrics_pb.js";

export const BUNDLE_ROOT = "/run/cocoon";
const CONSOLE_TIMEOUT_MS = 30_000;

type Status = "created" | "running" | "paused" | "stopped";

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
  init: AgentProcess;
  status: Status;
  execs: Map<string, Exec>;
  stopOom: () => void;
}

export interface ContainerDeps {
  sys: Sys;
  reaper: Reaper;
  crun: Crun;
  oom: OomMonitor;
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

function readPid(file: string): number {
  const pid = Number(readFileSync(file, "utf8").trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`bad pid file ${file}`);
  return pid;
}

function defaultApplySysctl(key: string, value: string) {
  writeFileSync(path.join("/proc/sys", key.replaceAll(".", "/")), value);
}

export class Containers {
  private readonly containers = new Map<string, Container>();
  /** Ids whose CreateContainer is under way. */
  private readonly creating = new Set<string>();
  private readonly bundleRoot: string;
  private consoleSeq = 0;

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
    for (const c of this.containers.values()) if (c.status !== "stopped" && c.init.pid > 0) owners.set(c.init.pid, c.id);
    return owners;
  }

  private consoleSocket(): FdReceiver {
    const p = path.join(this.bundleRoot, `pty-${process.pid}-${++this.consoleSeq}-${randomBytes(3).toString("hex")}.sock`);
    return this.d.sys.receiveFd(p, CONSOLE_TIMEOUT_MS);
  }

  async create(id: string, specJson: Uint8Array, flags: StdioFlags): Promise<number> {
    checkId("container", id);
    if (this.containers.has(id) || this.creating.has(id)) throw alreadyExists(`container ${id} already exists`);
    this.creating.add(id);
    const log = this.d.log.child({ container: id });
    const bundle = path.join(this.bundleRoot, id);
    let stdio: ProcessStdio | undefined;
    let receiver: FdReceiver | undefined;
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
      stdio = ProcessStdio.open(flags, this.d.sys);
      const pidFile = path.join(bundle, "init.pid");
      const args = ["--bundle", bundle, "--pid-file", pidFile];
      if (flags.terminal) {
        receiver = this.consoleSocket();
        args.push("--console-socket", receiver.path);
      }
      args.push(id);
      try {
        await this.d.crun.run("create", args, { stdio: stdio.childFds() });
      } finally {
        stdio.releaseChildFds();
      }
      created = true;
      if (receiver) stdio.attachConsole(await receiver.received);
      const init = new AgentProcess(id, "", stdio);
      init.pid = readPid(pidFile);
      const c: Container = { id, bundle, init, status: "created", execs: new Map(), stopOom: () => {} };
      c.stopOom = this.d.oom.watch(id, path.join(CGROUP_ROOT, cgroupPathOf(id)));
      this.containers.set(id, c);
      this.d.reaper.watch(init.pid, (e) => {
        log.info("init exited", { pid: init.pid, status: e.status });
        c.status = "stopped";
        init.exited(e);
      });
      log.info("container created", { pid: init.pid, terminal: flags.terminal });
      return init.pid;
    } catch (err) {
      receiver?.close();
      stdio?.abandon();
      if (created) await this.d.crun.run("delete", ["--force", id]).catch(() => {});
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
      if (c.status !== "created") throw failedPrecondition(`container ${c.id} is ${c.status}, not created`);
      await this.d.crun.run("start", [c.id]);
      // The init may already have exited (and been recorded) by now.
      if (c.status === "created") c.status = "running";
      this.d.log.info("container started", { container: c.id, pid: c.init.pid });
      return c.init.pid;
    }
    const e = c.execs.get(ref.execId);
    if (!e) throw notFound(`process ${ref.execId} not found in container ${c.id}`);
    if (e.proc.started || e.starting) throw failedPrecondition(`process ${ref.execId} was already started`);
    if (c.status !== "running" && c.status !== "paused") {
      throw failedPrecondition(`container ${c.id} is ${c.status}: cannot start process ${ref.execId}`);
    }
    e.starting = true;
    const tag = randomBytes(4).toString("hex");
    const processFile = path.join(c.bundle, `exec-${tag}.json`);
    const pidFile = path.join(c.bundle, `exec-${tag}.pid`);
    writeFileSync(processFile, JSON.stringify(e.process));
    const args = ["--detach", "--pid-file", pidFile, "--process", processFile];
    let receiver: FdReceiver | undefined;
    try {
      if (e.terminal) {
        receiver = this.consoleSocket();
        args.push("--console-socket", receiver.path);
      }
      args.push(c.id);
      try {
        await this.d.crun.run("exec", args, { stdio: e.proc.stdio.childFds() });
      } finally {
        e.proc.stdio.releaseChildFds();
      }
      if (receiver) e.proc.stdio.attachConsole(await receiver.received);
      e.proc.pid = readPid(pidFile);
    } catch (err) {
      receiver?.close();
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
      if (!p.started) throw notFound(`process ${ref.execId} has not been started`);
      if (p.exit) throw notFound(`process ${ref.execId} already finished`);
      try {
        process.kill(p.pid, signal);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ESRCH") throw notFound(`process ${ref.execId} already finished`);
        throw invalidArgument(`kill ${p.pid} ${signal}: ${errorText(err)}`);
      }
      return;
    }
    if (c.init.exit && !all) throw notFound(`container ${c.id}: process already finished`);
    const args = all ? ["--all", c.id, String(signal)] : [c.id, String(signal)];
    try {
      await this.d.crun.run("kill", args);
    } catch (err) {
      // The init exited while crun was on its way.
      if (c.init.exit) {
        if (all) return;
        throw notFound(`container ${c.id}: process already finished`);
      }
      throw err;
    }
  }

  wait(ref: ProcessRef, signal?: AbortSignal): Promise<ProcessExit> {
    return this.proc(ref).wait(signal);
  }

  removeProcess(ref: ProcessRef): void {
    if (!ref.execId) throw invalidArgument("the init process goes with RemoveContainer");
    const c = this.get(ref.containerId);
    const e = c.execs.get(ref.execId);
    if (!e) throw notFound(`process ${ref.execId} not found in container ${c.id}`);
    if (e.proc.running || e.starting) throw failedPrecondition(`process ${ref.execId} is still running`);
    e.proc.stdio.close();
    c.execs.delete(ref.execId);
  }

  async removeContainer(id: string): Promise<void> {
    const c = this.get(id);
    try {
      await this.d.crun.run("delete", ["--force", id]);
    } catch (err) {
      if ((err as { grpcCode?: number }).grpcCode !== 5) throw err;
    }
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
    const out = await this.d.crun.run("ps", ["--format", "json", id]);
    let pids: unknown;
    try {
      pids = JSON.parse(out.trim() || "[]");
    } catch {
      throw new Error(`crun ps printed something else than JSON: ${out.slice(0, 200)}`);
    }
    if (!Array.isArray(pids)) pids = [];
    const byPid = new Map<number, string>();
    for (const [execId, e] of c.execs) if (e.proc.pid) byPid.set(e.proc.pid, execId);
    return (pids as unknown[]).map(Number).filter((p) => p > 0).map((pid) => ({ pid, execId: byPid.get(pid) ?? "" }));
  }

  async pause(id: string): Promise<void> {
    const c = this.get(id);
    await this.d.crun.run("pause", [id]);
    if (c.status === "running") c.status = "paused";
  }

  async resume(id: string): Promise<void> {
    const c = this.get(id);
    await this.d.crun.run("resume", [id]);
    if (c.status === "paused") c.status = "running";
  }

  async update(id: string, resourcesJson: Uint8Array): Promise<void> {
    const c = this.get(id);
    const resources = parseJsonObject(resourcesJson, "resources_json");
    const file = path.join(c.bundle, `resources-${randomBytes(4).toString("hex")}.json`);
    writeFileSync(file, JSON.stringify(resources));
    try {
      await this.d.crun.run("update", ["--resources", file, id]);
    } finally {
      rmSync(file, { force: true });
    }
  }

  stats(id: string): Metrics {
    this.get(id);
    return readMetrics(path.join(CGROUP_ROOT, cgroupPathOf(id)));
  }

  /** Kills and deletes every container (for Shutdown); never throws. */
  async removeAll(): Promise<void> {
    await Promise.all(
      [...this.containers.values()].map(async (c) => {
        await this.d.crun.run("kill", ["--all", c.id, "9"]).catch(() => {});
        await this.d.crun.run("delete", ["--force", c.id]).catch((err) => {
          this.d.log.warn("delete at shutdown failed", { container: c.id, err: errorText(err) });
        });
        this.forget(c);
      }),
    );
  }
}
