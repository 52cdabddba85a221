// Starting a container process through the OCI runtime (`create` for an init, `exec` for the rest),
// the same on the host and in the guest: lend the runtime the process's stdio fds, take the pty
// master it sends when the process has a terminal, and learn the pid from the pid file.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import type { FdReceiver, Sys } from "../sys/types.js";

/** How long the runtime may take to send a terminal's pty master once it has been started. */
export const CONSOLE_TIMEOUT_MS = 30_000;

/** The stdio side of a process being started (host: FIFOs and files; guest: pipes). */
export interface LaunchIo {
  /** fds for the runtime, as the process's 0, 1, 2. */
  childFds(): [number, number, number];
  /** The runtime has its copies (or failed): drop ours. */
  releaseChildFds(): void;
  /** Takes ownership of the pty master. */
  attachConsole(masterFd: number): void;
}

export interface LaunchOptions {
  sys: Pick<Sys, "receiveFd">;
  io: LaunchIo;
  terminal: boolean;
  /** A directory only root can write, for the console socket. */
  consoleDir: string;
  pidFile: string;
}

export function readPidFile(file: string): number {
  const pid = Number(readFileSync(file, "utf8").trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`bad pid file ${file}`);
  return pid;
}

/**
 * Runs `invoke` (the runtime's create or exec, given the console socket path when there is a
 * terminal) and returns the new process's pid. On failure nothing of ours is left; undoing what the
 * runtime made is the caller's (only it knows whether `invoke` got that far).
 */
export async function launchProcess(invoke: (consoleSocket: string | undefined) => Promise<unknown>, o: LaunchOptions): Promise<number> {
  let receiver: FdReceiver | undefined;
  try {
    if (o.terminal) receiver = o.sys.receiveFd(path.join(o.consoleDir, `pty-${process.pid}-${randomBytes(6).toString("hex")}.sock`), CONSOLE_TIMEOUT_MS);
    try {
      await invoke(receiver?.path);
    } finally {
      o.io.releaseChildFds();
    }
    if (receiver) o.io.attachConsole(await receiver.received);
    return readPidFile(o.pidFile);
  } catch (err) {
    receiver?.close();
    throw err;
  }
}
