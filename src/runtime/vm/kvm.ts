// On some hosts /dev/kvm opens but guests hang (or QEMU refuses the host CPU), so "auto" means: boot
// the guest kernel once under KVM with nothing to mount, and use KVM only if it gets as far as its
// root-mount panic within a few seconds. The answer is cached per state dir (i.e. per boot of the host).
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { ensurePrivateDir, readStateFile, writeStateFile } from "../../shim/statefs.js";
import path from "node:path";
import type { Logger } from "../../core/log.js";

export interface KvmProbe {
  kvm: boolean;
  reason: string;
  ms: number;
}

const PROBE_TIMEOUT_MS = 8000;

export async function probeKvm(qemu: string, kernel: string, workDir: string): Promise<KvmProbe> {
  if (!existsSync("/dev/kvm")) return { kvm: false, reason: "/dev/kvm does not exist", ms: 0 };
  mkdirSync(workDir, { recursive: true });
  const consoleFile = path.join(workDir, "kvm-probe.console");
  rmSync(consoleFile, { force: true });
  const t0 = Date.now();
  const child = spawn(qemu, [
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-M", "q35", "-accel", "kvm", "-cpu", "host",
    "-m", "128M", "-kernel", kernel, "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent",
    "-serial", `file:${consoleFile}`,
  ], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  const result = await new Promise<KvmProbe>((resolve) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      resolve({ kvm: false, reason: `no kernel panic within ${PROBE_TIMEOUT_MS} ms under KVM (guest hangs)`, ms: Date.now() - t0 });
    }, PROBE_TIMEOUT_MS);
    child.once("exit", () => {
      clearTimeout(timer);
      let out = "";
      try {
        out = readFileSync(consoleFile, "utf8");
      } catch {}
      if (/Kernel panic|VFS: Unable to mount root/.test(out)) resolve({ kvm: true, reason: "guest kernel booted under KVM", ms: Date.now() - t0 });
      else resolve({ kvm: false, reason: `QEMU exited under KVM: ${stderr.trim().split("\n")[0] ?? "no output"}`, ms: Date.now() - t0 });
    });
    child.once("error", (e) => {
      clearTimeout(timer);
      resolve({ kvm: false, reason: `cannot run ${qemu}: ${e.message}`, ms: Date.now() - t0 });
    });
  });
  rmSync(consoleFile, { force: true });
  return result;
}

export async function chooseAccel(setting: "auto" | "kvm" | "tcg", stateDir: string, log: Logger, qemu = "qemu-system-x86_64", kernel = ""): Promise<"kvm" | "tcg"> {
  if (setting !== "auto") return setting;
  const cache = path.join(stateDir, "kvm-probe.json");
  try {
    const cached = JSON.parse(readStateFile(cache) ?? "") as KvmProbe;
    return cached.kvm ? "kvm" : "tcg";
  } catch {}
  if (!kernel) return "tcg";
  const probe = await probeKvm(qemu, kernel, stateDir);
  log.info("KVM probe", { kvm: probe.kvm, reason: probe.reason, ms: probe.ms });
  try {
    ensurePrivateDir(stateDir);
    writeStateFile(cache, JSON.stringify(probe));
  } catch {}
  return probe.kvm ? "kvm" : "tcg";
}
