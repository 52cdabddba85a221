// Process plumbing shared by the shim and the guest agent (not FFI itself): see reaper.ts.
// Every child process the shim forks goes through here, so the reaper can tell Node's own children
// (which libuv reaps and reports through 'exit') from re-parented container processes (which we reap).
import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";

const own = new Set<number>();

export function isOwnChild(pid: number): boolean {
  return own.has(pid);
}

export function spawnChild(cmd: string, args: readonly string[], opts: SpawnOptions): ChildProcess {
  const child = spawn(cmd, args, opts);
  const pid = child.pid;
  if (pid !== undefined) {
    own.add(pid);
    child.once("exit", () => own.delete(pid));
    child.once("error", () => own.delete(pid));
  }
  return child;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** It was killed for running past timeoutMs. */
  timedOut: boolean;
}

/** Runs a command to completion, collecting its output; rejects only if it cannot be spawned. */
export function runChild(
  cmd: string,
  args: readonly string[],
  opts: SpawnOptions & { input?: string | Uint8Array; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const { input, timeoutMs, ...rest } = opts;
    const child = spawnChild(cmd, args, { ...rest, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.setEncoding("utf8").on("data", (d) => (stdout += d));
    child.stderr!.setEncoding("utf8").on("data", (d) => (stderr += d));
    let timedOut = false;
    const timer = timeoutMs
      ? setTimeout(() => {
          timedOut = true;
          child.kill("SIGKILL");
        }, timeoutMs)
      : undefined;
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
    child.stdin!.on("error", () => {});
    child.stdin!.end(input ?? "");
  });
}
