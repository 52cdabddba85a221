// A pod VM's run dir on the host (<state_dir>/<hash>): QEMU's sockets and pid file, the console log
// and the directory shared with the guest. It is named after the pod's containerd namespace and
// sandbox id together, so a pod of the same id in another namespace never lands on it, and it is
// claimed with an `owner` record (shim pid and start time): a clash with a live owner is refused,
// and only a dead owner's leftovers are cleared, unmounting first so that removing them can never
// reach into a container's rootfs or volume.
import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { alreadyExists } from "../../core/errors.js";
import { processStartTime } from "../../shim/fast-start.js";
import { createStateFile, ensurePrivateDir, readStateFileOrUndefined } from "../../shim/statefs.js";
import type { Sys } from "../../sys/types.js";
import { unshareAll } from "./sharedfs.js";

/** Short, fixed-length names keep socket paths under the 108-byte limit. */
export const runDirName = (namespace: string, sandboxId: string) =>
  createHash("sha256").update(`${namespace}\0${sandboxId}`).digest("hex").slice(0, 16);

const OWNER = "owner";

/** The live shim that owns a run dir, if any: "<pid> <start time>" naming a process that still runs. */
export function runDirOwner(runDir: string): number | undefined {
  const [pid, start] = (readStateFileOrUndefined(path.join(runDir, OWNER)) ?? "").trim().split(" ");
  return pid && start && processStartTime(Number(pid)) === start ? Number(pid) : undefined;
}

/** Creates the pod's run dir and its shared dir for this shim, or refuses with AlreadyExists. */
export function claimRunDir(sys: Sys, stateDir: string, namespace: string, sandboxId: string): { runDir: string; sharedDir: string } {
  ensurePrivateDir(stateDir);
  const runDir = path.join(stateDir, runDirName(namespace, sandboxId));
  try {
    mkdirSync(runDir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    const owner = runDirOwner(runDir);
    if (owner !== undefined) {
      throw alreadyExists(`pod ${sandboxId} in namespace ${namespace} already has a VM (run dir ${runDir}, shim pid ${owner})`);
    }
    releaseRunDir(sys, runDir);
    mkdirSync(runDir, { mode: 0o700 });
  }
  createStateFile(path.join(runDir, OWNER), `${process.pid} ${processStartTime(process.pid) ?? "?"}`);
  const sharedDir = path.join(runDir, "shared");
  mkdirSync(sharedDir, { mode: 0o700 });
  return { runDir, sharedDir };
}

/**
 * Removes a run dir: whatever is still mounted in its guest-writable shared dir (mountinfo says)
 * is unmounted first, and nothing the guest planted there is followed (sharedfs.unshareAll).
 */
export function releaseRunDir(sys: Sys, runDir: string) {
  unshareAll(sys, path.join(runDir, "shared"), runDir);
}
