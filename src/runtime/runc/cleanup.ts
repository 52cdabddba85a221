// What `delete` does for a runc-mode container whose daemon may be gone: force-delete it with the
// OCI runtime and unmount its rootfs. Idempotent: a container that no longer exists is fine.
import { readFileSync } from "node:fs";
import path from "node:path";
import type { BundleState } from "../../shim/delete.js";
import { runChild } from "../../sys/children.js";
import { unmountAll } from "../../shim/mount.js";
import type { Sys } from "../../sys/types.js";

export interface RuncBundleState extends BundleState {
  binary: string;
  root: string;
  rootfs: string;
  mounted: boolean;
}

export async function cleanupRuncBundle(sys: Sys, id: string, bundle: string, state: BundleState): Promise<{ pid: number }> {
  const s = state as RuncBundleState;
  let pid = 0;
  try {
    pid = Number(readFileSync(path.join(bundle, "init.pid"), "utf8").trim()) || 0;
  } catch {}
  await runChild(s.binary, ["--root", s.root, "delete", "--force", id], { timeoutMs: 3000 }).catch(() => undefined);
  if (s.mounted) unmountAll(sys, s.rootfs);
  return { pid };
}
