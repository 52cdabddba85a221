// `cocoon pod`: a small pod workflow over the CRI of a containerd that is already running (the node's own),
// so that a node can be checked without kubelet: run a pod from a spec file, list, exec, read logs and stats,
// stop and remove. It sends what kubelet would send; the pods it makes are ordinary CRI pods.
// One module per verb; this one only puts them under `pod`.
import { Command } from "commander";
import { execCommand } from "./exec.js";
import { logsCommand } from "./logs.js";
import { lsCommand } from "./ls.js";
import { portForwardCommand } from "./port-forward.js";
import { runCommand } from "./run.js";
import { statsCommand } from "./stats.js";
import { rmCommand, stopCommand } from "./take-down.js";

export function podCommand(): Command {
  return new Command("pod")
    .description("run and inspect pods through an existing containerd's CRI (as kubelet would), to check a node without kubelet")
    .addCommand(runCommand())
    .addCommand(lsCommand())
    .addCommand(execCommand())
    .addCommand(logsCommand())
    .addCommand(statsCommand())
    .addCommand(portForwardCommand())
    .addCommand(stopCommand())
    .addCommand(rmCommand());
}
