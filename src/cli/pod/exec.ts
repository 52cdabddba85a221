// `cocoon pod exec`: run a command in a container (CRI ExecSync) and exit with its exit code.
import type { Command } from "commander";
import type { CriClient } from "../cri/client.js";
import { criCommand, withCri } from "./command.js";
import { DEFAULT_CALL_SECONDS, describeError, PodCliError, processIO, type CommonOptions, type PodIO } from "./common.js";
import { shortId } from "./output.js";
import { resolveContainer } from "./resolve.js";

export interface ExecOptions extends CommonOptions {}

/** Exit code when the command could not be run at all (the CRI call failed), as `docker exec` uses it. */
export const EXEC_FAILED = 126;

export async function podExec(cri: CriClient, ref: string, cmd: string[], o: ExecOptions, io: PodIO = processIO): Promise<number> {
  if (cmd.length === 0) throw new PodCliError("no command given: cocoon pod exec <container> -- <command> [args…]");
  const { container } = await resolveContainer(cri, ref, DEFAULT_CALL_SECONDS * 1000);
  let r;
  try {
    // Without --timeout the command may run as long as it likes: no CRI timeout and no call deadline.
    const secs = o.timeout ?? 0;
    r = await cri.execSync({ containerId: container.id, cmd, timeout: BigInt(secs) }, { timeoutMs: secs > 0 ? secs * 1000 + 10_000 : 0 });
  } catch (err) {
    throw new PodCliError(`exec in ${container.metadata?.name ?? ""} (${shortId(container.id)}) failed: ${describeError(err)}`, EXEC_FAILED);
  }
  if (r.stdout.length) io.out(r.stdout);
  if (r.stderr.length) io.err(r.stderr);
  return r.exitCode;
}

export function execCommand(): Command {
  return criCommand("exec", "run a command in a container (ExecSync) and exit with its exit code", "seconds the command may run (default: no limit)")
    .argument("<container>", "container id (prefix), name, or <pod>/<container>")
    .argument("[command...]", "the command, after --")
    .usage("[options] <container> -- <command> [args...]")
    .showHelpAfterError("(the command goes after --: cocoon pod exec <container> -- ls -l)")
    .addHelpText("after", `\nExit code: the command's; ${EXEC_FAILED} when it could not be run; 1 for other errors.`)
    .action(withCri((cri, ref: string, command: string[], _o: unknown, cmd: Command) => podExec(cri, ref, command, cmd.opts<ExecOptions>())));
}
