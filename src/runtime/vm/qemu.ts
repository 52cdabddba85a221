// QEMU as the VMM: q35 with a PVH kernel, virtio-serial for the agent, 9p for the shared directory
// (and the guest root), virtio-net on a tap device when the pod has a network. See guest/README.md
// for why these arguments (measured boot times under TCG).
import { openSync, closeSync } from "node:fs";
import path from "node:path";
import { spawnChild } from "../../sys/children.js";
import type { Hypervisor, VmHandle, VmSpec } from "./hypervisor.js";

export function qemuArgs(s: VmSpec): string[] {
  const agentSocket = path.join(s.runDir, "agent.sock");
  const append = ["console=ttyS0", "quiet", "panic=-1", "rootfstype=ramfs"];
  const a = [
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    // Under TCG, QEMU's translated-code cache defaults to a large share of host memory per VM
    // (measured ~160 MiB per pod); a smaller one trades some boot time for much less memory (bench/).
    "-M", "q35", "-accel", s.accel === "tcg" && s.tcgCacheMiB > 0 ? `tcg,tb-size=${s.tcgCacheMiB}` : s.accel, "-cpu", s.accel === "kvm" ? "host" : "max",
    "-m", `${s.memoryMiB}M`, "-smp", String(s.vcpus),
    "-kernel", s.kernel, "-initrd", s.initrd,
    "-serial", `file:${path.join(s.runDir, "console.log")}`,
    "-device", "virtio-serial-pci,id=vser0",
    "-chardev", `socket,id=agent,path=${agentSocket},server=on,wait=off`,
    "-device", "virtserialport,bus=vser0.0,chardev=agent,name=agent.0",
    "-fsdev", `local,id=fs0,path=${s.sharedDir},security_model=none`,
    "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=cocoon",
    "-device", "virtio-rng-pci",
    "-pidfile", path.join(s.runDir, "qemu.pid"),
  ];
  if (s.rootfs) {
    a.push("-fsdev", `local,id=fsroot,path=${s.rootfs},security_model=none,readonly=on`,
      "-device", "virtio-9p-pci,fsdev=fsroot,mount_tag=cocoon-root");
    append.push("cocoon.root=cocoon-root");
  }
  if (s.tap) {
    a.push("-netdev", `tap,id=net0,ifname=${s.tap.name},script=no,downscript=no`,
      "-device", `virtio-net-pci,netdev=net0,mac=${s.tap.mac}`);
  }
  if (s.kernelParams) append.push(s.kernelParams);
  a.push("-append", append.join(" "));
  return a;
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
