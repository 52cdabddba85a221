// The shim's log sink: the log FIFO containerd opens for each shim bundle, whose lines containerd
// copies into its own log. A node-grouped daemon serves many bundles; any one live pipe will do.
import { closeSync, constants, openSync, writeSync } from "node:fs";

export class LogPipes {
  private fds = new Map<string, number>();

  /** Adds the log FIFO of a bundle. containerd holds it open read-write, so a non-blocking open succeeds. */
  add(key: string, fifoPath: string) {
    if (this.fds.has(key)) return;
    try {
      this.fds.set(key, openSync(fifoPath, constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW));
    } catch {
      // No log pipe (e.g. started by hand): logs are dropped rather than failing the shim.
    }
  }

  remove(key: string) {
    const fd = this.fds.get(key);
    if (fd === undefined) return;
    this.fds.delete(key);
    try {
      closeSync(fd);
    } catch {}
  }

  /** The sink for core/log's Logger: one pipe is enough, every bundle's ends up in the same containerd log. */
  readonly write = (line: string) => {
    for (const [key, fd] of this.fds) {
      try {
        writeSync(fd, line);
        return;
      } catch {
        this.remove(key);
      }
    }
  };
}
