// QEMU as the VMM: q35 with a PVH kernel, virtio-serial for the agent, 9p for the shared directory
// (and the guest root), virtio-net on a tap device when the pod has a network. See guest/README.md
// for why these arguments (measured boot times under TCG).
import { openSync, closeSync } from "node:fs";
import path from "node:path";
import { spawnChild } from "../../sys/children.js";
import type { Hypervisor, VmHandle, VmSpec } from "./hypervisor.js";
import { Qmp } from "./qmp.js";
import { AGENT_PORT_NAME, KERNEL_PARAM, PMEM_ROOT_DEVICE, ROOT_SHARE_TAG, SHARE_TAG } from "../../core/guest-abi.js";

/**
 * Kernel parameters that skip work a pod VM never needs (measured under TCG: /init starts ~0.5 s and
 * the agent ~0.7 s sooner): crypto self-tests, probing the emulated PS/2 controller, the IO-APIC
 * timer check and the TSC watchdog (a VMM's TSC is what the guest has), PCI buses beyond the root
 * one (every device here sits on it), and slow RCU grace periods at boot.
 */
const FAST_BOOT_PARAMS = [
  "cryptomgr.notests", "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
  "no_timer_check", "tsc=reliable", "rcupdate.rcu_expedited=1", "pci=lastbus=0",
];
/**
 * Every guest boot's command line starts so. The initramfs root holds ~100 MB; the kernel's default
 * tmpfs rootfs is capped at half of RAM, ramfs is not, so small guests can unpack it.
 */
const BASE_PARAMS = ["console=ttyS0", "quiet", "panic=-1", "rootfstype=ramfs", ...FAST_BOOT_PARAMS];

/**
 * The template's NIC MAC. Every clone's NIC starts with it (the device state comes from the snapshot);
 * the agent then gives it the pod's MAC (Restored).
 */
export const TEMPLATE_MAC = "52:54:00:c0:c0:01";
/** The tap QEMU creates for itself in a private network namespace when a template VM has no pod network. */
const PRIVATE_TAP = "cocoon0";

/** What every QEMU we start has: no defaults, no display, exit on reboot; machine, accelerator, CPU, size. */
function machineArgs(s: Pick<VmSpec, "accel" | "tcgCacheMiB" | "vcpus">, machine: string, memory: string): string[] {
  return [
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    // Under TCG, QEMU's translated-code cache defaults to a large share of host memory per VM
    // (measured ~160 MiB per pod); a smaller one trades some boot time for much less memory (bench/).
    "-M", machine, "-accel", s.accel === "tcg" && s.tcgCacheMiB > 0 ? `tcg,tb-size=${s.tcgCacheMiB}` : s.accel, "-cpu", s.accel === "kvm" ? "host" : "max",
    "-m", memory, "-smp", String(s.vcpus),
  ];
}

/** A pod VM (or template VM): the guest kernel, initrd and root, the agent's port, the share, the NIC. */
export function qemuArgs(s: VmSpec): string[] {
  const agentSocket = path.join(s.runDir, "agent.sock");
  const append = [...BASE_PARAMS];
  const tpl = s.template;
  const a = machineArgs(s, tpl ? "q35,memory-backend=ram0" : "q35", memoryArg(s));
  if (tpl) a.push("-object", `memory-backend-file,id=ram0,size=${s.memoryMiB}M,mem-path=${tpl.memoryFile},share=${tpl.role === "build" ? "on" : "off"}`);
  a.push(
    "-kernel", s.kernel, "-initrd", s.initrd,
    "-serial", `file:${path.join(s.runDir, "console.log")}`,
    "-device", "virtio-serial-pci,id=vser0",
    "-chardev", `socket,id=agent,path=${agentSocket},server=on,wait=off`,
    "-device", `virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT_NAME}`,
    "-fsdev", `local,id=fs0,path=${s.sharedDir},security_model=none`,
    "-device", `virtio-9p-pci,fsdev=fs0,mount_tag=${SHARE_TAG}`,
    "-device", "virtio-rng-pci",
    // Free page reporting: pages the guest frees (an exited container's memory, dropped caches) go
    // back to the host within seconds instead of staying resident in QEMU for the VM's lifetime.
    // Not with templates: QEMU 7.2 discards a reported page of a file-backed RAM by punching a hole
    // in the file, even in a private mapping, which would zero the template's page under every
    // other clone. Template and clones must offer the same device features, so both go without.
    "-device", `virtio-balloon-pci,free-page-reporting=${tpl ? "off" : "on"}`,
    "-pidfile", path.join(s.runDir, "qemu.pid"),
  );
  if (s.root?.kind === "dir") {
    a.push("-fsdev", `local,id=fsroot,path=${s.root.path},security_model=none,readonly=on`,
      "-device", `virtio-9p-pci,fsdev=fsroot,mount_tag=${ROOT_SHARE_TAG}`);
    append.push(`${KERNEL_PARAM.root}=${ROOT_SHARE_TAG}`);
  } else if (s.root?.kind === "image") {
    // A private, read-only file mapping: guest reads fault in the host's page cache pages of the
    // image, which every VM (and the host) shares; nothing the guest does can change the file.
    // (Shared under templates, which QEMU's snapshot then skips like the RAM: read-only either way.)
    a.push("-object", `memory-backend-file,id=rootmem,mem-path=${s.root.path},size=${s.root.bytes},share=${tpl ? "on" : "off"},readonly=on`,
      "-device", "virtio-pmem-pci,memdev=rootmem,id=rootpmem");
    // The pmem region sits in QEMU's device-memory window above 4 GiB, which makes the guest
    // kernel think it may need DMA bounce buffers and zero 64 MiB of RAM for them at boot (+64 MiB
    // host memory per VM, measured). Virtio devices here use guest-physical addresses directly
    // and never bounce, so 1 MiB (512 slabs of 2 KiB) is plenty.
    append.push(`${KERNEL_PARAM.root}=${PMEM_ROOT_DEVICE}`, "swiotlb=512");
  }
  if (tpl) {
    // Every template VM has the same devices, since a clone must match its template's: a NIC (on the
    // pod's tap, or on a tap of its own in a private network namespace) and a VM generation ID,
    // which QEMU changes on every restore so that the guest kernel reseeds its random generator.
    a.push("-netdev", `tap,id=net0,ifname=${s.tap?.name ?? PRIVATE_TAP},script=no,downscript=no`,
      "-device", `virtio-net-pci,netdev=net0,mac=${TEMPLATE_MAC}`,
      "-device", "vmgenid,guid=auto",
      "-qmp", `unix:${path.join(s.runDir, "qmp.sock")},server=on,wait=off`);
    append.push(`${KERNEL_PARAM.template}=1`);
    if (tpl.role === "clone") a.push("-incoming", "defer");
  } else if (s.tap) {
    a.push("-netdev", `tap,id=net0,ifname=${s.tap.name},script=no,downscript=no`,
      "-device", `virtio-net-pci,netdev=net0,mac=${s.tap.mac}`);
  }
  if (s.kernelParams) append.push(s.kernelParams);
  a.push("-append", append.join(" "));
  return a;
}

/** Words on a probe boot's console that say the guest kernel ran to its end (see probeArgs). */
export const PROBE_BOOTED = /Kernel panic|VFS: Unable to mount root/;

/**
 * The accelerator probe's boot: the guest kernel alone, with nothing to mount, so that it runs until
 * its root-mount panic (PROBE_BOOTED on the console) and QEMU exits (panic=-1, -no-reboot).
 */
export function probeArgs(p: { kernel: string; accel: "kvm" | "tcg"; consoleLog: string }): string[] {
  return [
    ...machineArgs({ accel: p.accel, tcgCacheMiB: 0, vcpus: 1 }, "q35", "128M"),
    "-kernel", p.kernel, "-serial", `file:${p.consoleLog}`,
    "-append", [...BASE_PARAMS, "root=/dev/nonexistent"].join(" "),
  ];
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
    // In the pod's network namespace when it has one, so the tap device is found there; a template
    // VM without one gets a private namespace, where QEMU creates its tap (gone with QEMU).
    // A template build's QEMU is only the shim's helper: it dies with the shim (setpriv --pdeathsig),
    // where a pod's QEMU outlives a dead shim until containerd's `delete` stops it.
    const [cmd, argv] = spec.netns
      ? ["nsenter", [`--net=${spec.netns}`, "--", this.binary, ...args]]
      : spec.template?.role === "build"
        ? ["setpriv", ["--pdeathsig", "KILL", "--", "unshare", "--net", "--", this.binary, ...args]]
        : spec.template
          ? ["unshare", ["--net", "--", this.binary, ...args]]
          : [this.binary, args];
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
    const vm: VmHandle = {
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
    if (spec.template?.role === "clone") {
      try {
        await restoreClone(spec, exited);
      } catch (err) {
        vm.kill();
        await exited;
        throw err;
      }
    }
    return vm;
  }

  async saveTemplate(vm: VmHandle, spec: VmSpec): Promise<void> {
    if (!spec.template) throw new Error("not a template VM");
    const qmp = await Qmp.connect(path.join(spec.runDir, "qmp.sock"), QMP_TIMEOUT_MS);
    try {
      await qmp.execute("stop");
      await ignoreSharedRam(qmp);
      await qmp.execute("migrate", { uri: `exec:cat > ${shellQuote(spec.template.stateFile)}` });
      await waitMigration(qmp, vm.exited);
      await qmp.execute("quit").catch(() => undefined);
    } finally {
      qmp.close();
    }
    await Promise.race([vm.exited, new Promise((r) => setTimeout(r, 3000))]);
    vm.kill();
    await vm.exited;
  }
}

const QMP_TIMEOUT_MS = 10_000;
const MIGRATION_TIMEOUT_MS = 60_000;

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Both ends of a template snapshot leave shared RAM out of the migration stream: the template's RAM
 * file and the read-only root image, which the clone maps itself.
 */
function ignoreSharedRam(qmp: Qmp): Promise<unknown> {
  return qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: true }] });
}

/** Polls query-migrate until the migration (either direction) completed; throws if it failed or QEMU died. */
async function waitMigration(qmp: Qmp, exited: Promise<unknown>): Promise<void> {
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + MIGRATION_TIMEOUT_MS;
  for (;;) {
    if (gone) throw new Error("QEMU exited during the snapshot transfer");
    const r = await qmp.execute<{ status?: string; "error-desc"?: string }>("query-migrate");
    if (r.status === "completed") return;
    if (r.status === "failed" || r.status === "cancelled") throw new Error(`snapshot transfer ${r.status}: ${r["error-desc"] ?? "no reason given"}`);
    if (Date.now() > deadline) throw new Error(`snapshot transfer not done after ${MIGRATION_TIMEOUT_MS} ms (status ${r.status ?? "none"})`);
    await new Promise((res) => setTimeout(res, 10));
  }
}

/** Loads the template's device state into a clone started with `-incoming defer`, then runs it. */
async function restoreClone(spec: VmSpec, exited: Promise<unknown>): Promise<void> {
  const qmp = await Qmp.connect(path.join(spec.runDir, "qmp.sock"), QMP_TIMEOUT_MS);
  try {
    await ignoreSharedRam(qmp);
    await qmp.execute("migrate-incoming", { uri: `exec:cat ${shellQuote(spec.template!.stateFile)}` });
    await waitMigration(qmp, exited);
    await qmp.execute("cont");
  } finally {
    qmp.close();
  }
}
