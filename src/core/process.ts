// One container process (an init or an exec) as the host's task manager and the guest agent both
// track it: created -> running (-> paused) -> stopped, its pid once started, and its exit, which any
// number of waits may await before or after it happens.
import { errorText, invalidArgument, notFound } from "./errors.js";
import { AbortableWaiters } from "./waiters.js";

export type ProcessStatus = "created" | "running" | "paused" | "stopped";

export interface ExitInfo {
  /** Exit code, or 128 + signal number. */
  status: number;
  at: Date;
}

export class ProcessLife {
  pid = 0;
  status: ProcessStatus = "created";
  exit: ExitInfo | undefined;
  private readonly waiters = new AbortableWaiters<ExitInfo>();

  /** Running or paused: it has started and not exited. */
  get alive(): boolean {
    return this.status === "running" || this.status === "paused";
  }

  /** The process runs as `pid` (unless it already exited meanwhile). */
  started(pid: number): void {
    this.pid = pid;
    if (this.status === "created") this.status = "running";
  }

  /** Records the exit; the first report wins (false for a later one). */
  setExited(exit: ExitInfo): boolean {
    if (this.exit) return false;
    this.exit = { status: exit.status, at: exit.at };
    this.status = "stopped";
    this.waiters.resolveAll(this.exit);
    return true;
  }

  /** The exit, once it happened. Aborting `signal` stops waiting (the exit is not consumed). */
  wait(signal?: AbortSignal): Promise<ExitInfo> {
    if (this.exit) return Promise.resolve(this.exit);
    return this.waiters.wait(signal);
  }

  /** The process record goes away before an exit was seen: pending waits fail with `err`. */
  abandon(err: Error): void {
    this.waiters.rejectAll(err);
  }
}

/**
 * Signals an exec'd process directly (the OCI runtime only signals a container's init). A process
 * that is gone is NotFound, as containerd-shim-runc-v2 reports it.
 */
export function signalPid(pid: number, signal: number): void {
  try {
    process.kill(pid, signal);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ESRCH") throw notFound("process already finished");
    throw invalidArgument(`kill ${pid} ${signal}: ${errorText(err)}`);
  }
}
