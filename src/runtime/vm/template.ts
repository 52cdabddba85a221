// VM templates (Kata calls them the VM factory): the first pod VM of a given shape (assets, memory,
// vCPUs, accelerator) boots a template VM once and snapshots it: its RAM stays in a file under the
// state dir, its device state (a few hundred KiB) goes to another. Every later pod VM of that shape is
// a clone: QEMU maps the RAM file private (copy-on-write) and loads the device state instead of
// booting, so the guest kernel, init and agent start-up are skipped, and the pages the clones only
// read (kernel, agent) are one copy in host memory for all of them.
//
// On disk, per shape key: <root>/<key>/{memory,state,meta.json,ready}; a build happens in
// <root>/<key>.build/ under the lock file <root>/<key>.lock ("pid starttime" of the builder), and is
// renamed into place when done. At most `template_max` ready templates are kept (least recently
// used removed first), since each holds its guest RAM in host memory. A builder that died leaves its lock; the next claimant removes it
// and kills the builder's QEMU. Templates of other assets (a rebuilt guest, a new QEMU) are removed
// when a new template is built; the clones still running keep their mapping of the removed file.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync } from "node:fs";
import { createStateFile, ensurePrivateDir, readStateFile, writeStateFile } from "../../shim/statefs.js";
import path from "node:path";
import { procStat } from "../../sys/procstat.js";
import type { GuestRoot } from "./hypervisor.js";

/** Bump when the template layout or the VM's device set changes, so old snapshots are not restored. */
const FORMAT = 1;
const FAILURE_BACKOFF_MS = 10 * 60_000;

export interface TemplateShape {
  qemu: string;
  kernel: string;
  initrd: string;
  root: GuestRoot;
  memoryMiB: number;
  vcpus: number;
  accel: "kvm" | "tcg";
  tcgCacheMiB: number;
  kernelParams: string;
}

export interface Template {
  key: string;
  dir: string;
  memoryFile: string;
  stateFile: string;
}

export interface TemplateBuild extends Template {
  /** Moves the finished build into place; the template is then ready for clones. */
  commit(): Template;
  /** Drops the build and its lock. */
  abandon(): void;
}

/** Where a binary named without a slash is found on PATH. */
function resolveBinary(bin: string): string {
  if (bin.includes("/")) return bin;
  for (const dir of (process.env["PATH"] ?? "/usr/bin:/bin").split(":")) {
    const p = path.join(dir, bin);
    if (existsSync(p)) return p;
  }
  return bin;
}

function fileSignature(p: string): string {
  try {
    const st = statSync(p);
    return `${p}:${st.size}:${st.mtimeMs}:${st.ino}`;
  } catch {
    return `${p}:missing`;
  }
}

/** What the guest and the VMM are made of: a template of other assets must never be restored. */
export function assetSignature(s: TemplateShape): string {
  return [resolveBinary(s.qemu), s.kernel, s.initrd, s.root.path].map(fileSignature).join("|") + `|format ${FORMAT}`;
}

export function templateKey(s: TemplateShape): string {
  const shape = { assets: assetSignature(s), memoryMiB: s.memoryMiB, vcpus: s.vcpus, accel: s.accel, tcgCacheMiB: s.tcgCacheMiB, kernelParams: s.kernelParams };
  return createHash("sha256").update(JSON.stringify(shape)).digest("hex").slice(0, 16);
}

/** Whether a name in the template root is a template's directory (a key), not a lock, build or failure marker. */
export function isTemplateKey(name: string): boolean {
  return /^[0-9a-f]{16}$/.test(name);
}

function files(dir: string, key: string): Template {
  return { key, dir, memoryFile: path.join(dir, "memory"), stateFile: path.join(dir, "state") };
}

function ownerAlive(lockFile: string): boolean {
  let owner: string[];
  try {
    owner = (readStateFile(lockFile) ?? "").trim().split(" ");
  } catch {
    return false;
  }
  const st = procStat(Number(owner[0]));
  return !!st && st.startTime === owner[1] && st.state !== "Z";
}

/** Kills the QEMU a dead builder left running (its pid file, and still a QEMU). */
function killOrphanQemu(buildDir: string) {
  let pid: number;
  try {
    pid = Number((readStateFile(path.join(buildDir, "qemu.pid")) ?? "").trim());
  } catch {
    return;
  }
  try {
    if (pid > 0 && readFileSync(`/proc/${pid}/comm`, "utf8").startsWith("qemu-system")) process.kill(pid, "SIGKILL");
  } catch {}
}

export class TemplateStore {
  /** `maxReady`: how many ready templates to keep (each holds its guest RAM in host memory); the least recently used go first. */
  constructor(readonly root: string, readonly maxReady = 4) {}

  /** The ready template for `key`, marked as just used. */
  ready(key: string): Template | undefined {
    const dir = path.join(this.root, key);
    const marker = path.join(dir, "ready");
    try {
      const now = new Date();
      utimesSync(marker, now, now);
    } catch {
      return undefined;
    }
    return files(dir, key);
  }

  /**
   * Takes the build lock for `key`: undefined when another live builder holds it, or when a template
   * of this key failed less than FAILURE_BACKOFF_MS ago (so that a template that cannot work does
   * not cost every pod a build).
   */
  claim(key: string, shape: TemplateShape): TemplateBuild | undefined {
    ensurePrivateDir(this.root);
    if (this.failedRecently(key)) return undefined;
    const lock = path.join(this.root, `${key}.lock`);
    const buildDir = path.join(this.root, `${key}.build`);
    const me = `${process.pid} ${procStat(process.pid)?.startTime ?? ""}\n`;
    for (let attempt = 0; ; attempt++) {
      try {
        createStateFile(lock, me);
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0 || !this.breakStaleLock(lock)) return undefined;
        killOrphanQemu(buildDir);
      }
    }
    rmSync(buildDir, { recursive: true, force: true });
    // The template's share is never mounted in its guest (clones mount their own), but QEMU opens it.
    mkdirSync(path.join(buildDir, "shared"), { recursive: true, mode: 0o700 });
    const finalDir = path.join(this.root, key);
    const release = () => {
      rmSync(buildDir, { recursive: true, force: true });
      rmSync(lock, { force: true });
    };
    return {
      ...files(buildDir, key),
      commit: () => {
        // Only what clones need stays: RAM, device state, and what it was made from.
        for (const f of readdirSync(buildDir)) if (f !== "memory" && f !== "state") rmSync(path.join(buildDir, f), { recursive: true, force: true });
        createStateFile(path.join(buildDir, "meta.json"), JSON.stringify({ key, assets: assetSignature(shape), memoryMiB: shape.memoryMiB, vcpus: shape.vcpus, accel: shape.accel, builtAt: new Date().toISOString() }) + "\n");
        createStateFile(path.join(buildDir, "ready"), "");
        rmSync(finalDir, { recursive: true, force: true });
        renameSync(buildDir, finalDir);
        release();
        this.sweepStale(assetSignature(shape));
        this.evict(key);
        return files(finalDir, key);
      },
      abandon: () => {
        release();
        this.discard(key, true);
      },
    };
  }

  /**
   * Removes `lock` if its builder is dead. Two shims may find the same stale lock: the lock is first
   * renamed to a name of our own (only one rename can succeed), and put back if what was renamed is
   * no longer the stale lock we judged (another shim broke it and took it meanwhile).
   */
  private breakStaleLock(lock: string): boolean {
    let seen: string;
    try {
      seen = readStateFile(lock) ?? "";
    } catch {
      return true;
    }
    if (ownerAlive(lock)) return false;
    const mine = `${lock}.stale.${process.pid}`;
    try {
      renameSync(lock, mine);
    } catch {
      return false;
    }
    let taken = "";
    try {
      taken = readStateFile(mine) ?? "";
    } catch {}
    if (taken !== seen) {
      try {
        renameSync(mine, lock);
      } catch {}
      return false;
    }
    rmSync(mine, { force: true });
    return true;
  }

  /** Drops a template that failed to build or restore; pods boot instead for a while, then it is built again. */
  discard(key: string, failed = false) {
    rmSync(path.join(this.root, key), { recursive: true, force: true });
    if (failed) writeStateFile(path.join(this.root, `${key}.failed`), new Date().toISOString() + "\n");
  }

  failedRecently(key: string): boolean {
    try {
      return Date.now() - statSync(path.join(this.root, `${key}.failed`)).mtimeMs < FAILURE_BACKOFF_MS;
    } catch {
      return false;
    }
  }

  /** Keeps the `maxReady` most recently used ready templates (always `keep`), removing the others. */
  evict(keep: string) {
    const used = (name: string) => {
      try {
        return statSync(path.join(this.root, name, "ready")).mtimeMs;
      } catch {
        return -1;
      }
    };
    let names: string[];
    try {
      names = readdirSync(this.root).filter((n) => isTemplateKey(n) && n !== keep && used(n) >= 0);
    } catch {
      return;
    }
    names.sort((a, b) => used(b) - used(a));
    for (const name of names.slice(Math.max(0, this.maxReady - 1))) this.discard(name);
  }

  /** Removes the ready templates made from other assets than `assets`. */
  sweepStale(assets: string) {
    let names: string[];
    try {
      names = readdirSync(this.root);
    } catch {
      return;
    }
    for (const name of names) {
      if (!isTemplateKey(name)) continue;
      try {
        const meta = JSON.parse(readStateFile(path.join(this.root, name, "meta.json")) ?? "{}") as { assets?: string };
        if (meta.assets !== assets) this.discard(name);
      } catch {}
    }
  }
}
