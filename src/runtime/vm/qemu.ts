// QEMU as the VMM: q35 with a PVH kernel, virtio-serial for the agent, 9p for the shared directory
// (and the guest root), virtio-net on a tap device when the pod has a network. See guest/README.md
// for why these arguments (measured boot times under TCG).
import { openSync, closeSync } from "node:fs";
import path from "node:path";
import { spawnChild } from "../../sys/children.js";
import type { Hypervisor, VmHandle, VmSpec } from "./hypervisor.js";

/**
 * Kernel parameters that skip work a pod VM never needs (measured with guest/boot-check.sh under TCG:
 * /init starts ~0.5 s and the agent ~0.7 s sooner): crypto self-tests, probing the emulated PS/2
 * controller, the IO-APIC timer check and the TSC watchdog (a VMM's TSC is what the guest has), PCI
 * buses beyond the root one (every device here sits on it), and slow RCU grace periods at boot.
 */
export const FAST_BOOT_PARAMS = [
  "cryptomgr.notests", "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
  "no_timer_check", "tsc=reliable", "rcupdate.rcu_expedited=1", "pci=lastbus=0",
];

export function qemuArgs(s: VmSpec): string[] {
  const agentSocket = path.join(s.runDir, "agent.sock");
  const append = ["console=ttyS0", "quiet", "panic=-1", "rootfstype=ramfs", ...FAST_BOOT_PARAMS];
  const a = [
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    // Under TCG, QEMU's translated-code cache defaults to a large share of host memory per VM
    // (measured ~160 MiB per pod); a smaller one trades some boot time for much less memory (bench/).
    "-M", "q35", "-accel", s.accel === "tcg" && s.tcgCacheMiB > 0 ? `tcg,tb-size=${s.tcgCacheMiB}` : s.accel, "-cpu", s.accel === "kvm" ? "host" : "max",
    "-m", memoryArg(s), "-smp", String(s.vcpus),
    "-kernel", s.kernel, "-initrd", s.initrd,
    "-serial", `file:${path.join(s.runDir, "console.log")}`,
    "-device", "virtio-serial-pci,id=vser0",
    "-chardev", `socket,id=agent,path=${agentSocket},server=on,wait=off`,
    "-device", "virtserialport,bus=vser0.0,chardev=agent,name=agent.0",
    "-fsdev", `local,id=fs0,path=${s.sharedDir},security_model=none`,
    "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=cocoon",
    "-device", "virtio-rng-pci",
    // Free page reporting: pages the guest frees (an exited container's memory, dropped caches) go
    // back to the host within seconds instead of staying resident in QEMU for the VM's lifetime.
    "-device", "virtio-balloon-pci,free-page-reporting=on",
    "-pidfile", path.join(s.runDir, "qemu.pid"),
  ];
  if (s.root?.kind === "dir") {
    a.push("-fsdev", `local,id=fsroot,path=${s.root.path},security_model=none,readonly=on`,
      "-device", "virtio-9p-pci,fsdev=fsroot,mount_tag=cocoon-root");
    append.push("cocoon.root=cocoon-root");
  } else if (s.root?.kind === "image") {
    // A private, read-only file mapping: guest reads fault in the host's page cache pages of the
    // image, which every VM (and the host) shares; nothing the guest does can change the file.
    a.push("-object", `memory-backend-file,id=rootmem,mem-path=${s.root.path},size=${s.root.bytes},share=off,readonly=on`,
      "-device", "virtio-pmem-pci,memdev=rootmem,id=rootpmem");
    // The pmem region sits in QEMU's device-memory window above 4 GiB, which makes the guest
    // kernel think it may need DMA bounce buffers and zero 64 MiB of RAM for them at boot (+64 MiB
    // host memory per VM, measured). Virtio devices here use guest-physical addresses directly
    // and never bounce, so 1 MiB (512 slabs of 2 KiB) is plenty.
    append.push("cocoon.root=/dev/pmem0", "swiotlb=512");
  }
  if (s.tap) {
    a.push("-netdev", `tap,id=net0,ifname=${s.tap.name},script=no,downscript=no`,
      "-device", `virtio-net-pci,netdev=net0,mac=${s.tap.mac}`);
  }
  if (s.kernelParams) append.push(s.kernelParams);
  a.push("-append", append.join(" "));
  return a;
}

const MIB = 1024 * 1024;

/** Guest RAM, plus a hotplug window for the pmem root when there is one (QEMU wants maxmem to cover it). */
function memoryArg(s: VmSpec): string {
  if (s.root?.kind !== "image") return `${s.memoryMiB}M`;
  const windowMiB = Math.ceil(s.root.bytes / (2 * MIB)) * 2;
  return `${s.memoryMiB}M,slots=1,maxmem=${s.memoryMiB + windowMiB}M`;
}

export class Qemu implements Hypervisor {
  constructor(private readonly binary: string) {}

  async start(spec: VmSpec): Promise<VmHandle> {
    const args = qemuArgs(spec);
    const consoleLog = path.join(spec.runDir, "console.log");
    const stderrLog = path.join(spec.runDir, "qemu.stderr");
    const errFd = openSync(stderrLog, "a");
    // In the pod's network namespace when it has one, so the tap device is found there.
    const [cmd, argv] = spec.netns ? ["nsenter", [`--net=${spec.netns}`, "--", this.binary, ...args]] : [this.binary, args];
    const child = spawnChild(cmd, argv, { stdio: ["ignore", "ignore", errFd], detached: true });
    closeSync(errFd);
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
      child.once("exit", (code, signal) => resolve({ code, signal }));
      child.once("error", () => resolve({ code: 127, signal: null }));
    });
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", resolve);
      child.once("error", (e) => reject(new Error(`cannot start ${this.binary}: ${e.message}`)));
    });
    return {
      pid: child.pid!,
      agentSocket: path.join(spec.runDir, "agent.sock"),
      consoleLog,
      exited,
      kill: () => {
        try {
          child.kill("SIGKILL");
        } catch {}
      },
    };
  }
}
