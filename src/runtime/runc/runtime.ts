// runc mode: each container is an ordinary Linux container made by the OCI runtime CLI (runc or
// crun). The shim mounts the rootfs, runs `create`/`start`/`exec` with pid files, and learns exits
// through the reaper, since every container process ends up re-parented to the shim.
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { failedPrecondition, invalidArgument, notFound, unimplemented } from "../../core/errors.js";
import { mountAll, unmountAll } from "../../shim/mount.js";
import type { Exit, Reaper } from "../../sys/reaper.js";
import type {
  CreateRequest, ExecRequest, IoOwner, PidInfo, ProcessRef, Runtime, RuntimeContext, Stats,
} from "../../shim/runtime.js";
import { ProcessIO } from "../../shim/stdio.js";
import type { Sys } from "../../sys/types.js";
import { Cgroup, cgroupRelPath } from "../../core/cgroups.js";
import { launchProcess, readPidFile } from "../../core/launch.js";
import { watchOom } from "../../core/oom.js";
import type { RuncBundleState } from "./cleanup.js";
import { STATE_FILE, writeBundleState } from "../../shim/delete.js";
import { runSubdir } from "../../shim/fast-start.js";
import { OciCli, resolveBinary } from "../../core/oci-cli.js";
import { signalPid } from "../../core/process.js";
import { containerSettings, type RuncSettings } from "./settings.js";
import { RUNC_FLAVOR, type FlavorContainer, type OciFlavor } from "./flavor.js";

interface ExecProc {
  io: ProcessIO;
  pid: number;
  /** The pid inside the container, for a flavor that signals execs through the runtime. */
  innerPid: number;
  specFile: string;
  terminal: boolean;
}

interface ContainerRec {
  id: string;
  namespace: string;
  bundle: string;
  rootfs: string;
  mounted: boolean;
  cli: OciCli;
  io: ProcessIO;
  initPid: number;
  execs: Map<string, ExecProc>;
  cgroup: Cgroup;
  stopOom: () => void;
  criu: string;
  /** Owner of the stdio of the container's processes, its execs' too (runc options IoUid/IoGid). */
  ioOwner: IoOwner | undefined;
  view: FlavorContainer;
  /** The init's stdio goes to `start`, not `create` (flavor.stdioAtStart). */
  stdioAtStart: boolean;
  /** The init's exit comes from flavor.followInit, not from reaping initPid. */
  followed: boolean;
  stopFollowing: () => void;
}

/** runc hands the pty master over a socket in root's own run dir, never in a shared /tmp. */
const consoleDir = () => runSubdir("console");

export class RuncRuntime implements Runtime {
  private containers = new Map<string, ContainerRec>();

  constructor(
    private readonly ctx: RuntimeContext<RuncSettings>,
    private readonly sys: Sys,
    private readonly reaper: Reaper,
    private readonly flavor: OciFlavor = RUNC_FLAVOR,
  ) {}

  private rec(id: string): ContainerRec {
    const c = this.containers.get(id);
    if (!c) throw notFound(`container ${id}`);
    return c;
  }

  private execRec(c: ContainerRec, execId: string): ExecProc {
    const e = c.execs.get(execId);
    if (!e) throw notFound(`process does not exist ${execId}`);
    return e;
  }

  async create(req: CreateRequest): Promise<{ pid: number }> {
    const { runc, ioOwner } = containerSettings(this.ctx.settings, req.options);
    const cli = new OciCli({
      binary: runc.binary,
      globalArgs: ["--root", path.join(runc.root, req.namespace), ...(runc.systemdCgroup ? ["--systemd-cgroup"] : []), ...this.flavor.globalArgs],
      logDir: req.bundle,
    });
    mkdirSync(path.join(runc.root, req.namespace), { recursive: true, mode: 0o711 });
    if (req.checkpoint) throw unimplemented("restoring from a checkpoint is not supported in runc mode yet");
    const rootfs = path.resolve(req.bundle, req.spec.root?.path ?? "rootfs");
    const log = this.ctx.log.child({ id: req.id });
    const cleanups: Array<() => void> = [];
    try {
      if (req.rootfs.length > 0) {
        mountAll(this.sys, req.rootfs, rootfs);
        cleanups.push(() => unmountAll(this.sys, rootfs));
      } else if (!existsSync(rootfs) || readdirSync(rootfs).length === 0) {
        throw invalidArgument(`bundle ${req.bundle} has no rootfs: no mounts were given and ${rootfs} is missing or empty`);
      }
      const io = await ProcessIO.open(req.stdio, { id: req.id, namespace: req.namespace, sys: this.sys, owner: ioOwner });
      cleanups.push(() => io.close());
      const extra = [...(runc.noPivotRoot ? ["--no-pivot"] : []), ...(runc.noNewKeyring ? ["--no-new-keyring"] : [])];
      const pidFile = path.join(req.bundle, "init.pid");
      // A flavor may hand the init its stdio (and console) only on `start` (runsc: a container joining a sandbox).
      const stdioAtStart = this.flavor.stdioAtStart(req.spec);
      const create = async (consoleSocket: string | undefined, stdio?: [number, number, number]) => {
        await cli.create(req.id, { bundle: req.bundle, pidFile, consoleSocket, extra, ...(stdio ? { stdio } : {}) });
        cleanups.push(() => void cli.delete(req.id).catch(() => {}));
      };
      const pid = stdioAtStart
        ? (await create(undefined), readPidFile(pidFile))
        : await launchProcess((consoleSocket) => create(consoleSocket, io.childFds()), { sys: this.sys, io, terminal: req.stdio.terminal, consoleDir: consoleDir(), pidFile });
      const cgroup = new Cgroup(cgroupRelPath(req.spec.linux?.cgroupsPath, req.id));
      const rec: ContainerRec = {
        id: req.id, namespace: req.namespace, bundle: req.bundle, rootfs, mounted: req.rootfs.length > 0,
        cli, io, initPid: pid, execs: new Map(), cgroup, stopOom: () => {}, criu: runc.criuPath, ioOwner,
        view: { id: req.id, namespace: req.namespace, bundle: req.bundle, spec: req.spec, pid, cli },
        stdioAtStart, followed: this.flavor.followInit?.applies(req.spec) ?? false, stopFollowing: () => {},
      };
      const onOom = () => this.ctx.events.oom(req.id);
      rec.stopOom = this.flavor.watchOom ? this.flavor.watchOom(rec.view, onOom) : watchOom(cgroup, this.sys, onOom);
      const state: RuncBundleState = { mode: this.flavor.stateMode, binary: cli.binaryPath, root: path.join(runc.root, req.namespace), rootfs, mounted: rec.mounted };
      writeBundleState(req.bundle, state);
      this.containers.set(req.id, rec);
      if (!rec.followed) this.reaper.watch(pid, (e) => this.initExited(rec, e));
      return { pid };
    } catch (err) {
      for (const undo of cleanups.reverse()) {
        try {
          undo();
        } catch (e) {
          log.warn("cleanup after failed create", { err: (e as Error).message });
        }
      }
      throw err;
    }
  }

  private initExited(c: ContainerRec, e: Exit) {
    this.ctx.log.debug("init exited", { id: c.id, pid: c.initPid, status: e.status });
    c.io.processExited();
    this.ctx.events.exited({ containerId: c.id, execId: "" }, c.initPid, { status: e.status, at: e.at });
  }

  async start(ref: ProcessRef): Promise<{ pid: number }> {
    const c = this.rec(ref.containerId);
    if (!ref.execId) {
      if (c.stdioAtStart) {
        try {
          await c.cli.start(c.id, c.io.childFds());
        } finally {
          c.io.releaseChildFds();
        }
      } else {
        await c.cli.start(c.id);
      }
      if (c.followed) c.stopFollowing = this.flavor.followInit!.follow(c.view, (e) => this.initExited(c, e));
      return { pid: c.initPid };
    }
    const e = this.execRec(c, ref.execId);
    const pidFile = path.join(c.bundle, `exec-${ref.execId}.pid`);
    const innerPidFile = path.join(c.bundle, `exec-${ref.execId}.inner-pid`);
    const extra = this.flavor.execKillThroughRuntime ? ["--internal-pid-file", innerPidFile] : [];
    try {
      e.pid = await launchProcess(
        (consoleSocket) => c.cli.exec(c.id, { processFile: e.specFile, pidFile, consoleSocket, extra, stdio: e.io.childFds() }),
        { sys: this.sys, io: e.io, terminal: e.terminal, consoleDir: consoleDir(), pidFile },
      );
      if (extra.length) e.innerPid = readPidFile(innerPidFile);
    } finally {
      rmSync(e.specFile, { force: true });
      rmSync(pidFile, { force: true });
      rmSync(innerPidFile, { force: true });
    }
    const pid = e.pid;
    this.reaper.watch(pid, (x) => {
      e.io.processExited();
      this.ctx.events.exited(ref, pid, { status: x.status, at: x.at });
    });
    return { pid };
  }

  async exec(req: ExecRequest): Promise<void> {
    const c = this.rec(req.containerId);
    const proc = { ...req.process, terminal: req.stdio.terminal };
    const args = (req.process as { args?: unknown }).args;
    if (!Array.isArray(args) || args.length === 0) {
      throw invalidArgument(`exec ${req.execId}: process spec has no args`);
    }
    const specFile = path.join(c.bundle, `exec-${req.execId}.json`);
    writeFileSync(specFile, JSON.stringify(proc));
    try {
      const io = await ProcessIO.open(req.stdio, { id: req.execId, namespace: c.namespace, sys: this.sys, owner: c.ioOwner });
      c.execs.set(req.execId, { io, pid: 0, innerPid: 0, specFile, terminal: req.stdio.terminal });
    } catch (err) {
      rmSync(specFile, { force: true });
      throw err;
    }
  }

  async kill(ref: ProcessRef, signal: number, all: boolean): Promise<void> {
    const c = this.rec(ref.containerId);
    if (!ref.execId) {
      await c.cli.kill(c.id, signal, all);
      return;
    }
    const e = this.execRec(c, ref.execId);
    if (e.innerPid) await c.cli.run("kill", ["--pid", String(e.innerPid), c.id, String(signal)]);
    else signalPid(e.pid, signal);
  }

  async delete(ref: ProcessRef): Promise<void> {
    const c = this.rec(ref.containerId);
    if (ref.execId) {
      const e = c.execs.get(ref.execId);
      if (e) {
        e.io.close();
        rmSync(e.specFile, { force: true });
        c.execs.delete(ref.execId);
      }
      return;
    }
    await c.cli.delete(c.id);
    this.release(c);
  }

  private release(c: ContainerRec) {
    c.stopOom();
    c.stopFollowing();
    if (!c.followed) this.reaper.unwatch(c.initPid);
    for (const e of c.execs.values()) e.io.close();
    c.io.close();
    if (c.mounted) unmountAll(this.sys, c.rootfs);
    rmSync(path.join(c.bundle, "init.pid"), { force: true });
    rmSync(path.join(c.bundle, STATE_FILE), { force: true });
    this.containers.delete(c.id);
  }

  async pids(containerId: string): Promise<PidInfo[]> {
    const c = this.rec(containerId);
    const pids = await c.cli.ps(c.id);
    const byPid = new Map<number, string>();
    for (const [execId, e] of c.execs) if (e.pid) byPid.set(e.innerPid || e.pid, execId);
    return pids.map((pid) => ({ pid, execId: byPid.get(pid) ?? "" }));
  }

  async pause(containerId: string) {
    const c = this.rec(containerId);
    await c.cli.pause(c.id);
  }

  async resume(containerId: string) {
    const c = this.rec(containerId);
    await c.cli.resume(c.id);
  }

  async update(containerId: string, resources: Record<string, unknown>) {
    const c = this.rec(containerId);
    if (this.flavor.unsupported.update) throw unimplemented(this.flavor.unsupported.update);
    const file = path.join(c.bundle, `resources-${randomBytes(4).toString("hex")}.json`);
    writeFileSync(file, JSON.stringify(resources));
    try {
      await c.cli.update(c.id, file);
    } finally {
      rmSync(file, { force: true });
    }
  }

  async stats(containerId: string): Promise<Stats> {
    const c = this.rec(containerId);
    return this.flavor.stats ? this.flavor.stats(c.view) : c.cgroup.stats();
  }

  async resizePty(ref: ProcessRef, width: number, height: number) {
    const c = this.rec(ref.containerId);
    const io = ref.execId ? this.execRec(c, ref.execId).io : c.io;
    io.resize(height, width);
  }

  async closeStdin(ref: ProcessRef) {
    const c = this.rec(ref.containerId);
    (ref.execId ? this.execRec(c, ref.execId).io : c.io).closeStdin();
  }

  async checkpoint(containerId: string, imagePath: string, _options: Record<string, unknown>) {
    const c = this.rec(containerId);
    if (this.flavor.unsupported.checkpoint) throw unimplemented(this.flavor.unsupported.checkpoint);
    try {
      resolveBinary(c.criu || "criu");
    } catch {
      throw failedPrecondition("checkpoint needs CRIU, which is not installed (apt-get install criu)");
    }
    await c.cli.run("checkpoint", ["--image-path", imagePath, "--leave-running", c.id]);
  }

  async shutdown() {
    for (const c of [...this.containers.values()]) {
      await c.cli.delete(c.id).catch(() => {});
      this.release(c);
    }
  }
}
