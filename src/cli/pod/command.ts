// The commander side every verb shares: --endpoint/--timeout, option value parsers, and running an action
// with a connected CRI client, turning its result or error into the exit code.
import { isAbsolute, resolve } from "node:path";
import { Command, InvalidArgumentError, Option } from "commander";
import { CriClient } from "../cri/client.js";
import { callMsOf, DEFAULT_CALL_SECONDS, DEFAULT_ENDPOINT, describeError, PodCliError, type CommonOptions } from "./common.js";

/** The socket path of `--endpoint` / $CONTAINER_RUNTIME_ENDPOINT: a path, optionally as `unix://<path>`. */
export function endpointPath(value: string | undefined): string {
  const v = (value ?? "").trim() || DEFAULT_ENDPOINT;
  const bare = v.startsWith("unix://") ? v.slice("unix://".length) : v;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(bare)) throw new PodCliError(`unsupported CRI endpoint "${v}": only unix sockets (a path or unix:///path)`);
  if (bare === "") throw new PodCliError(`empty CRI endpoint "${v}"`);
  return isAbsolute(bare) ? bare : resolve(bare);
}

export function seconds(allowZero: boolean) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || (!allowZero && n === 0)) throw new InvalidArgumentError(`expected a whole number of seconds${allowZero ? "" : " > 0"}, got "${v}"`);
    return n;
  };
}

export function count(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected a whole number >= 0, got "${v}"`);
  return n;
}

/** A subcommand with --endpoint and --timeout; its action gets a connected client and returns the exit code. */
export function criCommand(name: string, description: string, timeoutHelp = `deadline for each CRI call, in seconds (default ${DEFAULT_CALL_SECONDS})`): Command {
  return new Command(name)
    .description(description)
    .addOption(
      new Option("--endpoint <socket>", "the CRI endpoint: containerd's unix socket, as a path or unix:///path")
        .env("CONTAINER_RUNTIME_ENDPOINT")
        .default(DEFAULT_ENDPOINT),
    )
    .option("--timeout <seconds>", timeoutHelp, seconds(false));
}

export function withCri<A extends unknown[]>(fn: (cri: CriClient, ...args: A) => Promise<number>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    // A closed stdout (`cocoon pod ls | head`) ends the output, not the command with a stack trace.
    process.stdout.on("error", () => {});
    const cmd = args[args.length - 1] as Command;
    const o = cmd.opts<CommonOptions>();
    let cri: CriClient | undefined;
    try {
      cri = await CriClient.connect(endpointPath(o.endpoint), { timeoutMs: 5_000, defaultTimeoutMs: callMsOf(o) });
      process.exitCode = await fn(cri, ...args);
    } catch (err) {
      process.stderr.write(`cocoon pod ${cmd.name()}: ${describeError(err)}\n`);
      process.exitCode = err instanceof PodCliError ? err.exitCode : 1;
    } finally {
      cri?.close();
    }
  };
}
