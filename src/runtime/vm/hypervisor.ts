// What vm mode needs from a VMM. QEMU implements it (qemu.ts); Cloud Hypervisor or Firecracker
// could implement it later without touching the runtime.

export interface VmSpec {
  /** Directory for this VM's sockets, console log and pid file. */
  runDir: string;
  kernel: string;
  initrd: string;
  /** Guest root directory shared read-only ("" = the initrd holds everything). */
  rootfs: string;
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
