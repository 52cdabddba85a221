// Reads the vm-mode shim's boot breakdown back out of containerd's log: containerd copies each shim's
// logfmt lines into its own log, and the shim logs `VM booted` once per sandbox with its timings.

export interface VmBootLine {
  /** Wall-clock time of the line (the shim's clock, ms since the epoch). */
  at: number;
  sandbox: string;
  /** From spawning the VMM until the agent answered. */
  ms: number;
  vmmSpawnMs: number;
  socketMs: number;
  agentReadyMs: number;
  /** Guest time since its kernel started, when the agent answered. */
  guestUptimeMs: number;
  accel: string;
  kernel: string;
  qemuPid: number;
  /** "boot", or "template" when the VM was restored from a VM template ("template (built now)" when this pod built it). */
  start: string;
}

/** key=value pairs of one logfmt line; quoted values are JSON strings. */
export function parseLogfmt(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /(\w[\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)/g;
  for (const m of line.matchAll(re)) {
    const raw = m[2]!;
    let v = raw;
    if (raw.startsWith('"')) {
      try {
        v = JSON.parse(raw) as string;
      } catch {
        v = raw.slice(1, -1);
      }
    }
    // The first occurrence wins: a quoted message may itself contain `key=` text.
    if (!(m[1]! in out)) out[m[1]!] = v;
  }
  return out;
}

/** Every `VM booted` line in `log`, in order. */
export function vmBootLines(log: string): VmBootLine[] {
  const out: VmBootLine[] = [];
  for (const line of log.split("\n")) {
    if (!line.includes('msg="VM booted"')) continue;
    const f = parseLogfmt(line);
    const num = (k: string) => Number(f[k] ?? NaN);
    out.push({
      at: Date.parse(f["time"] ?? ""),
      sandbox: f["sandbox"] ?? "",
      ms: num("ms"),
      vmmSpawnMs: num("vmmSpawnMs"),
      socketMs: num("socketMs"),
      agentReadyMs: num("agentReadyMs"),
      guestUptimeMs: num("guestUptimeMs"),
      accel: f["accel"] ?? "",
      kernel: f["kernel"] ?? "",
      qemuPid: num("qemuPid"),
      start: f["start"] ?? "boot",
    });
  }
  return out;
}

/** The `KVM probe` line, if `accel = "auto"` probed in this log. */
export function kvmProbeLine(log: string): { kvm: string; reason: string; ms: number } | undefined {
  const line = log.split("\n").find((l) => l.includes('msg="KVM probe"'));
  if (!line) return undefined;
  const f = parseLogfmt(line);
  return { kvm: f["kvm"] ?? "", reason: f["reason"] ?? "", ms: Number(f["ms"] ?? NaN) };
}

/** The agent's first console line: how long node and the agent took, and the guest's uptime then. */
export function agentReadyLine(console: string): { processUptimeMs: number; guestUptimeMs: number } | undefined {
  const line = console.split(/\r?\n/).find((l) => l.includes("cocoon-agent ready"));
  if (!line) return undefined;
  const f = parseLogfmt(line);
  const r = { processUptimeMs: Number(f["processUptimeMs"] ?? NaN), guestUptimeMs: Number(f["guestUptimeMs"] ?? NaN) };
  return Number.isFinite(r.processUptimeMs) && Number.isFinite(r.guestUptimeMs) ? r : undefined;
}
