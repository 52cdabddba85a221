// What `delete` does for a vm-mode container whose daemon may be gone: kill the pod's QEMU (when
// this container owned the VM), remove its tap device and unmount what was shared with the guest.
import { readFileSync } from "node:fs";
import type { BundleState } from "../../shim/delete.js";
import type { Sys } from "../../sys/types.js";
import { teardownTap } from "./network.js";
import type { VmBundleState } from "./containers.js";
import { unshareAll, unshareContainer } from "./sharedfs.js";

function isQemu(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("qemu-system");
  } catch {
    return false;
  }
}

export async function cleanupVmBundle(sys: Sys, id: string, _bundle: string, state: BundleState): Promise<{ pid: number }> {
  const s = state as VmBundleState;
  // A failure to unshare is reported, but only after the pod's QEMU and tap are gone.
  let failure: unknown;
  try {
    unshareContainer(sys, s.sharedDir, id);
  } catch (err) {
    failure = err;
  }
  if (s.isSandbox) {
    // The pid file is checked against /proc so a recycled pid is never killed.
    if (s.qemuPid && isQemu(s.qemuPid)) {
      try {
        process.kill(s.qemuPid, "SIGKILL");
      } catch {}
    }
    if (s.netns && s.iface) await teardownTap(s.netns, s.iface).catch(() => undefined);
    try {
      unshareAll(sys, s.sharedDir, s.runDir);
    } catch (err) {
      failure ??= err;
    }
  }
  if (failure) throw failure;
  return { pid: 0 };
}
