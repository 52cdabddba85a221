// vm mode's `[vm]` table.
import { absolutePath, checkKeys, intIn, oneOf, pick, type Table } from "../../shim/config-fields.js";
import { invalidArgument } from "../../shim/errors.js";

/** Where `cocoon install` puts the guest kernel and image. */
export const DEFAULT_ASSET_DIR = "/usr/local/share/cocoon";

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

const KEYS = ["qemu", "kernel", "initrd", "rootfs", "accel", "vcpus", "memory_mib", "boot_timeout_sec", "kernel_params", "shared_fs", "state_dir", "tcg_cache_mib", "template", "template_max"];

export function parseVmSettings(t: Table, where: string): VmConfig {
  checkKeys(t, KEYS, where, "vm.");
  const p = <T>(key: string, kind: "string" | "boolean" | "number", fallback: T) => pick(t, key, kind, where, fallback, "vm.");
  const cfg: VmConfig = {
    qemu: p("qemu", "string", "qemu-system-x86_64"),
    kernel: p("kernel", "string", `${DEFAULT_ASSET_DIR}/vmlinux`),
    initrd: p("initrd", "string", `${DEFAULT_ASSET_DIR}/initramfs-9p.cpio.zst`),
    rootfs: p("rootfs", "string", `${DEFAULT_ASSET_DIR}/rootfs.erofs`),
    accel: oneOf(p("accel", "string", "auto"), ["auto", "kvm", "tcg"] as const, "vm.accel", where),
    vcpus: p("vcpus", "number", 1),
    memoryMiB: p("memory_mib", "number", 512),
    bootTimeoutSec: p("boot_timeout_sec", "number", 60),
    kernelParams: p("kernel_params", "string", ""),
    stateDir: p("state_dir", "string", "/run/cocoon/vm"),
    tcgCacheMiB: p("tcg_cache_mib", "number", 64),
    template: p("template", "boolean", true),
    templateMax: p("template_max", "number", 4),
  };
  // vm.shared_fs used to offer virtio-fs, which was never built (Debian 12 has no virtiofsd): 9p is the only
  // shared file system. Files written when the key existed still load; any other value asked for something
  // that never worked.
  if ("shared_fs" in t && t["shared_fs"] !== "9p") {
    throw invalidArgument(`config ${where}: vm.shared_fs is no longer an option (the pod's files are always shared over 9p); remove it, got ${JSON.stringify(t["shared_fs"])}`);
  }
  intIn(cfg.vcpus, "vm.vcpus", 1, 255, where);
  intIn(cfg.templateMax, "vm.template_max", 1, 64, where);
  intIn(cfg.memoryMiB, "vm.memory_mib", 64, 1 << 20, where);
  intIn(cfg.tcgCacheMiB, "vm.tcg_cache_mib (0 = QEMU's default)", 0, 1 << 16, where);
  if (!(cfg.bootTimeoutSec > 0 && cfg.bootTimeoutSec <= 3600)) throw invalidArgument(`config ${where}: vm.boot_timeout_sec must be a number of seconds above 0 and at most 3600, got ${cfg.bootTimeoutSec}`);
  absolutePath(cfg.stateDir, "vm.state_dir", where);
  absolutePath(cfg.kernel, "vm.kernel", where);
  absolutePath(cfg.initrd, "vm.initrd", where);
  absolutePath(cfg.rootfs, "vm.rootfs", where, true);
  return cfg;
}
