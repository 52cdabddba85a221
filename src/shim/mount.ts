// Mounts the rootfs containerd describes (a list of Mounts, usually one overlay or bind) into the
// bundle, translating fstab-style options into mount(2) flags and data the way containerd does.
import { mkdirSync } from "node:fs";
import { mountPoints } from "../sys/mount.js";
import type { Sys } from "../sys/types.js";
import { invalidArgument, ShimError } from "../core/errors.js";
import type { Mount } from "./runtime.js";

export const MS = {
  RDONLY: 0x1, NOSUID: 0x2, NODEV: 0x4, NOEXEC: 0x8, SYNCHRONOUS: 0x10, REMOUNT: 0x20, MANDLOCK: 0x40,
  DIRSYNC: 0x80, NOATIME: 0x400, NODIRATIME: 0x800, BIND: 0x1000, REC: 0x4000, SILENT: 0x8000,
  UNBINDABLE: 0x20000, PRIVATE: 0x40000, SLAVE: 0x80000, SHARED: 0x100000, RELATIME: 0x200000,
  STRICTATIME: 0x1000000,
} as const;
export const MNT_DETACH = 2;

/** [clear?, flag] per option word; unknown words go to the filesystem as data. */
const FLAG_OPTIONS: Record<string, [boolean, number]> = {
  async: [true, MS.SYNCHRONOUS], sync: [false, MS.SYNCHRONOUS],
  atime: [true, MS.NOATIME], noatime: [false, MS.NOATIME],
  defaults: [false, 0],
  dev: [true, MS.NODEV], nodev: [false, MS.NODEV],
  diratime: [true, MS.NODIRATIME], nodiratime: [false, MS.NODIRATIME],
  dirsync: [false, MS.DIRSYNC],
  exec: [true, MS.NOEXEC], noexec: [false, MS.NOEXEC],
  mand: [false, MS.MANDLOCK], nomand: [true, MS.MANDLOCK],
  relatime: [false, MS.RELATIME], norelatime: [true, MS.RELATIME],
  strictatime: [false, MS.STRICTATIME], nostrictatime: [true, MS.STRICTATIME],
  rw: [true, MS.RDONLY], ro: [false, MS.RDONLY],
  suid: [true, MS.NOSUID], nosuid: [false, MS.NOSUID],
  remount: [false, MS.REMOUNT],
  bind: [false, MS.BIND], rbind: [false, MS.BIND | MS.REC],
};

const PROPAGATION: Record<string, number> = {
  private: MS.PRIVATE, rprivate: MS.PRIVATE | MS.REC,
  shared: MS.SHARED, rshared: MS.SHARED | MS.REC,
  slave: MS.SLAVE, rslave: MS.SLAVE | MS.REC,
  unbindable: MS.UNBINDABLE, runbindable: MS.UNBINDABLE | MS.REC,
};

export interface ParsedOptions {
  flags: number;
  propagation: number;
  data: string;
}

export function parseMountOptions(options: readonly string[]): ParsedOptions {
  let flags = 0;
  let propagation = 0;
  const data: string[] = [];
  for (const o of options) {
    const f = FLAG_OPTIONS[o];
    if (f) {
      if (f[0]) flags &= ~f[1];
      else flags |= f[1];
    } else if (PROPAGATION[o] !== undefined) propagation |= PROPAGATION[o]!;
    else data.push(o);
  }
  return { flags, propagation, data: data.join(",") };
}

const PAGE_SIZE = 4096;

/** One mount(2) call; a Mount may take several on the same target. */
export interface MountCall {
  source: string;
  fstype: string;
  flags: number;
  data: string;
}

/** The mount(2) calls that mount `m`, in order (each on the same target). */
export function mountCalls(m: Mount, target: string): MountCall[] {
  const { flags, propagation, data } = parseMountOptions(m.options);
  if (data.length >= PAGE_SIZE) {
    throw invalidArgument(`mount options for ${m.type} at ${target} are ${data.length} bytes, over the kernel's ${PAGE_SIZE - 1}-byte limit`);
  }
  const type = m.type === "bind" || m.type === "rbind" ? "" : m.type;
  const bind = (flags & MS.BIND) !== 0 || m.type === "bind" || m.type === "rbind";
  const baseFlags = bind ? flags | MS.BIND | (m.type === "rbind" ? MS.REC : 0) : flags;
  // A read-only bind needs a second, remounting call: MS_RDONLY is ignored on the first.
  const calls: MountCall[] = [{ source: m.source, fstype: type, flags: baseFlags & ~(bind ? MS.RDONLY : 0), data }];
  if (bind && (flags & MS.RDONLY) !== 0) calls.push({ source: "", fstype: "", flags: baseFlags | MS.REMOUNT | MS.RDONLY, data: "" });
  if (propagation) calls.push({ source: "", fstype: "", flags: propagation, data: "" });
  return calls;
}

/** A mount that failed, as the error callers get (`target` as they know it). */
export function mountFailed(m: Mount, target: string, err: unknown): ShimError {
  return new ShimError("Internal", `mount ${m.type} ${m.source} on ${target} (options ${m.options.join(",")}): ${(err as Error).message}`, { cause: err });
}

export function mountOne(sys: Sys, m: Mount, target: string) {
  const calls = mountCalls(m, target);
  try {
    for (const c of calls) sys.mount(c.source, target, c.fstype, c.flags, c.data);
  } catch (err) {
    throw mountFailed(m, target, err);
  }
}

/** Mounts all of them in order on target; on failure undoes the ones already done. */
export function mountAll(sys: Sys, mounts: readonly Mount[], target: string) {
  mkdirSync(target, { recursive: true, mode: 0o711 });
  let done = 0;
  try {
    for (const m of mounts) {
      mountOne(sys, m, target);
      done++;
    }
  } catch (err) {
    for (let i = 0; i < done; i++) unmountAll(sys, target);
    throw err;
  }
}

/** Unmounts everything at or below target, deepest first; a missing mount is not an error. */
export function unmountAll(sys: Sys, target: string) {
  for (const mp of mountPointsUnder(target)) {
    try {
      sys.umount(mp, MNT_DETACH);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "EINVAL" && code !== "ENOENT") throw err;
    }
  }
}

/** Mount points at or below target, deepest first (a path stacked n times is listed n times). */
export function mountPointsUnder(target: string, points: readonly string[] = mountPoints()): string[] {
  const prefix = target.endsWith("/") ? target : target + "/";
  return points.filter((p) => p === target || p.startsWith(prefix)).sort((a, b) => b.length - a.length);
}
