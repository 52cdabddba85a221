// One container process (the init, or an exec) as the agent tracks it: its stdio, its pid once
// started, and its exit, which any number of WaitProcess calls may await before or after it happens.
import type { Exit } from "../sys/reaper.js";
import type { ProcessStdio } from "./stdio.js";

export interface ProcessExit {
  status: number;
  at: Date;
}

export class AgentProcess {
  pid = 0;
  exit: ProcessExit | undefined;
  private waiters: Array<(e: ProcessExit) => void> = [];

  constructor(
    readonly containerId: string,
    readonly execId: string,
    readonly stdio: ProcessStdio,
  ) {}

  get started(): boolean {
    return this.pid > 0;
  }

  get running(): boolean {
    return this.started && !this.exit;
  }

  /** Records the exit (the first report wins): stdio is told, waiters are answered. */
  exited(e: Exit | ProcessExit): void {
    if (this.exit) return;
    this.exit = { status: e.status, at: e.at };
    this.stdio.processExited();
    for (const w of this.waiters.splice(0)) w(this.exit);
  }

  /** The exit, once it happened. Aborting `signal` stops waiting (the exit is not consumed). */
  wait(signal?: AbortSignal): Promise<ProcessExit> {
    if (this.exit) return Promise.resolve(this.exit);
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const onExit = (e: ProcessExit) => {
        signal?.removeEventListener("abort", onAbort);
        resolve(e);
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(onExit);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(onExit);
    });
  }
}
