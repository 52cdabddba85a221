// The Cocoon config file (TOML). One file per RuntimeClass handler; the CRI plugin points the shim at
// it through runtime options (ConfigPath). Every key has a default, so an absent file means runc mode.
import { readFileSync } from "node:fs";
import { parse } from "smol-toml";
import { invalidArgument } from "../core/errors.js";

export type Mode = "runc" | "vm";
export type Grouping = "pod" | "node";

export interface RuncConfig {
  /** OCI runtime CLI: "runc", "crun" or an absolute path. */
  binary: string;
  /** Base of the OCI runtime's --root; the namespace is appended. */
  root: string;
  systemdCgroup: boolean;
  noPivotRoot: boolean;
  noNewKeyring: boolean;
  criuPath: string;
}

export interface VmConfig {
  qemu: string;
  kernel: string;
  initrd: string;
  /**
   * Guest root file system: an EROFS image file (attached as virtio-pmem, mounted with DAX), or a
   * directory shared read-only over 9p ("" = everything is in the initrd).
   */
  rootfs: string;
  /** "auto" probes KVM with a bounded boot and falls back to TCG. */
  accel: "auto" | "kvm" | "tcg";
  vcpus: number;
  memoryMiB: number;
  bootTimeoutSec: number;
  kernelParams: string;
  /** TCG translated-code cache per VM, MiB (0 = QEMU's default, which is far larger). */
  tcgCacheMiB: number;
  /** Per-sandbox run directories (sockets, console logs, shared dirs), the KVM probe cache and the VM templates. */
  stateDir: string;
  /**
   * Start pod VMs from a snapshot of a template VM booted once per VM shape, instead of booting each
   * (src/runtime/vm/template.ts). Needs an image rootfs. The clones share the template's guest kernel
   * state, KASLR layout included; the kernel's random generator is reseeded on every restore.
   */
  template: boolean;
  /** Ready VM templates kept per state dir (each holds its guest RAM in host memory); least recently used go first. */
  templateMax: number;
}

export interface CocoonConfig {
  mode: Mode;
  grouping: Grouping;
  logLevel: "debug" | "info" | "warn" | "error";
  /**
   * Idle, already booted shim processes kept ready to become the next pod's daemon, so that a pod's
   * first `start` pays no Node start-up (src/shim/spare.ts). Only used with pod grouping; 0 disables.
   */
  spareDaemons: number;
  runc: RuncConfig;
  vm: VmConfig;
  /** Where the file came from ("" = built-in defaults). */
  source: string;
}

export const DEFAULT_ASSET_DIR = "/usr/local/share/cocoon";

export function defaultConfig(): CocoonConfig {
  return {
    mode: "runc",
    grouping: "pod",
    logLevel: "info",
    spareDaemons: 1,
    runc: { binary: "runc", root: "/run/containerd/cocoon", systemdCgroup: false, noPivotRoot: false, noNewKeyring: false, criuPath: "" },
    vm: {
      qemu: "qemu-system-x86_64",
      kernel: `${DEFAULT_ASSET_DIR}/vmlinux`,
      initrd: `${DEFAULT_ASSET_DIR}/initramfs-9p.cpio.zst`,
      rootfs: `${DEFAULT_ASSET_DIR}/rootfs.erofs`,
      accel: "auto",
      vcpus: 1,
      memoryMiB: 512,
      bootTimeoutSec: 60,
      kernelParams: "",
      stateDir: "/run/cocoon/vm",
      tcgCacheMiB: 64,
      template: true,
      templateMax: 4,
    },
    source: "",
  };
}

type Table = Record<string, unknown>;

function pick<T>(table: Table, key: string, kind: "string" | "boolean" | "number", where: string, fallback: T): T {
  if (!(key in table)) return fallback;
  const v = table[key];
  if (typeof v !== kind) throw invalidArgument(`config ${where}: "${key}" must be a ${kind}, got ${JSON.stringify(v)}`);
  return v as T;
}

function oneOf<T extends string>(v: string, allowed: readonly T[], what: string, where: string): T {
  if (!(allowed as readonly string[]).includes(v)) throw invalidArgument(`config ${where}: ${what} must be one of ${allowed.join(", ")}, got "${v}"`);
  return v as T;
}

function checkKeys(table: Table, allowed: string[], where: string, section: string) {
  for (const k of Object.keys(table)) {
    if (!allowed.includes(k)) throw invalidArgument(`config ${where}: unknown key "${section}${k}"`);
  }
}

function intIn(v: number, what: string, min: number, max: number, where: string) {
  if (!Number.isInteger(v) || v < min || v > max) throw invalidArgument(`config ${where}: ${what} must be an integer from ${min} to ${max}, got ${v}`);
}

/** Parses config text; `where` names the source in error messages. Unknown keys are errors so typos surface. */
export function parseConfig(text: string, where: string): CocoonConfig {
  let doc: Table;
  try {
    doc = parse(text) as Table;
  } catch (err) {
    const e = err as Error & { line?: number; column?: number };
    const at = e.line ? `:${e.line}:${e.column ?? 0}` : "";
    throw invalidArgument(`config ${where}${at}: ${e.message.split("\n")[0]}${at ? ` (line ${e.line}, column ${e.column})` : ""}`);
  }
  const cfg = defaultConfig();
  cfg.source = where;
  checkKeys(doc, ["mode", "grouping", "log_level", "spare_daemons", "runc", "vm"], where, "");
  cfg.mode = oneOf(pick(doc, "mode", "string", where, cfg.mode), ["runc", "vm"] as const, "mode", where);
  cfg.grouping = oneOf(pick(doc, "grouping", "string", where, cfg.grouping), ["pod", "node"] as const, "grouping", where);
  cfg.logLevel = oneOf(pick(doc, "log_level", "string", where, cfg.logLevel), ["debug", "info", "warn", "error"] as const, "log_level", where);
  cfg.spareDaemons = pick(doc, "spare_daemons", "number", where, cfg.spareDaemons);
  if (!Number.isInteger(cfg.spareDaemons) || cfg.spareDaemons < 0 || cfg.spareDaemons > 8) throw invalidArgument(`config ${where}: spare_daemons must be an integer from 0 to 8`);
  const runc = (doc["runc"] ?? {}) as Table;
  checkKeys(runc, ["binary", "root", "systemd_cgroup", "no_pivot_root", "no_new_keyring", "criu_path"], where, "runc.");
  cfg.runc = {
    binary: pick(runc, "binary", "string", where, cfg.runc.binary),
    root: pick(runc, "root", "string", where, cfg.runc.root),
    systemdCgroup: pick(runc, "systemd_cgroup", "boolean", where, cfg.runc.systemdCgroup),
    noPivotRoot: pick(runc, "no_pivot_root", "boolean", where, cfg.runc.noPivotRoot),
    noNewKeyring: pick(runc, "no_new_keyring", "boolean", where, cfg.runc.noNewKeyring),
    criuPath: pick(runc, "criu_path", "string", where, cfg.runc.criuPath),
  };
  const vm = (doc["vm"] ?? {}) as Table;
  checkKeys(vm, ["qemu", "kernel", "initrd", "rootfs", "accel", "vcpus", "memory_mib", "boot_timeout_sec", "kernel_params", "shared_fs", "state_dir", "tcg_cache_mib", "template", "template_max"], where, "vm.");
  cfg.vm = {
    qemu: pick(vm, "qemu", "string", where, cfg.vm.qemu),
    kernel: pick(vm, "kernel", "string", where, cfg.vm.kernel),
    initrd: pick(vm, "initrd", "string", where, cfg.vm.initrd),
    rootfs: pick(vm, "rootfs", "string", where, cfg.vm.rootfs),
    accel: oneOf(pick(vm, "accel", "string", where, cfg.vm.accel), ["auto", "kvm", "tcg"] as const, "vm.accel", where),
    vcpus: pick(vm, "vcpus", "number", where, cfg.vm.vcpus),
    memoryMiB: pick(vm, "memory_mib", "number", where, cfg.vm.memoryMiB),
    bootTimeoutSec: pick(vm, "boot_timeout_sec", "number", where, cfg.vm.bootTimeoutSec),
    kernelParams: pick(vm, "kernel_params", "string", where, cfg.vm.kernelParams),
    stateDir: pick(vm, "state_dir", "string", where, cfg.vm.stateDir),
    tcgCacheMiB: pick(vm, "tcg_cache_mib", "number", where, cfg.vm.tcgCacheMiB),
    template: pick(vm, "template", "boolean", where, cfg.vm.template),
    templateMax: pick(vm, "template_max", "number", where, cfg.vm.templateMax),
  };
  // vm.shared_fs used to offer virtio-fs, which was never built (Debian 12 has no virtiofsd): 9p is the only
  // shared file system. Files written when the key existed still load; any other value asked for something
  // that never worked.
  if ("shared_fs" in vm && vm["shared_fs"] !== "9p") {
    throw invalidArgument(`config ${where}: vm.shared_fs is no longer an option (the pod's files are always shared over 9p); remove it, got ${JSON.stringify(vm["shared_fs"])}`);
  }
  intIn(cfg.vm.vcpus, "vm.vcpus", 1, 255, where);
  intIn(cfg.vm.templateMax, "vm.template_max", 1, 64, where);
  intIn(cfg.vm.memoryMiB, "vm.memory_mib", 64, 1 << 20, where);
  intIn(cfg.vm.tcgCacheMiB, "vm.tcg_cache_mib (0 = QEMU's default)", 0, 1 << 16, where);
  if (!(cfg.vm.bootTimeoutSec > 0 && cfg.vm.bootTimeoutSec <= 3600)) throw invalidArgument(`config ${where}: vm.boot_timeout_sec must be a number of seconds above 0 and at most 3600, got ${cfg.vm.bootTimeoutSec}`);
  for (const [key, p] of [["runc.root", cfg.runc.root], ["vm.state_dir", cfg.vm.stateDir], ["vm.kernel", cfg.vm.kernel], ["vm.initrd", cfg.vm.initrd]] as const) {
    if (!p.startsWith("/")) throw invalidArgument(`config ${where}: ${key} must be an absolute path, got "${p}"`);
  }
  if (cfg.vm.rootfs && !cfg.vm.rootfs.startsWith("/")) throw invalidArgument(`config ${where}: vm.rootfs must be an absolute path or "", got "${cfg.vm.rootfs}"`);
  return cfg;
}

export function loadConfigFile(path: string): CocoonConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw invalidArgument(`cannot read cocoon config ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseConfig(text, path);
}
