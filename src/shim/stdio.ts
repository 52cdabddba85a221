// Connects a container process's stdio to what containerd asked for: the client's FIFOs, a file
// (file://), or a logging binary (binary://). Without a terminal the process gets the FIFOs
// themselves, so output flows to containerd without passing through the shim. With a terminal the
// shim copies between the FIFOs and the pty master that the OCI runtime hands over.
import { closeSync, constants as C, fchownSync, fstatSync, mkdirSync, openSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { invalidArgument } from "../core/errors.js";
import { ChildFds, closeQuietly } from "../core/fds.js";
import { PtyMaster } from "../core/pty.js";
import type { IoOwner, Stdio } from "./runtime.js";
import { spawnChild } from "../sys/children.js";
import type { ChildProcess } from "node:child_process";
import type { Sys } from "../sys/types.js";

export type OutputTarget =
  | { kind: "null" }
  | { kind: "fifo"; stdout: string; stderr: string }
  | { kind: "file"; path: string }
  | { kind: "binary"; path: string; args: string[] };

/** containerd decides the scheme from the stdout string; a plain path means FIFOs. */
export function parseOutputTarget(stdio: Stdio): OutputTarget {
  const out = stdio.stdout;
  if (!out) return stdio.stderr ? { kind: "fifo", stdout: "", stderr: stdio.stderr } : { kind: "null" };
  const m = /^([a-z][a-z0-9+.-]*):\/\//.exec(out);
  if (!m || m[1] === "fifo") return { kind: "fifo", stdout: out.replace(/^fifo:\/\//, ""), stderr: stdio.stderr };
  let url: URL;
  try {
    url = new URL(out);
  } catch {
    throw invalidArgument(`invalid stdout URI ${out}`);
  }
  const p = decodeURIComponent(url.pathname);
  if (!path.isAbsolute(p)) throw invalidArgument(`stdout URI ${out} needs an absolute path`);
  if (m[1] === "file") return { kind: "file", path: p };
  if (m[1] === "binary") {
    const args: string[] = [];
    for (const [k, v] of url.searchParams) args.push(k, v);
    return { kind: "binary", path: p, args };
  }
  throw invalidArgument(`unsupported stdio scheme ${m[1]}:// in ${out}`);
}

const devNull = () => openSync("/dev/null", C.O_RDWR);

/** Opens the write side of a FIFO without losing data if the client detaches: hold a reader too. */
function openFifoWriter(p: string): { writer: number; heldReader: number } {
  const heldReader = openSync(p, C.O_RDONLY | C.O_NONBLOCK);
  // A reader exists now, so this blocking open returns at once and yields a blocking fd.
  const writer = openSync(p, C.O_WRONLY);
  return { writer, heldReader };
}

/** Opens the read side of the stdin FIFO; the held writer keeps EOF away until CloseIO. */
function openFifoReader(p: string): { reader: number; heldWriter: number } {
  const probe = openSync(p, C.O_RDONLY | C.O_NONBLOCK);
  const heldWriter = openSync(p, C.O_WRONLY);
  const reader = openSync(p, C.O_RDONLY);
  closeSync(probe);
  return { reader, heldWriter };
}

export interface IoContext {
  id: string;
  namespace: string;
  sys: Sys;
  /** Who gets the process's FIFO and pipe fds (containerd's IoUid/IoGid); absent: they stay root's. */
  owner?: IoOwner;
}

export class ProcessIO {
  /** fds the process (or its OCI runtime) gets as 0, 1, 2; closed in the shim after the spawn. */
  private readonly child = new ChildFds();
  /** fds the shim keeps for the life of the process. */
  private held: number[] = [];
  private stdinWriter = -1;
  private logger: ChildProcess | undefined;
  private streams: Array<net.Socket> = [];
  private pty: PtyMaster | undefined;
  private stdinPath = "";
  private outputWriters: number[] = [];
  private sys: Sys;

  private constructor(readonly stdio: Stdio, sys: Sys) {
    this.sys = sys;
  }

  static async open(stdio: Stdio, ctx: IoContext): Promise<ProcessIO> {
    const io = new ProcessIO(stdio, ctx.sys);
    try {
      await io.setup(ctx);
    } catch (err) {
      io.close();
      throw err;
    }
    return io;
  }

  private async setup(ctx: IoContext) {
    const target = parseOutputTarget(this.stdio);
    if (this.stdio.terminal) {
      // The pty replaces the process's stdio; the shim copies. Output fds are kept for the copy.
      this.stdinPath = this.stdio.stdin;
      const [out] = await this.outputFds(target, ctx);
      this.outputWriters = [out];
      return;
    }
    let stdin = -1;
    if (this.stdio.stdin) {
      const { reader, heldWriter } = openFifoReader(this.stdio.stdin);
      stdin = reader;
      this.stdinWriter = heldWriter;
    }
    const [out, err] = await this.outputFds(target, ctx);
    this.child.set([stdin >= 0 ? stdin : devNull(), out, err]);
    if (ctx.owner) giveFifos(this.child.get(), ctx.owner);
  }

  private async outputFds(target: OutputTarget, ctx: IoContext): Promise<[number, number]> {
    switch (target.kind) {
      case "null":
        return [devNull(), devNull()];
      case "fifo": {
        const open = (p: string) => {
          if (!p) return devNull();
          const { writer, heldReader } = openFifoWriter(p);
          this.held.push(heldReader);
          return writer;
        };
        const out = open(target.stdout);
        const err = this.stdio.terminal ? devNull() : open(target.stderr);
        return [out, err];
      }
      case "file": {
        mkdirSync(path.dirname(target.path), { recursive: true });
        const fd = openSync(target.path, C.O_WRONLY | C.O_APPEND | C.O_CREAT, 0o644);
        const fd2 = openSync(target.path, C.O_WRONLY | C.O_APPEND);
        return [fd, fd2];
      }
      case "binary":
        return this.startLogger(target, ctx);
    }
  }

  /** containerd's logging-binary protocol: fd 3 = stdout, fd 4 = stderr, fd 5 = "ready" pipe. */
  private async startLogger(target: Extract<OutputTarget, { kind: "binary" }>, ctx: IoContext): Promise<[number, number]> {
    const [outR, outW] = ctx.sys.pipe();
    const [errR, errW] = ctx.sys.pipe();
    const [readyR, readyW] = ctx.sys.pipe();
    const logger = spawnChild(target.path, target.args, {
      stdio: ["ignore", "ignore", "ignore", outR, errR, readyW],
      env: { CONTAINER_ID: ctx.id, CONTAINER_NAMESPACE: ctx.namespace },
      detached: false,
    });
    this.logger = logger;
    for (const fd of [outR, errR, readyW]) closeSync(fd);
    const spawned = new Promise<void>((resolve, reject) => {
      logger.once("spawn", resolve);
      logger.once("error", (e) => reject(invalidArgument(`cannot start logging binary ${target.path}: ${e.message}`)));
    });
    const ready = new Promise<void>((resolve) => {
      const s = new net.Socket({ fd: readyR, readable: true, writable: false });
      const done = () => {
        s.destroy();
        resolve();
      };
      s.once("data", done);
      s.once("end", done);
      s.once("error", done);
    });
    try {
      await spawned;
      await ready;
    } catch (err) {
      closeSync(outW);
      closeSync(errW);
      throw err;
    }
    return [outW, errW];
  }

  childFds(): [number, number, number] {
    return this.child.get();
  }

  /** Hands the three fds over to the caller, who then owns (and closes) them: for shims that relay
   *  the streams themselves instead of giving them to a local process (vm mode). */
  takeChildFds(): [number, number, number] {
    return this.child.take();
  }

  /** After the process (or the OCI runtime that starts it) got its copies, drop the shim's. */
  releaseChildFds() {
    this.child.release();
  }

  /** Terminal mode: copy stdin FIFO -> pty master and pty master -> output. */
  attachConsole(masterFd: number) {
    const pty = new PtyMaster(this.sys, masterFd);
    this.pty = pty;
    const master = pty.stream;
    this.streams.push(master);
    const out = this.outputWriters[0];
    if (out !== undefined) {
      const sink = new net.Socket({ fd: out, readable: false, writable: true });
      this.outputWriters = [];
      this.streams.push(sink);
      master.on("data", (d) => sink.write(d));
      const finish = () => sink.end();
      master.once("end", finish);
      master.once("error", finish); // EIO once the last slave fd closes
      sink.on("error", () => {});
    } else master.resume();
    if (this.stdinPath) {
      const { reader, heldWriter } = openFifoReaderNonBlocking(this.stdinPath);
      this.stdinWriter = heldWriter;
      const src = new net.Socket({ fd: reader, readable: true, writable: false });
      this.streams.push(src);
      src.on("data", (d) => pty.write(d));
      src.once("end", () => pty.endInput());
      src.on("error", () => {});
    }
  }

  /** The process is gone: let the master see EOF once the remaining output is drained. */
  processExited() {
    this.pty?.processExited();
  }

  /** Sizes the terminal; a process without one ignores it (as containerd's runc shim does). */
  resize(rows: number, cols: number) {
    this.pty?.resize(rows, cols);
  }

  /** CloseIO: drop the shim's writer so the process sees EOF once the client closes too. */
  closeStdin() {
    if (this.stdinWriter >= 0) closeQuietly(this.stdinWriter);
    this.stdinWriter = -1;
  }

  close() {
    this.processExited();
    this.releaseChildFds();
    this.closeStdin();
    for (const fd of this.held) closeQuietly(fd);
    this.held = [];
    for (const fd of this.outputWriters) closeQuietly(fd);
    this.outputWriters = [];
    for (const s of this.streams) s.destroy();
    this.streams = [];
    if (this.logger && this.logger.exitCode === null) {
      const l = this.logger;
      l.kill("SIGTERM");
      setTimeout(() => l.exitCode === null && l.kill("SIGKILL"), 12_000).unref();
    }
  }
}

/**
 * Chowns the FIFOs and pipes among the process's stdio fds, so that a user-namespaced process can reopen
 * them through /proc/self/fd. /dev/null needs nothing, and a file:// log stays its owner's: the process
 * writes to the fd it was given but cannot reopen the file (runc-v2 copies through a pipe there; Cocoon
 * hands over the file itself).
 */
function giveFifos(fds: readonly number[], owner: IoOwner) {
  for (const fd of fds) if (fstatSync(fd).isFIFO()) fchownSync(fd, owner.uid, owner.gid);
}

function openFifoReaderNonBlocking(p: string): { reader: number; heldWriter: number } {
  const reader = openSync(p, C.O_RDONLY | C.O_NONBLOCK);
  const heldWriter = openSync(p, C.O_WRONLY);
  return { reader, heldWriter };
}
