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
  start(spec: VmSpec): Promise<VmHandle>;
}
