// The one directory a sandbox shares with its guest (9p tag "cocoon", /mnt/cocoon in the guest).
// Each container gets <shared>/<id>/rootfs (containerd's rootfs mounted there) and
// <shared>/<id>/mounts/<n> (its bind-mount sources, bound in one by one), so containers added to a
// running pod appear without restarting the VM, and nothing else of the host is reachable.
import { existsSync, mkdirSync, realpathSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { invalidArgument } from "../../shim/errors.js";
import { MS, mountAll, unmountAll } from "../../shim/mount.js";
import type { Mount, OciSpec } from "../../shim/runtime.js";
import type { Sys } from "../../sys/types.js";

export const GUEST_SHARED_DIR = "/mnt/cocoon";

interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

const isBind = (m: OciMount) => m.type === "bind" || (m.options ?? []).some((o) => o === "bind" || o === "rbind");

/** Mounts the container's filesystems into the shared dir; returns the spec as the guest must see it. */
export function shareContainer(sys: Sys, sharedDir: string, id: string, rootfs: readonly Mount[], hostRootfs: string, spec: OciSpec): OciSpec {
  const dir = path.join(sharedDir, id);
  const guestDir = path.posix.join(GUEST_SHARED_DIR, id);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  try {
    const rootTarget = path.join(dir, "rootfs");
    if (rootfs.length > 0) mountAll(sys, rootfs, rootTarget);
    else {
      // A bundle that carries its own rootfs directory: bind it in.
      mkdirSync(rootTarget, { recursive: true });
      sys.mount(realpathSync(hostRootfs), rootTarget, "", MS.BIND | MS.REC, "");
    }
    const guest = structuredClone(spec) as OciSpec & { mounts?: OciMount[] };
    guest.root = { ...(spec.root ?? {}), path: path.posix.join(guestDir, "rootfs") };
    (guest.mounts ?? []).forEach((m, i) => {
      if (!isBind(m) || !m.source) return;
      let src: string;
      try {
        // Resolved on the host: the guest only ever sees what this path really is, symlinks included.
        src = realpathSync(m.source);
      } catch {
        throw invalidArgument(`mount source ${m.source} for ${m.destination} does not exist`);
      }
      const target = path.join(dir, "mounts", String(i));
      mkdirSync(path.dirname(target), { recursive: true });
      if (statSync(src).isDirectory()) mkdirSync(target, { recursive: true });
      else if (!existsSync(target)) writeFileSync(target, "");
      const ro = (m.options ?? []).includes("ro");
      sys.mount(src, target, "", MS.BIND | MS.REC, "");
      if (ro) sys.mount("", target, "", MS.BIND | MS.REMOUNT | MS.RDONLY | MS.REC, "");
      m.source = path.posix.join(guestDir, "mounts", String(i));
    });
    return guest;
  } catch (err) {
    unshareContainer(sys, sharedDir, id);
    throw err;
  }
}

export function unshareContainer(sys: Sys, sharedDir: string, id: string) {
  const dir = path.join(sharedDir, id);
  unmountAll(sys, dir);
  rmSync(dir, { recursive: true, force: true });
}
