// The one directory a sandbox shares with its guest (9p tag "cocoon", /mnt/cocoon in the guest).
// Each container gets <shared>/<id>/rootfs (containerd's rootfs mounted there) and
// <shared>/<id>/mounts/<n> (its bind-mount sources, bound in one by one), so containers added to a
// running pod appear without restarting the VM, and nothing else of the host is reachable.
//
// Guest root writes this directory (it must: container rootfs are written through it), so it can
// plant symlinks and swap directories while we work. Everything here goes through beneath.ts: each
// name is created with mkdirat and opened with openat2 beneath the share without following links or
// crossing mounts, and mounts are made onto those fds. That keeps one directory tree and rests on the
// kernel's resolve flags alone; mounting into a host-only tree bound read-only into the share would
// need mount propagation to carry each later mount over, and a second tree to clean up.
import { closeSync, fstatSync, readlinkSync, realpathSync } from "node:fs";
import path from "node:path";
import { invalidArgument, ShimError } from "../../core/errors.js";
import { mountCalls, mountFailed } from "../../shim/mount.js";
import type { Mount, OciSpec } from "../../shim/runtime.js";
import { AT_FDCWD, O_CLOEXEC, O_PATH, RESOLVE_NO_SYMLINKS, type Sys } from "../../sys/types.js";
import { createFile, ensureDir, fdPath, isEntryName, isUnder, openRoot, removeEntry, removeTree, reopen, unmountUnder, withFd, type Root } from "./beneath.js";

import { GUEST_SHARED_DIR } from "../../core/guest-abi.js";

export { GUEST_SHARED_DIR };

interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

const isBind = (m: OciMount) => m.type === "bind" || (m.options ?? []).some((o) => o === "bind" || o === "rbind");

/** Mounts the container's filesystems into the shared dir; returns the spec as the guest must see it. */
export function shareContainer(sys: Sys, sharedDir: string, id: string, rootfs: readonly Mount[], hostRootfs: string, spec: OciSpec): OciSpec {
  if (!isEntryName(id)) throw invalidArgument(`container id ${JSON.stringify(id)} cannot name a directory`);
  const guestDir = path.posix.join(GUEST_SHARED_DIR, id);
  const root = openRoot(sys, sharedDir);
  const inShare = (p: string) => isUnder(p, root.path) || isUnder(p, path.resolve(sharedDir));
  try {
    // Whatever the guest left under this name is not the host's: it goes, and the dir is made anew.
    unshareAt(sys, root, id);
    return withFd(ensureDir(sys, root.fd, id, where(root, id)), (dirFd) => {
      const mounts = rootfs.length > 0 ? rootfs : [{ type: "bind", source: realpathSync(hostRootfs), target: "", options: ["rbind"] }];
      for (const m of mounts) {
        for (const p of hostPathsOf(m)) {
          if (inShare(p) || inShare(realpathOrSelf(p))) throw invalidArgument(`rootfs mount ${m.type} uses ${p}, inside the pod's shared dir`);
        }
      }
      withFd(ensureDir(sys, dirFd, "rootfs", where(root, id, "rootfs")), (fd) => mountOnto(sys, dirFd, "rootfs", fd, mounts, where(root, id, "rootfs")));

      const guest = structuredClone(spec) as OciSpec & { mounts?: OciMount[] };
      guest.root = { ...(spec.root ?? {}), path: path.posix.join(guestDir, "rootfs") };
      const binds = (guest.mounts ?? []).flatMap((m, i) => (isBind(m) && m.source ? [{ m, i }] : []));
      if (binds.length === 0) return guest;
      withFd(ensureDir(sys, dirFd, "mounts", where(root, id, "mounts")), (mountsFd) => {
        for (const { m, i } of binds) {
          const name = String(i);
          const at = where(root, id, "mounts", name);
          withFd(openSource(sys, m, inShare), (src) => {
            const target = fstatSync(src).isDirectory() ? ensureDir(sys, mountsFd, name, at) : createFile(sys, mountsFd, name, at);
            const ro = (m.options ?? []).includes("ro");
            withFd(target, (fd) => mountOnto(sys, mountsFd, name, fd, [{ type: "bind", source: fdPath(src), target: "", options: ["rbind", ro ? "ro" : "rw"] }], at));
          });
          m.source = path.posix.join(guestDir, "mounts", name);
        }
      });
      return guest;
    });
  } catch (err) {
    try {
      unshareAt(sys, root, id);
    } catch {}
    throw err;
  } finally {
    closeSync(root.fd);
  }
}

/** Unmounts what was shared for `id`, wherever the guest moved it below its dir, and removes the dir. */
export function unshareContainer(sys: Sys, sharedDir: string, id: string) {
  if (!isEntryName(id)) return;
  const root = openShare(sys, sharedDir);
  if (!root) return;
  try {
    unshareAt(sys, root, id);
  } finally {
    closeSync(root.fd);
  }
}

/**
 * Unmounts everything at or below the shared dir, whatever its name and wherever the guest moved it,
 * then removes the pod's run dir (which holds the shared dir) without following links or crossing
 * into a mount that is still there.
 */
export function unshareAll(sys: Sys, sharedDir: string, runDir: string) {
  const root = openShare(sys, sharedDir);
  if (root) {
    try {
      unmountUnder(sys, root, "");
    } finally {
      closeSync(root.fd);
    }
  }
  removeTree(sys, runDir);
}

function openShare(sys: Sys, sharedDir: string): Root | undefined {
  try {
    return openRoot(sys, sharedDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

function unshareAt(sys: Sys, root: Root, id: string) {
  unmountUnder(sys, root, id);
  removeEntry(sys, root.fd, id);
}

const where = (root: Root, ...names: string[]) => path.join(root.path, ...names);

/** Mounts `mounts` in order onto the fresh directory or file `fd`, which is `name` in `dirFd`. */
function mountOnto(sys: Sys, dirFd: number, name: string, fd: number, mounts: readonly Mount[], at: string) {
  let mounted = false;
  for (const m of mounts) {
    const calls = mountCalls(m, at);
    try {
      for (const c of calls) {
        if (!mounted) {
          sys.mount(c.source, fdPath(fd), c.fstype, c.flags, c.data);
          mounted = true;
          continue;
        }
        // Our fd is the directory now covered: a remount, or a mount stacked on top, must reach what
        // is mounted there, found again by name beneath the verified parent.
        withFd(reopen(sys, dirFd, name, at), (top) => sys.mount(c.source, fdPath(top), c.fstype, c.flags, c.data));
      }
    } catch (err) {
      if (err instanceof ShimError) throw err;
      throw mountFailed(m, at, err);
    }
  }
}

/**
 * The host file or directory a bind mount of the spec names, opened (O_PATH) for mounting from. Host
 * paths are the host's to resolve, but never into the shared dir, which the guest writes: the resolved
 * path is opened without following links, so what is mounted is exactly what was checked.
 */
function openSource(sys: Sys, m: OciMount, inShare: (p: string) => boolean): number {
  const source = m.source!;
  let real: string;
  try {
    real = realpathSync(source);
  } catch {
    throw invalidArgument(`mount source ${source} for ${m.destination} does not exist`);
  }
  const refuse = () => invalidArgument(`mount source ${source} for ${m.destination} is inside the pod's shared dir, which the guest can write`);
  if (inShare(path.resolve(source)) || inShare(real)) throw refuse();
  let fd: number;
  try {
    fd = sys.openat2(AT_FDCWD, real, O_PATH | O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS);
  } catch (err) {
    throw invalidArgument(`mount source ${source} for ${m.destination} changed while it was being opened: ${(err as Error).message}`);
  }
  if (inShare(readlinkSync(fdPath(fd)))) {
    closeSync(fd);
    throw refuse();
  }
  return fd;
}

/** Host paths a rootfs mount from containerd reads: a bind's source, overlay's layer directories. */
function hostPathsOf(m: Mount): string[] {
  const out = m.source.startsWith("/") ? [m.source] : [];
  for (const o of m.options) {
    const kv = /^(lowerdir|upperdir|workdir)=(.*)$/.exec(o);
    if (kv) out.push(...kv[2]!.split(":").filter((p) => p.startsWith("/")));
  }
  return out.map((p) => path.resolve(p));
}

function realpathOrSelf(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}
