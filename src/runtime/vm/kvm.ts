// The accelerator probe, for the shim (vm.accel = "auto") and `cocoon check` alike. On some hosts
// /dev/kvm opens but guests hang (or QEMU refuses the host CPU), so KVM counts only when the guest
// kernel, booted under KVM with nothing to mount, gets as far as its root-mount panic within a few
// seconds; otherwise pods run under TCG. `cocoon check` also boots the kernel under TCG, to show the
// fallback works. The shim caches the answer per state dir (i.e. per boot of the host).
import { spawn } from "node:child_process";
import { closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { probeOnce, readCachedJson } from "../../shim/statefs.js";
import type { Logger } from "../../core/log.js";
import { PROBE_BOOTED, probeArgs } from "./qemu.js";

export type Accel = "kvm" | "tcg";

/** One bounded boot of the guest kernel. */
export interface TestBoot {
  ok: boolean;
  /** What happened, for people. */
  reason: string;
  ms: number;
}

export interface AccelProbe {
  accel: Accel;
  /** Why this accelerator: the KVM boot's outcome, or why KVM was not tried. */
  reason: string;
  /** Why KVM is out: no device, no access to it, or its test boot failed; undefined when accel is kvm. */
  kvmProblem?: "absent" | "denied" | "boot";
  /** Milliseconds the KVM test boot took (0 when there was none). */
  ms: number;
  /** The TCG test boot, when asked for and KVM is out. */
  tcg?: TestBoot;
}

export const KVM_DEVICE = "/dev/kvm";
const KVM_TIMEOUT_MS = 8000;
/** A bare kernel reaches its panic in ~2 s under TCG here; the bound allows for a loaded host. */
const TCG_TIMEOUT_MS = 60_000;

/** Why /dev/kvm cannot be used, or undefined when it opens read-write (what QEMU does first). */
export function kvmDeviceProblem(dev: { exists(p: string): boolean; openRW(p: string): string } = hostDevices): { problem: "absent" | "denied"; reason: string } | undefined {
  if (!dev.exists(KVM_DEVICE)) return { problem: "absent", reason: `${KVM_DEVICE} does not exist` };
  const err = dev.openRW(KVM_DEVICE);
  return err ? { problem: "denied", reason: `${KVM_DEVICE} cannot be opened (${err})` } : undefined;
}

/** This host's devices: whether one exists, and "" if it opens read-write, else the error code. */
export const hostDevices = {
  exists: (p: string) => existsSync(p),
  openRW: (p: string) => {
    try {
      closeSync(openSync(p, constants.O_RDWR));
      return "";
    } catch (err) {
      return (err as NodeJS.ErrnoException).code ?? String(err);
    }
  },
};

/** Boots `kernel` under `accel` until its root-mount panic; QEMU is gone when this returns. */
export async function testBoot(qemu: string, kernel: string, accel: Accel, workDir: string, timeoutMs: number): Promise<TestBoot> {
  mkdirSync(workDir, { recursive: true });
  const consoleLog = path.join(workDir, `${accel}-probe.console`);
  rmSync(consoleLog, { force: true });
  const t0 = Date.now();
  const child = spawn(qemu, probeArgs({ kernel, accel, consoleLog }), { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  const result = await new Promise<TestBoot>((resolve) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.once("exit", () => {
      clearTimeout(timer);
      const ms = Date.now() - t0;
      let out = "";
      try {
        out = readFileSync(consoleLog, "utf8");
      } catch {}
      const name = accel.toUpperCase();
      if (PROBE_BOOTED.test(out)) resolve({ ok: true, reason: `the guest kernel booted under ${name} in ${ms} ms`, ms });
      else if (timedOut) resolve({ ok: false, reason: `the guest kernel did not finish booting under ${name} within ${timeoutMs} ms`, ms });
      else resolve({ ok: false, reason: `QEMU exited under ${name}: ${stderr.trim().split("\n")[0] || "no output"}`, ms });
    });
    child.once("error", (e) => {
      clearTimeout(timer);
      resolve({ ok: false, reason: `cannot run ${qemu}: ${e.message}`, ms: Date.now() - t0 });
    });
  });
  rmSync(consoleLog, { force: true });
  return result;
}

/** KVM if the device is usable and a test boot under it works, else TCG (test-booted too with verifyTcg). */
export async function probeAccel(o: { qemu: string; kernel: string; workDir: string; verifyTcg?: boolean }): Promise<AccelProbe> {
  const device = kvmDeviceProblem();
  const kvm = device ? undefined : await testBoot(o.qemu, o.kernel, "kvm", o.workDir, KVM_TIMEOUT_MS);
  if (kvm?.ok) return { accel: "kvm", reason: kvm.reason, ms: kvm.ms };
  const probe: AccelProbe = { accel: "tcg", reason: device?.reason ?? kvm!.reason, kvmProblem: device?.problem ?? "boot", ms: kvm?.ms ?? 0 };
  if (o.verifyTcg) probe.tcg = await testBoot(o.qemu, o.kernel, "tcg", o.workDir, TCG_TIMEOUT_MS);
  return probe;
}

export async function chooseAccel(setting: "auto" | Accel, stateDir: string, log: Logger, qemu = "qemu-system-x86_64", kernel = ""): Promise<Accel> {
  if (setting !== "auto") return setting;
  const cache = path.join(stateDir, "accel-probe.json");
  // No kernel to boot: TCG, without caching that as the host's answer.
  if (!kernel) return readCachedJson<AccelProbe>(cache, () => true)?.accel === "kvm" ? "kvm" : "tcg";
  const probe = await probeOnce<AccelProbe>(cache, () => true, async () => {
    const p = await probeAccel({ qemu, kernel, workDir: stateDir });
    log.info("KVM probe", { kvm: p.accel === "kvm", reason: p.reason, ms: p.ms });
    return p;
  });
  return probe.accel === "kvm" ? "kvm" : "tcg";
}
