// The pty master an OCI runtime hands over through the console socket, for a process with a terminal.
import tty from "node:tty";
import type { Sys } from "../sys/types.js";
import { closeQuietly } from "./fds.js";

/** End of input reaches a canonical-mode terminal reader as EOT. */
const EOT = Buffer.from([4]);

export class PtyMaster {
  /** Reads the process's output and writes its input: one libuv handle per fd. */
  readonly stream: tty.ReadStream;
  private masterFd: number;
  private peer = -1;

  /** Takes ownership of `fd`. */
  constructor(
    private readonly sys: Pick<Sys, "openPtyPeer" | "setWinsize">,
    fd: number,
  ) {
    this.masterFd = fd;
    // Until the process has the slave open, reads on the master fail with EIO, which would end the
    // output early. Hold a slave fd ourselves until the process exits (see processExited).
    try {
      this.peer = sys.openPtyPeer(fd);
    } catch {}
    this.stream = new tty.ReadStream(fd);
    // destroy() closes the fd: a late resize must not ioctl a closed (or reused) fd number.
    this.stream.once("close", () => (this.masterFd = -1));
  }

  /** The master's fd; -1 once closed. */
  get fd(): number {
    return this.masterFd;
  }

  resize(rows: number, cols: number): void {
    if (this.masterFd >= 0) this.sys.setWinsize(this.masterFd, rows, cols);
  }

  write(data: Buffer, cb?: (err?: Error | null) => void): void {
    this.stream.write(data, cb);
  }

  endInput(): void {
    if (!this.stream.destroyed) this.stream.write(EOT);
  }

  /** The process is gone: let the master reach EOF once its output is read. */
  processExited(): void {
    if (this.peer < 0) return;
    closeQuietly(this.peer);
    this.peer = -1;
  }

  close(): void {
    this.processExited();
    this.stream.destroy();
  }
}
