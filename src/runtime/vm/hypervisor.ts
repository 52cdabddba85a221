// What vm mode needs from a VMM. QEMU implements it (qemu.ts); Cloud Hypervisor or Firecracker
// could implement it later without touching the runtime.

/**
 * A directory shared read-only (9p: every file the guest reads is copied into its page cache), or a
 * read-only file system image mapped into the guest as persistent memory and mounted with DAX (the
 * guest reads the host's page cache directly, so VMs share one copy of node and crun).
 */
export type GuestRoot = { kind: "dir"; path: string } | { kind: "image"; path: string; bytes: number };

export interface VmSpec {
  /** Directory for this VM's sockets, console log and pid file. */
  runDir: string;
  kernel: string;
  initrd: string;
  /** The guest's root file system; none when the initrd holds everything. */
  root?: GuestRoot;
  /** Per-sandbox directory shared read-write with the guest (mount tag "cocoon"). */
  sharedDir: string;
  vcpus: number;
  memoryMiB: number;
  accel: "kvm" | "tcg";
  /** TCG translation cache size in MiB (0 = QEMU's default). */
  tcgCacheMiB: number;
  kernelParams: string;
  /** Network namespace to run the VMM in, and the tap device in it to attach. */
  netns?: string;
  tap?: { name: string; mac: string };
  /**
   * Template snapshots (template.ts). "build": the guest RAM is the file `memoryFile`, mapped shared,
   * so that a snapshot can leave RAM out of `stateFile`. "clone": the RAM is that file mapped private
   * (copy-on-write, so every clone shares the template's pages until it writes them) and the device
   * state is loaded from `stateFile` instead of booting.
   */
  template?: { role: "build" | "clone"; memoryFile: string; stateFile: string };
}

export interface VmHandle {
  readonly pid: number;
  readonly agentSocket: string;
  readonly consoleLog: string;
  /** Resolves when the VMM process has exited. */
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  kill(): void;
}

export interface Hypervisor {
  /** Boots the VM, or for a template clone restores it and lets it run. */
  start(spec: VmSpec): Promise<VmHandle>;
  /** Stops a template VM and saves its device state (RAM stays in its memory file); the VM then exits. */
  saveTemplate(vm: VmHandle, spec: VmSpec): Promise<void>;
}
