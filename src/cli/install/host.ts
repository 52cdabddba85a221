// Running commands on the node itself, also from inside the installer DaemonSet (hostPID + privileged):
// there the node's tools and paths are reached by entering PID 1's mount namespace.
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import type { InstallLayout } from "./layout.js";

import type { CommandResult } from "../../shim/node-check.js";

export type { CommandResult };

/** Runs argv with a hard timeout (SIGKILL); `env` entries are added to this process's environment. */
export type Runner = (argv: string[], timeoutMs: number, env?: Record<string, string>) => Promise<CommandResult>;

export const runCommand: Runner = (argv, timeoutMs, env) =>
  new Promise((resolve) => {
    const opts = { timeout: timeoutMs, killSignal: "SIGKILL" as const, maxBuffer: 32 * 1024 * 1024, ...(env ? { env: { ...process.env, ...env } } : {}) };
    execFile(argv[0]!, argv.slice(1), opts, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string; killed?: boolean }) | null;
      if (e && typeof e.code === "string") {
        resolve({ code: -1, stdout: "", stderr: "", spawnError: `${argv[0]}: ${e.code}` });
        return;
      }
      const code = e ? (e.killed ? -1 : typeof e.code === "number" ? e.code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: e?.killed ? `timed out after ${timeoutMs} ms\n${stderr}` : String(stderr) });
    });
  });

/** argv to run a command in the node's mount namespace (a no-op prefix when we are on the node). */
export function onNode(layout: InstallLayout, argv: string[]): string[] {
  return layout.hostRoot === "/" ? argv : ["nsenter", "--target", "1", "--mount", "--", ...argv];
}

export interface RestartOutcome {
  restarted: boolean;
  message: string;
}

export interface RestartOptions {
  layout: InstallLayout;
  consent: boolean;
  dryRun?: boolean;
  run?: Runner;
  /** Name of PID 1 (defaults to /proc/1/comm; with hostPID that is the node's init). */
  initName?: string;
}

const MANUAL = "systemctl restart containerd";

/** Restarts containerd so that it reads the changed config; only with the operator's consent. */
export async function restartContainerd(o: RestartOptions): Promise<RestartOutcome> {
  if (!o.consent) {
    return {
      restarted: false,
      message: `containerd must be restarted to pick up the change (running containers keep running): run \`${MANUAL}\`, or pass --restart-containerd`,
    };
  }
  let init = o.initName;
  if (init === undefined) {
    try {
      init = readFileSync("/proc/1/comm", "utf8").trim();
    } catch {
      init = "";
    }
  }
  if (init !== "systemd") {
    return { restarted: false, message: `PID 1 is "${init}", not systemd: restart containerd with your init system to pick up the change` };
  }
  const argv = onNode(o.layout, ["systemctl", "restart", "containerd"]);
  if (o.dryRun) return { restarted: false, message: `would run: ${argv.join(" ")}` };
  const res = await (o.run ?? runCommand)(argv, 120_000);
  if (res.code !== 0) {
    throw new Error(`${argv.join(" ")} failed: ${res.spawnError ?? res.stderr.trim() ?? `exit ${res.code}`}`);
  }
  return { restarted: true, message: "containerd restarted" };
}
