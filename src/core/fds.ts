// The three fds a process being started gets as 0, 1, 2: held by whoever set up its stdio until the
// OCI runtime has its own copies, then closed, so that EOF comes when the process closes its ends.
import { closeSync } from "node:fs";

/** Closes an fd, ignoring errors (it may be gone already). */
export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {}
}

export class ChildFds {
  private fds: [number, number, number] = [-1, -1, -1];

  set(fds: [number, number, number]): void {
    this.fds = fds;
  }

  get(): [number, number, number] {
    return this.fds;
  }

  /** Hands the fds to the caller, who then owns (and closes) them. */
  take(): [number, number, number] {
    const fds = this.fds;
    this.fds = [-1, -1, -1];
    return fds;
  }

  release(): void {
    for (const fd of this.take()) if (fd >= 0) closeQuietly(fd);
  }
}
