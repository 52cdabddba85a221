// File operations inside a directory the guest can write: the pod's shared dir, exported over 9p with
// security_model=none, where guest root makes real host symlinks, renames directories and can race
// every step we take. Each name is resolved by openat2 from a directory fd we hold, with
// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: whatever the guest did, what we open is beneath that
// directory and was reached without following a link it made. mount(2) and umount2(2) only take
// paths, so they get /proc/self/fd/N of such an fd (that magic link is the opened file itself,
// wherever it has been moved), or /proc/self/fd/N/name with UMOUNT_NOFOLLOW (N the verified parent).
import { closeSync, constants, fstatSync, readdirSync, readlinkSync } from "node:fs";
import path from "node:path";
import { failedPrecondition, internal } from "../../core/errors.js";
import { mountPointsUnder } from "../../shim/mount.js";
import {
  AT_FDCWD, AT_REMOVEDIR, MNT_DETACH, O_CLOEXEC, O_PATH, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS,
  RESOLVE_NO_XDEV, UMOUNT_NOFOLLOW, type Sys,
} from "../../sys/types.js";

const { O_CREAT, O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_RDONLY } = constants;
const BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
/** Deeper trees than this (only a guest makes them) are left for the pod's own removal to report. */
const MAX_DEPTH = 64;
/** Unmount passes: a guest renaming directories meanwhile moves mount points under our feet. */
const UNMOUNT_ROUNDS = 8;

type Errno = NodeJS.ErrnoException;
const codeOf = (err: unknown) => (err as Errno).code;

export const fdPath = (fd: number) => `/proc/self/fd/${fd}`;

export const isUnder = (p: string, dir: string) => p === dir || p.startsWith(dir.endsWith("/") ? dir : dir + "/");

export function withFd<T>(fd: number, use: (fd: number) => T): T {
  try {
    return use(fd);
  } finally {
    closeSync(fd);
  }
}

/** A directory reached by a path only the host writes; the guest's names are resolved beneath it. */
export interface Root {
  fd: number;
  /** Its path as /proc/self/mountinfo names it (no symlinks). */
  path: string;
}

export function openRoot(sys: Sys, dir: string): Root {
  const fd = sys.openat2(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0, 0);
  return { fd, path: readlinkSync(fdPath(fd)) };
}

/** A name we resolve is one directory entry, never a path or a way up. */
export function isEntryName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !name.includes("/") && !name.includes("\0");
}

function refused(where: string, err: unknown): Error {
  const why: Record<string, string> = {
    ELOOP: "is a symlink",
    ENOTDIR: "is not a directory (a symlink or a file)",
    EEXIST: "already exists",
    EXDEV: "is a mount point or leaves the shared dir",
  };
  const reason = why[codeOf(err) ?? ""];
  if (!reason) return err as Error;
  return failedPrecondition(`shared dir entry ${where} ${reason}: the guest can write there, so the host will not use it`);
}

/** Opens directory `name` in `dirFd` (making it if missing) without following links or crossing
 *  mounts; `where` names it in errors. The caller owns the fd. */
export function ensureDir(sys: Sys, dirFd: number, name: string, where: string): number {
  try {
    sys.mkdirat(dirFd, name, 0o700);
  } catch (err) {
    if (codeOf(err) !== "EEXIST") throw err;
  }
  let fd: number;
  try {
    fd = sys.openat2(dirFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0, BENEATH | RESOLVE_NO_XDEV);
  } catch (err) {
    throw refused(where, err);
  }
  if (!fstatSync(fd).isDirectory()) {
    closeSync(fd);
    throw refused(where, Object.assign(new Error(), { code: "ENOTDIR" }));
  }
  return fd;
}

/** Creates the empty file `name` in `dirFd` (a bind target for a file). Something already there, which
 *  only the guest can have put there, is refused rather than opened: it might be a FIFO or a device. */
export function createFile(sys: Sys, dirFd: number, name: string, where: string): number {
  try {
    return sys.openat2(dirFd, name, O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600, BENEATH | RESOLVE_NO_XDEV);
  } catch (err) {
    throw refused(where, err);
  }
}

/** What is at `name` in `dirFd` now, mounts included (O_PATH): for the calls after a first mount. */
export function reopen(sys: Sys, dirFd: number, name: string, where: string): number {
  try {
    return sys.openat2(dirFd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0, BENEATH);
  } catch (err) {
    throw refused(where, err);
  }
}

/**
 * Removes `name` in `dirFd` and everything below it, never following a link (a link is removed
 * itself) and never crossing into a mount (what is mounted is left, and so is its parent). Returns
 * whether it is gone; things the guest adds meanwhile may stay (the pod's removal takes them).
 */
export function removeEntry(sys: Sys, dirFd: number, name: string, depth = 0): boolean {
  let fd: number;
  try {
    fd = sys.openat2(dirFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0, BENEATH | RESOLVE_NO_XDEV);
  } catch (err) {
    const code = codeOf(err);
    if (code === "ENOENT") return true;
    if (code === "EXDEV") return false;
    if (code !== "ELOOP" && code !== "ENOTDIR") throw err;
    return unlinkIfThere(sys, dirFd, name, 0);
  }
  let all = depth < MAX_DEPTH;
  withFd(fd, () => {
    if (!all) return;
    for (const child of readdirSync(fdPath(fd))) all = removeEntry(sys, fd, child, depth + 1) && all;
  });
  return all && unlinkIfThere(sys, dirFd, name, AT_REMOVEDIR);
}

function unlinkIfThere(sys: Sys, dirFd: number, name: string, flags: number): boolean {
  try {
    sys.unlinkat(dirFd, name, flags);
    return true;
  } catch (err) {
    const code = codeOf(err);
    if (code === "ENOENT") return true;
    // A mount point, or a directory the guest filled again meanwhile.
    if (code === "EBUSY" || code === "ENOTEMPTY" || code === "EEXIST" || code === "EISDIR") return false;
    throw err;
  }
}

/** Removes the directory `dir` (whose parent only the host writes) the way removeEntry does. */
export function removeTree(sys: Sys, dir: string): boolean {
  let parent: number;
  try {
    parent = sys.openat2(AT_FDCWD, path.dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, 0);
  } catch (err) {
    if (codeOf(err) === "ENOENT") return true;
    throw err;
  }
  return withFd(parent, (fd) => removeEntry(sys, fd, path.basename(dir)));
}

/**
 * Unmounts every mount at or below `sub` (an entry name, or "" for all) of `root`, deepest first, as
 * /proc/self/mountinfo lists them: by where they are now, not by names we would recompute. A busy one
 * is detached lazily. Throws if any is left.
 */
export function unmountUnder(sys: Sys, root: Root, sub: string): void {
  const top = sub ? path.join(root.path, sub) : root.path;
  let failure: unknown;
  for (let round = 0; round < UNMOUNT_ROUNDS; round++) {
    const points = mountPointsUnder(top, sys.mountPoints());
    if (points.length === 0) return;
    for (const p of points) {
      try {
        unmountAt(sys, root, p);
      } catch (err) {
        failure = err;
      }
    }
  }
  const left = mountPointsUnder(top, sys.mountPoints());
  if (left.length === 0) return;
  const why = failure ? (failure as Error).message : "they keep moving";
  throw internal(`cannot unmount ${left.join(", ")} in the pod's shared dir: ${why}`, failure);
}

function unmountAt(sys: Sys, root: Root, mountPoint: string): void {
  const rel = path.relative(root.path, mountPoint);
  if (rel === "") return umountBusyLazily(sys, root.path);
  const parentRel = path.dirname(rel);
  const name = path.basename(rel);
  if (parentRel === ".") return umountBusyLazily(sys, `${fdPath(root.fd)}/${name}`);
  let parent: number;
  try {
    // Crossing mounts is fine here: what is below the share is beneath it wherever it is mounted.
    parent = sys.openat2(root.fd, parentRel, O_PATH | O_DIRECTORY | O_CLOEXEC, 0, BENEATH);
  } catch (err) {
    // Moved (or replaced by a link) since mountinfo was read: the next round finds it where it is.
    if (["ENOENT", "ENOTDIR", "ELOOP", "EXDEV"].includes(codeOf(err) ?? "")) return;
    throw err;
  }
  withFd(parent, (fd) => umountBusyLazily(sys, `${fdPath(fd)}/${name}`));
}

function umountBusyLazily(sys: Sys, target: string): void {
  for (const flags of [UMOUNT_NOFOLLOW, UMOUNT_NOFOLLOW | MNT_DETACH]) {
    try {
      sys.umount(target, flags);
      return;
    } catch (err) {
      const code = codeOf(err);
      // Not (or no longer) a mount point: gone, or moved and found again in the next round.
      if (code === "EINVAL" || code === "ENOENT") return;
      if (code !== "EBUSY") throw err;
    }
  }
}
