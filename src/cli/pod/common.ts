// What every `cocoon pod` verb shares: defaults, the user-facing error, where output goes, how a CRI
// failure is explained, and Ctrl-C handling.
import * as grpc from "@grpc/grpc-js";
import { CriError } from "../cri/client.js";
import { HANDLERS } from "../lab/lab.js";

export const DEFAULT_ENDPOINT = "/run/containerd/containerd.sock";
export const DEFAULT_LOG_ROOT = "/var/log/cocoon-pods";
/** The runtime handlers `cocoon install` registers; `rm --all` only touches their pods. */
export const COCOON_HANDLERS: readonly string[] = Object.keys(HANDLERS);

export const DEFAULT_CALL_SECONDS = 30;
export const DEFAULT_GRACE_SECONDS = 10;

/** An error meant for the user as is; `exitCode` is the process's exit code. */
export class PodCliError extends Error {
  override readonly name = "PodCliError";
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** Where the command's output goes (tests pass their own). */
export interface PodIO {
  out(text: string | Uint8Array): void;
  err(text: string | Uint8Array): void;
}

export const processIO: PodIO = {
  out: (t) => void process.stdout.write(t),
  err: (t) => void process.stderr.write(t),
};

/** The options every verb has. */
export interface CommonOptions {
  endpoint?: string;
  timeout?: number;
  json?: boolean;
}

export const callMsOf = (o: CommonOptions) => (o.timeout ?? DEFAULT_CALL_SECONDS) * 1000;

/** Error text with a hint for the failures a user can do something about. */
export function describeError(err: unknown): string {
  if (err instanceof CriError) {
    if (err.code === grpc.status.UNIMPLEMENTED) return `${err.message} (is containerd's CRI plugin enabled? check disabled_plugins in its config)`;
    if (err.code === grpc.status.UNAVAILABLE) return `${err.message} (is containerd running?)`;
    if (err.code === grpc.status.DEADLINE_EXCEEDED) return `${err.message} (raise --timeout?)`;
    return err.message;
  }
  if ((err as NodeJS.ErrnoException).code === "ENOENT" && (err as NodeJS.ErrnoException).path) return `no such file: ${(err as NodeJS.ErrnoException).path}`;
  return (err as Error).message ?? String(err);
}

/** Aborts on Ctrl-C/SIGTERM, so that a half-started pod is taken down again instead of left behind. */
export function interruptible(): { signal: AbortSignal; done(): void } {
  const ac = new AbortController();
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const on = (sig: NodeJS.Signals) => ac.abort(new PodCliError(`interrupted by ${sig}`, 130));
  for (const s of signals) process.on(s, on);
  return { signal: ac.signal, done: () => signals.forEach((s) => process.removeListener(s, on)) };
}
