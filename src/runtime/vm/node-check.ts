// vm mode's lines in `cocoon check`: QEMU, the accelerator (the shim's own probe, src/runtime/vm/kvm.ts),
// the guest assets, VM templates and KSM.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fail, ok, versionCheck, warn, type CheckResult, type NodeCheckOptions, type NodeView } from "../../shim/node-check.js";
import { kvmDeviceProblem, probeAccel, type AccelProbe } from "./kvm.js";
import type { VmConfig } from "./settings.js";
import { isTemplateKey } from "./template.js";

/** The shim's accelerator probe, with the TCG fallback boot too, in a private temporary directory. */
async function realProbe(vm: VmConfig): Promise<AccelProbe> {
  const workDir = mkdtempSync(join(tmpdir(), "cocoon-check-"));
  try {
    return await probeAccel({ qemu: vm.qemu, kernel: vm.kernel, workDir, verifyTcg: true });
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }
}

async function checkKvm(node: NodeView, vm: VmConfig, o: NodeCheckOptions): Promise<CheckResult> {
  const name = "kvm";
  const needKvm = vm.accel === "kvm";
  const fixes = {
    absent: "enable virtualisation (VT-x/AMD-V, nested virtualisation on a VM) and load kvm_intel/kvm_amd",
    denied: "run as root or give the containerd user access to /dev/kvm",
    boot: needKvm ? 'set vm.accel = "auto" or "tcg", or fix KVM on this host' : "fix KVM on this host (nested virtualisation?) for fast VMs",
  };
  const noKvm = (detail: string, fix: string) =>
    needKvm ? fail(name, `${detail}; the VM config sets accel = "kvm"`, fix) : warn(name, `${detail}; VMs run under TCG emulation (much slower)`, fix);
  if (o.skipSlowProbes) {
    const device = kvmDeviceProblem(node);
    if (device) return noKvm(`tcg (no KVM: ${device.reason})`, fixes[device.problem]);
    return warn(name, "/dev/kvm opens; a KVM guest boot was not verified", "run `cocoon check` without --skip-kvm-probe");
  }
  // "guest assets" fails for it, with the fix.
  if (!node.exists(vm.kernel)) return warn(name, `not probed: the guest kernel ${vm.kernel} is missing`, "see guest assets");
  const p = await o.probe("accel", vm, realProbe);
  if (p.accel === "kvm") return ok(name, `kvm (${p.reason})`);
  const detail = `tcg (no KVM: ${p.reason})${p.tcg ? `; ${p.tcg.reason}` : ""}`;
  if (p.tcg && !p.tcg.ok) return fail(name, detail, `QEMU cannot boot the guest kernel at all: check vm.qemu and vm.kernel in the VM config`);
  return noKvm(detail, fixes[p.kvmProblem ?? "boot"]);
}

function checkAssets(node: NodeView, vm: VmConfig): CheckResult {
  const assets = [vm.kernel, vm.initrd, vm.rootfs].filter((p) => p);
  const missing = assets.filter((p) => !node.exists(p));
  if (missing.length) return fail("guest assets", `missing ${missing.join(", ")}`, "run `cocoon install` (copies guest/out/), or build them with guest/build.sh");
  return ok("guest assets", assets.join(", "));
}

/** Whether pod VMs start from VM templates, and which are ready (src/runtime/vm/template.ts). */
function checkTemplates(node: NodeView, vm: VmConfig): CheckResult {
  const dir = join(vm.stateDir, "templates");
  if (!vm.template) return ok("vm templates", "off (template = false): every pod VM boots");
  if (!vm.rootfs || node.listDir(vm.rootfs) !== undefined) {
    return warn("vm templates", `on, but vm.rootfs "${vm.rootfs}" is not an image (QEMU cannot snapshot a VM with a 9p root): every pod VM boots`, "use the EROFS image (rootfs.erofs) as vm.rootfs");
  }
  const entries = node.listDir(dir) ?? [];
  const ready = entries.filter((n) => isTemplateKey(n) && node.exists(join(dir, n, "ready")));
  const failed = entries.filter((n) => n.endsWith(".failed")).map((n) => n.slice(0, -".failed".length));
  const what = ready.length ? `${ready.length} ready in ${dir} (${ready.join(", ")})` : `none built yet in ${dir}; the next pod VM builds one`;
  if (failed.length) return warn("vm templates", `on; ${what}; recently failed: ${failed.join(", ")} (those pods boot for 10 minutes)`, "see `restoring the VM template failed` or `VM template build failed` in containerd's log");
  return ok("vm templates", `on; ${what}`);
}

/**
 * Kernel samepage merging lets VM pods share the identical pages of their guests (guest kernel text
 * with vm.kernel_params = "nokaslr", zeroed pages); Kata recommends it for density. Advice only.
 */
function checkKsm(node: NodeView): CheckResult {
  const run = node.readFile("/sys/kernel/mm/ksm/run")?.trim();
  if (run === undefined) return warn("ksm", "this kernel has no KSM (/sys/kernel/mm/ksm)", "a kernel with CONFIG_KSM lets VM pods share identical guest pages");
  if (run === "1") return ok("ksm", "on: identical guest pages of VM pods are merged");
  return warn("ksm", "off: VM pods do not share identical guest pages (measured: ~67 MB more host memory per VM pod with 3 pods, ~82 MB with 10)",
    'echo 1 > /sys/kernel/mm/ksm/run (and vm.kernel_params = "nokaslr" so guests\' kernel text is identical)');
}

export async function checkVmNode(vm: VmConfig, node: NodeView, o: NodeCheckOptions): Promise<CheckResult[]> {
  const [qemu, kvm] = await Promise.all([
    versionCheck(node, "qemu", [vm.qemu, "--version"], () => fail("qemu", `${vm.qemu} not found (needed by the cocoon VM runtime)`, "apt-get install qemu-system-x86 (or set vm.qemu in the VM config)")),
    checkKvm(node, vm, o),
  ]);
  return [qemu, kvm, checkAssets(node, vm), checkTemplates(node, vm), checkKsm(node)];
}
