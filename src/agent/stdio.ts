// The stdio of one container process inside the guest. Without a terminal the process gets real
// pipes (crun passes its own stdio down to the container), which the agent reads into output
// buffers and writes stdin into. With a terminal, crun hands over a pty master through the console
// socket; the master carries both directions and there is no separate stderr.
import { openSync } from "node:fs";
import net from "node:net";
import type { Sys } from "../sys/types.js";
import { failedPrecondition } from "../core/errors.js";
import { ChildFds } from "../core/fds.js";
import { PtyMaster } from "../core/pty.js";
import { OutputBuffer } from "./output.js";

export interface StdioFlags {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  terminal: boolean;
}

export type StreamName = "stdout" | "stderr";

export class ProcessStdio {
  readonly stdout = new OutputBuffer();
  readonly stderr = new OutputBuffer();
  /** fds the OCI runtime gets as 0, 1, 2 when it starts the process; ours are closed right after. */
  private readonly child = new ChildFds();
  private stdinPipe: net.Socket | undefined;
  private stdinClosed = false;
  private pty: PtyMaster | undefined;
  /** Terminal input and size that arrived before the pty did. */
  private earlyInput: Buffer[] = [];
  private earlySize: { rows: number; cols: number } | undefined;
  private readonly streams: net.Socket[] = [];

  private constructor(
    readonly flags: StdioFlags,
    private readonly sys: Sys,
  ) {}

  static open(flags: StdioFlags, sys: Sys): ProcessStdio {
    const io = new ProcessStdio(flags, sys);
    try {
      io.setup();
    } catch (err) {
      io.close();
      throw err;
    }
    return io;
  }

  private setup() {
    if (this.flags.terminal) {
      // crun's own stdio does not reach the container; the pty does.
      this.child.set([openSync("/dev/null", "r"), openSync("/dev/null", "w"), openSync("/dev/null", "w")]);
      this.stderr.end();
      if (!this.flags.stdout) this.stdout.end();
      return;
    }
    let stdin: number;
    if (this.flags.stdin) {
      const [r, w] = this.sys.pipe();
      stdin = r;
      this.stdinPipe = new net.Socket({ fd: w, readable: false, writable: true });
      this.stdinPipe.on("error", () => {});
      this.streams.push(this.stdinPipe);
    } else {
      stdin = openSync("/dev/null", "r");
    }
    // Held as soon as opened, so that a failure further on closes them (see open).
    const fds: [number, number, number] = [stdin, -1, -1];
    this.child.set(fds);
    fds[1] = this.outputPipe(this.flags.stdout, this.stdout);
    fds[2] = this.outputPipe(this.flags.stderr, this.stderr);
  }

  private outputPipe(wanted: boolean, buf: OutputBuffer): number {
    if (!wanted) {
      buf.end();
      return openSync("/dev/null", "w");
    }
    const [r, w] = this.sys.pipe();
    const s = new net.Socket({ fd: r, readable: true, writable: false });
    this.streams.push(s);
    buf.attach(s);
    return w;
  }

  childFds(): [number, number, number] {
    return this.child.get();
  }

  /** The runtime has its copies (or failed): drop ours, so EOF comes when the process closes its own. */
  releaseChildFds() {
    this.child.release();
  }

  /** Terminal mode: the pty master crun sent through the console socket. Takes ownership of the fd. */
  attachConsole(masterFd: number) {
    const pty = new PtyMaster(this.sys, masterFd);
    this.pty = pty;
    if (this.earlySize) pty.resize(this.earlySize.rows, this.earlySize.cols);
    const master = pty.stream;
    this.streams.push(master);
    master.on("error", () => {});
    if (this.flags.stdout) this.stdout.attach(master);
    else master.resume();
    for (const d of this.earlyInput.splice(0)) pty.write(d);
    if (this.stdinClosed) pty.endInput();
  }

  async write(data: Uint8Array): Promise<void> {
    if (!this.flags.stdin) throw failedPrecondition("the process was created without stdin");
    if (this.stdinClosed) throw failedPrecondition("stdin is closed");
    const buf = Buffer.from(data);
    if (this.flags.terminal) {
      if (!this.pty) {
        this.earlyInput.push(buf);
        return;
      }
      return writeTo(this.pty.stream, buf);
    }
    return writeTo(this.stdinPipe!, buf);
  }

  /** The process sees end of input: EOF on its pipe, or EOT on the terminal (canonical mode). */
  closeStdin() {
    if (this.stdinClosed) return;
    this.stdinClosed = true;
    if (this.flags.terminal) {
      this.pty?.endInput();
      return;
    }
    const p = this.stdinPipe;
    if (!p) return;
    // end() would shutdown(2) a pipe (ENOTSOCK); closing the fd once written is what EOF needs.
    if (p.writableLength === 0) p.destroy();
    else p.once("drain", () => p.destroy());
  }

  read(stream: StreamName, signal?: AbortSignal) {
    return (stream === "stdout" ? this.stdout : this.stderr).read(signal);
  }

  /** Sizes the terminal; a process without one ignores it (as containerd's runc shim does). */
  resize(rows: number, cols: number) {
    if (!this.flags.terminal) return;
    if (this.pty) this.pty.resize(rows, cols);
    else this.earlySize = { rows, cols };
  }

  /** The process is gone: let the pty master reach EOF once its output is read. */
  processExited() {
    this.pty?.processExited();
  }

  /** The process failed to start: nothing will ever be written. */
  abandon() {
    this.releaseChildFds();
    this.close();
  }

  close() {
    this.processExited();
    this.releaseChildFds();
    for (const s of this.streams) s.destroy();
    this.streams.length = 0;
    this.stdout.close();
    this.stderr.close();
  }
}

function writeTo(s: net.Socket, data: Buffer): Promise<void> {
  if (s.destroyed) return Promise.reject(failedPrecondition("stdin is closed"));
  return new Promise((resolve, reject) => {
    s.write(data, (err) => (err ? reject(failedPrecondition(`write to stdin: ${err.message}`)) : resolve()));
  });
}
