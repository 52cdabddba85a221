// Which gVisor platform intercepts the sandbox's system calls. KVM is much faster, but /dev/kvm can
// open on hosts where guests hang, so "auto" runs one bounded `runsc --platform=kvm do true` and
// falls back to ptrace (works anywhere, slower syscalls). The answer is cached per state dir, i.e.
// per boot of the host (/run), as vm mode caches its KVM probe.
import { existsSync, rmSync } from "node:fs";
import path from "node:path";
import type { Logger } from "../../core/log.js";
import { ensurePrivateDir, probeOnce, readCachedJson } from "../../shim/statefs.js";
import { runChild } from "../../sys/children.js";

export type Platform = "kvm" | "ptrace";
export type PlatformSetting = "auto" | Platform;

export interface PlatformProbe {
  platform: Platform;
  reason: string;
  ms: number;
}

export const PROBE_TIMEOUT_MS = 10_000;
const CACHE_FILE = "platform-probe.json";

/** Runs `true` in a throwaway KVM sandbox, with its own private --root so it can never touch a pod's. */
export async function probeKvmPlatform(runsc: string, stateDir: string, timeoutMs = PROBE_TIMEOUT_MS, kvmDevice = "/dev/kvm"): Promise<PlatformProbe> {
  if (!existsSync(kvmDevice)) return { platform: "ptrace", reason: `${kvmDevice} does not exist`, ms: 0 };
  ensurePrivateDir(stateDir);
  const root = path.join(stateDir, `probe-${process.pid}`);
  ensurePrivateDir(root);
  const t0 = Date.now();
  try {
    const res = await runChild(runsc, ["--root", root, "--platform=kvm", "--network=none", "do", "true"], { timeoutMs, cwd: stateDir })
      .catch((e: Error) => ({ code: null, signal: null, stdout: "", stderr: e.message }));
    const ms = Date.now() - t0;
    if (res.code === 0) return { platform: "kvm", reason: "a KVM sandbox ran `true`", ms };
    if (res.signal === "SIGKILL") return { platform: "ptrace", reason: `a KVM sandbox did not finish within ${timeoutMs} ms`, ms };
    const why = res.stderr.trim().split("\n").pop() || `exit status ${res.code}`;
    return { platform: "ptrace", reason: `runsc --platform=kvm failed: ${why}`, ms };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

/** The platform to pass as --platform: the setting itself, or the cached (else fresh) probe answer. */
export async function choosePlatform(setting: PlatformSetting, runsc: string, stateDir: string, log: Logger): Promise<Platform> {
  if (setting !== "auto") return setting;
  const probe = await probeOnce(path.join(stateDir, CACHE_FILE), validProbe, async () => {
    const p = await probeKvmPlatform(runsc, stateDir);
    log.info("gVisor platform probe", { platform: p.platform, reason: p.reason, ms: p.ms });
    return p;
  });
  return probe.platform;
}

/** The cached probe answer, if a valid one is there (`cocoon check` shows it). */
export function cachedProbe(stateDir: string): PlatformProbe | undefined {
  return readCachedJson(path.join(stateDir, CACHE_FILE), validProbe);
}

const validProbe = (p: PlatformProbe) => p.platform === "kvm" || p.platform === "ptrace";
