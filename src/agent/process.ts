// One container process (the init, or an exec) as the agent tracks it: core's process life plus
// its stdio, which learns of the exit too.
import { ProcessLife, type ExitInfo } from "../core/process.js";
import type { ProcessStdio } from "./stdio.js";

export type { ExitInfo as ProcessExit } from "../core/process.js";

export class AgentProcess extends ProcessLife {
  constructor(
    readonly containerId: string,
    readonly execId: string,
    readonly stdio: ProcessStdio,
  ) {
    super();
  }

  /** Records the exit (the first report wins): stdio is told, waiters are answered. */
  exited(e: ExitInfo): void {
    if (this.setExited(e)) this.stdio.processExited();
  }
}
