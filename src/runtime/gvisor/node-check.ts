// gVisor mode's lines in `cocoon check`: runsc itself, the platform its sandboxes would use (the same
// probe the shim runs), and the network mode `auto` picks with this runsc on this kernel.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fail, ok, versionCheck, warn, type CheckResult, type NodeCheckOptions, type NodeView } from "../../shim/node-check.js";
import { probeNetwork } from "./network.js";
import { cachedProbe, probeKvmPlatform, type PlatformProbe } from "./platform.js";
import type { GvisorSettings } from "./settings.js";

async function realPlatformProbe(runsc: string): Promise<PlatformProbe> {
  const dir = mkdtempSync(join(tmpdir(), "cocoon-check-runsc-"));
  try {
    return await probeKvmPlatform(runsc, dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function checkPlatform(s: GvisorSettings, node: NodeView, o: NodeCheckOptions): Promise<CheckResult> {
  const name = "gvisor platform";
  if (s.platform !== "auto") return ok(name, `${s.platform} (set in the config)`);
  const slower = "sandboxes use ptrace (every system call of a pod costs a context switch)";
  if (o.skipSlowProbes) {
    const cached = cachedProbe(s.stateDir);
    if (cached) return cached.platform === "kvm" ? ok(name, `kvm (${cached.reason}; cached by the shim)`) : warn(name, `ptrace (${cached.reason}; cached by the shim); ${slower}`, "fix KVM on this host for faster sandboxes");
    if (!node.exists("/dev/kvm")) return warn(name, `ptrace (/dev/kvm does not exist); ${slower}`, "enable virtualisation and load kvm_intel/kvm_amd for the KVM platform");
    return warn(name, "/dev/kvm exists; a KVM sandbox was not tried", "run `cocoon check` without --skip-kvm-probe");
  }
  const p = await o.probe("gvisor-platform", s.binary, realPlatformProbe);
  if (p.platform === "kvm") return ok(name, `kvm (${p.reason})`);
  return warn(name, `ptrace (${p.reason}); ${slower}`, "fix KVM on this host (or set gvisor.platform) for faster sandboxes");
}

async function checkNetwork(s: GvisorSettings, o: NodeCheckOptions): Promise<CheckResult> {
  const name = "gvisor network";
  if (s.network !== "auto") return ok(name, `${s.network} (set in the config)`);
  const c = await o.probe("gvisor-network", s.binary, probeNetwork);
  if (c.network === "sandbox") return ok(name, `sandbox: runsc's own network stack (${c.reason})`);
  return warn(name, `host: ${c.reason}; the pod keeps its own network namespace, but its socket calls reach the host kernel`, "install a runsc from release 20240807 or later for its own network stack");
}

export async function checkGvisorNode(s: GvisorSettings, node: NodeView, o: NodeCheckOptions): Promise<CheckResult[]> {
  const runsc = await versionCheck(node, "runsc", [s.binary, "--version"], () => fail("runsc", `${s.binary} not found (needed by the cocoon-gvisor runtime)`, "apt-get install runsc (or set gvisor.binary in the gVisor config)"));
  if (!runsc.ok) return [runsc];
  return [runsc, ...(await Promise.all([checkPlatform(s, node, o), checkNetwork(s, o)]))];
}
