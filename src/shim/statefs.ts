// The shim's own state on disk (/run/cocoon: start memos, daemon records, the spare pool, VM run
// dirs and templates) steers what root does next, so it must be root's alone. Every directory is
// checked for owner and mode before it is used, and every file in it is opened without following a
// symlink and created exclusively: nothing another local user or a guest could have planted is
// read, written through or trusted.
import { closeSync, constants as C, fstatSync, lstatSync, mkdirSync, openSync, readSync, renameSync, writeSync, chmodSync, unlinkSync } from "node:fs";
import { randomBytes } from "node:crypto";
import path from "node:path";

export class UnsafePathError extends Error {
  constructor(readonly path: string, why: string) {
    super(`refusing to use ${path}: ${why}`);
    this.name = "UnsafePathError";
  }
}

/** Node opens every fd close-on-exec; the sticky bit is not in fs.constants. */
const STICKY = 0o1000;
const euid = () => process.geteuid?.() ?? 0;

/**
 * Throws unless `dir` and every directory above it are real directories owned by root (or us), and
 * none but a sticky one (like /tmp) is writable by anyone else; `dir` itself must be writable by
 * its owner only. Symlinks on the way are refused: their target could change between check and use.
 */
export function assertPrivateDir(dir: string) {
  if (!path.isAbsolute(dir)) throw new UnsafePathError(dir, "not an absolute path");
  const norm = path.resolve(dir);
  const parts = norm.split("/").filter(Boolean);
  for (let i = parts.length; i >= 0; i--) {
    const p = "/" + parts.slice(0, i).join("/");
    const st = lstatSync(p);
    if (st.isSymbolicLink()) throw new UnsafePathError(dir, `${p} is a symlink (use the real path)`);
    if (!st.isDirectory()) throw new UnsafePathError(dir, `${p} is not a directory`);
    if (st.uid !== 0 && st.uid !== euid()) throw new UnsafePathError(dir, `${p} is owned by uid ${st.uid}, not root`);
    const othersWrite = (st.mode & 0o022) !== 0;
    if (p === norm && othersWrite) throw new UnsafePathError(dir, `${p} is writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`);
    if (othersWrite && (st.mode & STICKY) === 0) throw new UnsafePathError(dir, `${p} is writable by group or others and not sticky`);
  }
}

/** assertPrivateDir as a yes/no: for scanning a shared directory such as /tmp for root's own entries. */
export function isPrivateDir(dir: string): boolean {
  try {
    assertPrivateDir(dir);
    return true;
  } catch {
    return false;
  }
}

/**
 * Creates `dir` (0700 for each new component) if need be, makes a root-owned one that an older
 * version left group/world-readable private, and checks it with assertPrivateDir.
 */
export function ensurePrivateDir(dir: string, mode = 0o700) {
  mkdirSync(dir, { recursive: true, mode });
  const st = lstatSync(dir);
  if (st.isDirectory() && st.uid === euid() && (st.mode & 0o7777) !== mode) chmodSync(dir, mode);
  assertPrivateDir(dir);
}

const NOFOLLOW_READ = C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK;

/**
 * A small state file's text, or undefined when it does not exist. A symlink, FIFO, device or
 * directory in its place is an error (ELOOP, or "not a regular file"), never followed or blocked on.
 */
export function readStateFile(file: string, maxBytes = 1 << 20): string | undefined {
  let fd: number;
  try {
    fd = openSync(file, NOFOLLOW_READ);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UnsafePathError(file, "not a regular file");
    const buf = Buffer.alloc(Math.min(st.size, maxBytes));
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off).toString("utf8");
  } finally {
    closeSync(fd);
  }
}

/** readStateFile that treats anything unreadable (missing, a symlink, not a file) as absent. */
export function readStateFileOrUndefined(file: string): string | undefined {
  try {
    return readStateFile(file);
  } catch {
    return undefined;
  }
}

/** Creates `file` with `text`; fails with EEXIST if anything (a file, a symlink) is already there. */
export function createStateFile(file: string, text: string | Uint8Array, mode = 0o600) {
  const fd = openSync(file, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, mode);
  try {
    const buf = typeof text === "string" ? Buffer.from(text) : Buffer.from(text);
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off);
  } catch (err) {
    closeSync(fd);
    unlinkSync(file);
    throw err;
  }
  closeSync(fd);
}

/**
 * Replaces `file` atomically: the text goes to a new, exclusively created file beside it, which is
 * renamed over the old one (rename replaces a symlink itself, never what it points to).
 */
export function writeStateFile(file: string, text: string | Uint8Array, mode = 0o600) {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString("hex")}`);
  createStateFile(tmp, text, mode);
  try {
    renameSync(tmp, file);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {}
    throw err;
  }
}

/** A JSON state file's value when it parses and `valid` accepts it; anything else (absent, unsafe, bad) is undefined. */
export function readCachedJson<T>(file: string, valid: (v: T) => boolean): T | undefined {
  try {
    const v = JSON.parse(readStateFile(file) ?? "") as T;
    return v !== null && typeof v === "object" && valid(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A probe's answer as cached in `file` (see readCachedJson), else a fresh one, saved there for next
 * time in its root-private dir. A cache that cannot be written costs only another probe later.
 */
export async function probeOnce<T>(file: string, valid: (v: T) => boolean, probe: () => Promise<T>): Promise<T> {
  const cached = readCachedJson(file, valid);
  if (cached !== undefined) return cached;
  const fresh = await probe();
  try {
    ensurePrivateDir(path.dirname(file));
    writeStateFile(file, JSON.stringify(fresh));
  } catch {}
  return fresh;
}
