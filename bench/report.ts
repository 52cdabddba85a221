// Turns results into the tables printed to stdout and the JSON kept under bench/results/.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { BootstrapResult } from "./bootstrap.js";
import type { LatencyResult } from "./latency.js";
import type { MachineFacts } from "./machine.js";
import type { MemoryResult } from "./memory.js";
import { round1, summarize, type Summary } from "./stats.js";
import { VM_PSS_TARGET_MB, type VmBreakdown, type VmResult } from "./vm.js";
import type { GvisorResult } from "./gvisor.js";

export interface BenchReport {
  startedAt: string;
  durationSec: number;
  options: unknown;
  machine: MachineFacts;
  loadavgAfter: number[];
  latency?: LatencyResult;
  bootstrap?: BootstrapResult;
  memory?: MemoryResult[];
  vm?: VmResult;
  /** Why the VM section did not run, when it was asked for (or defaulted to) but could not. */
  vmSkipped?: string;
  gvisor?: GvisorResult;
  leftovers: string[];
}

export const TARGETS = { startRatio: 1.3, memoryVsRuncV2: 1.0 };

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  return [line(head), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}

const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : "-");
const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "-");
const mib = (kib: number) => f2(kib / 1024);

export function latencyTable(r: LatencyResult): string {
  const byLabel = new Map(r.rows.map((row) => [row.label, summarize(row.samples.ctr)]));
  const coldRef = r.rows.find((x) => x.label === "runc-v2")?.samples.ctr;
  const warmRef = r.rows.find((x) => x.label.startsWith("runc-v2") && x.warm)?.samples.ctr;
  const rows = r.rows.map((row) => {
    const s = byLabel.get(row.label)!;
    const c2s = summarize(row.samples.createToStart);
    const c2c = summarize(row.samples.createToTaskCreate);
    const ref = row.warm ? warmRef : coldRef;
    const ratio = ref ? s.median / summarize(ref).median : NaN;
    return [row.label, row.note, String(s.n), f1(s.median), f1(s.p90), f1(c2s.median), f1(c2s.p90), f1(c2c.median), f2(ratio)];
  });
  return table(["runtime", "shim", "n", "ctr run med", "p90", "ctrd create→start med", "p90", "create→task-create med", "ratio"], rows);
}

export function bootstrapTable(r: BootstrapResult): string {
  const rows: string[][] = [];
  for (const [label, s] of Object.entries(r.runtimes)) {
    const a = summarize(s.start);
    const b = summarize(s.ready);
    rows.push([`${label} start`, String(a.n), f1(a.median), f1(a.p90)]);
    rows.push([`${label} start → daemon answers`, String(b.n), f1(b.median), f1(b.p90)]);
  }
  for (const [label, samples] of Object.entries(r.baselines)) {
    const a = summarize(samples);
    rows.push([label, String(a.n), f1(a.median), f1(a.p90)]);
  }
  return table(["command (ms)", "n", "median", "p90"], rows);
}

export function memoryTable(results: MemoryResult[]): string {
  const rows = results.map((m) => {
    const pssEach = summarize(m.shims.map((s) => s.pss));
    const rssEach = summarize(m.shims.map((s) => s.rss));
    const threads = summarize(m.shims.map((s) => s.threads));
    const exeRss = summarize(m.shims.map((s) => s.exeRss));
    const spares = m.shims.filter((x) => x.spare).length;
    return [m.label, m.grouping, `${m.pods}×${m.containers / m.pods}`, spares ? `${m.shims.length - spares}+${spares} spare` : String(m.shims.length), mib(m.perPod.pss), mib(m.perPod.uss), mib(m.perPodIsolatedPss),
      mib(m.perPod.rss), mib(pssEach.median), mib(rssEach.median), mib(exeRss.median), f1(threads.median)];
  });
  return table(["runtime", "grouping", "pods×ctrs", "shims", "PSS/pod", "USS/pod", "PSS/pod alone", "RSS/pod", "PSS/shim", "RSS/shim", "exe RSS/shim", "threads"], rows) +
    "\n(MiB. 'alone': PSS if no other process on the host mapped the shim's executable; a busy host with other node processes lowers Cocoon's plain PSS. " +
    "Cocoon with pod grouping: the idle spare daemon(s) kept for fast new-pod starts are included in the per-pod sums.)";
}

const BREAKDOWN: [keyof VmBreakdown, string][] = [
  ["beforeVmm", "RunPodSandbox → QEMU spawned (CRI, CNI, shim start)"],
  ["vmmSpawn", "  QEMU spawn (template clone: + snapshot restore)"],
  ["socketUp", "  spawned → agent socket up"],
  ["agentAnswer", "  socket up → agent answers (clone: + Restored)"],
  ["boot", "QEMU spawned → agent ready (boot)"],
  ["vmmFirmware", "  VMM + firmware ≈ boot − guest uptime"],
  ["guest", "  guest kernel + init + agent (guest uptime)"],
  ["kernelInit", "    kernel + /init, until node starts"],
  ["agentInit", "    node + agent initialisation, until port open"],
  ["agentFirstAnswer", "    port open → first Health answered"],
  ["bootToSandboxReady", "VM booted → RunPodSandbox returns"],
  ["createAndStart", "RunPodSandbox returns → RUNNING (create + start)"],
  ["containerStart", "container start = total − time to VM booted"],
];

export function vmTables(r: VmResult): string {
  const out: string[] = [];
  const vmS = r.vm.map((x) => x.sample);
  const rows = [["cocoon (VM)", vmS], ["runc (runc-v2)", r.runc]] as const;
  const runcMed = summarize(r.runc.map((x) => x.totalMs)).median;
  out.push(table(["handler", "n", "total med", "p90", "min", "max", "RunPodSandbox med", "Create med", "Start med", "ratio"], rows.map(([label, xs]) => {
    const t = summarize(xs.map((x) => x.totalMs));
    return [label, String(t.n), f1(t.median), f1(t.p90), f1(t.min), f1(t.max), f1(summarize(xs.map((x) => x.runPodSandboxMs)).median),
      f1(summarize(xs.map((x) => x.createContainerMs)).median), f1(summarize(xs.map((x) => x.startContainerMs)).median), f2(t.median / runcMed)];
  })));
  const probe = r.kvmProbe ? `; KVM probe (accel = "auto", first pod only, in the warm-up): kvm=${r.kvmProbe.kvm}, ${r.kvmProbe.ms} ms, ${r.kvmProbe.reason}` : "";
  out.push(`accel=${r.accel}; guest kernel ${r.guestKernel}; ${r.guestMemoryMiB} MiB guest RAM, 1 vCPU; warm-up (untimed): ` +
    r.warmup.map((w) => `${w.sample.handler} ${f1(w.sample.totalMs)}`).join(", ") + probe);
  const withB = r.vm.filter((x) => x.breakdown);
  if (withB.length) {
    const starts = new Map<string, number>();
    for (const x of withB) starts.set(x.boot?.start ?? "boot", (starts.get(x.boot?.start ?? "boot") ?? 0) + 1);
    out.push("", `VM pod start breakdown (ms), from the shim's 'VM booted' log line; VMs: ${[...starts].map(([k, n]) => `${n} ${k === "boot" ? "booted" : `from ${k}`}`).join(", ")}`);
    out.push(table(["phase", "median", "min", "max", ...withB.map((_, i) => `run ${i + 1}`)], [
      ...BREAKDOWN.map(([k, label]) => {
        const xs = withB.map((x) => x.breakdown![k] ?? NaN);
        const s = summarize(xs.filter(Number.isFinite));
        return [label, f1(s.median), f1(s.min), f1(s.max), ...xs.map(f1)];
      }),
      ["total (RunPodSandbox → RUNNING)", f1(summarize(withB.map((x) => x.sample.totalMs)).median), "", "", ...withB.map((x) => f1(x.sample.totalMs))],
    ]));
  }
  const m = r.memory;
  if (m) {
    const shimWord = r.grouping === "node" ? "its share of the node's shim daemon" : "its shim daemon";
    out.push("", `Host memory per VM pod (MiB): ${shimWord} + its QEMU, ${m.pods} VM pods running, read after ${m.settleSec} s; guest RAM configured ${m.guestMemoryMiB} MiB (the default memory_mib)` +
      `${r.kernelParams ? `; guest kernel_params "${r.kernelParams}"` : ""}`);
    if (m.ksm) out.push(`host KSM on for this test (${m.ksm.waitedSec.toFixed(0)} s for two full scans): ${mib((m.ksm.pagesSharing * 4096) / 1024)} MiB merged away across the VMs (pages_sharing ${m.ksm.pagesSharing}, pages_shared ${m.ksm.pagesShared})`);
    type Row = { shimPss: number; shimUss: number; qemuPss: number; qemuUss: number; qemuRss: number; guestRamRss: number; tcgCodeRss: number; qemuOtherAnonPss: number; qemuPssFile: number; pss: number; uss: number };
    const row = (label: string, p: Row) => [label, mib(p.shimPss), mib(p.shimUss), mib(p.qemuPss), mib(p.qemuUss), mib(p.qemuRss),
      mib(p.guestRamRss), mib(p.tcgCodeRss), mib(p.qemuOtherAnonPss), mib(p.qemuPssFile), mib(p.pss), mib(p.uss)];
    out.push(table(["pod", "shim PSS", "shim USS", "QEMU PSS", "QEMU USS", "QEMU RSS", "guest RAM RSS", "TCG code RSS", "QEMU other anon", "QEMU files", "PSS/pod", "USS/pod"], [
      ...m.perPod.map((p, i) => row(`pod ${i + 1} (shim ${p.shimPid}, qemu ${p.qemuPid})`, {
        shimPss: p.shim.pss, shimUss: p.shim.uss, qemuPss: p.qemu.pss, qemuUss: p.qemu.uss, qemuRss: p.qemu.rss, guestRamRss: p.qemuParts.guestRam.rss,
        tcgCodeRss: p.qemuParts.tcgCode.rss, qemuOtherAnonPss: p.qemuParts.otherAnonPss, qemuPssFile: p.qemu.pssFile, pss: p.pss, uss: p.uss,
      })),
      row("mean", m.mean),
    ]));
    out.push("(guest RAM RSS: guest pages touched since boot, of the configured size; TCG code: QEMU's translation cache; other anon and files are PSS)");
    const p1 = m.perPod[0];
    if (p1?.qemuParts.topFiles.length) out.push(`QEMU's largest files (pod 1, RSS/PSS): ${p1.qemuParts.topFiles.map((f) => `${f.name} ${mib(f.rss)}/${mib(f.pss)}`).join(", ")}`);
    const others = m.perPod.flatMap((p) => p.others);
    if (others.length) out.push(`(also counted, other processes under the shims: ${others.map((o) => `${o.pid} ${o.cmd.slice(0, 60)}`).join("; ")})`);
    const g = m.guestMeminfo;
    if (g) out.push(`guest's own view (pod 1, /proc/meminfo): MemTotal ${mib(g["MemTotal"] ?? NaN)}, MemFree ${mib(g["MemFree"] ?? NaN)}, ` +
      `used ${mib((g["MemTotal"] ?? NaN) - (g["MemFree"] ?? NaN))}, Cached ${mib(g["Cached"] ?? NaN)}, Shmem ${mib(g["Shmem"] ?? NaN)}`);
    const t = m.template;
    if (t && p1?.qemuParts.template) {
      const pt = p1.qemuParts.template;
      out.push(`VM template: ${t.file} holds ${mib(t.residentKiB)} MiB of guest memory in host RAM, once for all pods; pod 1 maps ${mib(pt.sharedRss)} MiB of it (PSS ${mib(pt.sharedPss)}) and copied ${mib(pt.copied)} MiB it wrote`);
      out.push(`PSS per VM pod ${((m.mean.pss * 1024) / 1e6).toFixed(1)} MB; charging each pod 1/${m.pods} of the whole template file instead: ${((t.perPod * 1024) / 1e6).toFixed(1)} MB (target ≤ ${VM_PSS_TARGET_MB} MB; Kata with QEMU is ~123 MB)`);
    } else {
      out.push(`PSS per VM pod ${((m.mean.pss * 1024) / 1e6).toFixed(1)} MB (target ≤ ${VM_PSS_TARGET_MB} MB; Kata with QEMU is ~123 MB)`);
    }
  }
  if (r.errors.length) out.push("", "errors:", ...r.errors.map((e) => `  ${e}`));
  return out.join("\n");
}

/** The JSON form: raw samples plus their summaries, rounded to 0.1 ms. */
export function toJson(rep: BenchReport): unknown {
  const sum = (xs: number[]): Summary & { samples: number[] } => {
    const s = summarize(xs);
    return { n: s.n, min: round1(s.min), median: round1(s.median), p90: round1(s.p90), max: round1(s.max), mean: round1(s.mean), samples: xs.map(round1) };
  };
  return {
    ...rep,
    latency: rep.latency && {
      missedRefills: rep.latency.missedRefills,
      rows: rep.latency.rows.map((row) => ({
        ...row,
        samples: undefined,
        ctr: sum(row.samples.ctr),
        createToStart: sum(row.samples.createToStart),
        createToTaskCreate: sum(row.samples.createToTaskCreate),
        taskCreateToStart: sum(row.samples.taskCreateToStart),
      })),
    },
    bootstrap: rep.bootstrap && {
      runtimes: Object.fromEntries(Object.entries(rep.bootstrap.runtimes).map(([k, v]) => [k, { start: sum(v.start), ready: sum(v.ready) }])),
      baselines: Object.fromEntries(Object.entries(rep.bootstrap.baselines).map(([k, v]) => [k, sum(v)])),
    },
    vm: rep.vm && {
      ...rep.vm,
      summary: {
        vmTotal: sum(rep.vm.vm.map((x) => x.sample.totalMs)),
        runcTotal: sum(rep.vm.runc.map((x) => x.totalMs)),
        breakdown: Object.fromEntries(BREAKDOWN.map(([k]) => [k, sum(rep.vm!.vm.flatMap((x) => (x.breakdown?.[k] === undefined ? [] : [x.breakdown[k]!])))])),
      },
    },
    memoryUnit: "KiB",
  };
}

export function writeResults(dir: string, rep: BenchReport): string[] {
  mkdirSync(dir, { recursive: true });
  const text = JSON.stringify(toJson(rep), null, 2) + "\n";
  const stamp = rep.startedAt.replace(/[:.]/g, "-");
  const paths = [join(dir, "latest.json"), join(dir, `${stamp}.json`)];
  for (const p of paths) writeFileSync(p, text);
  return paths;
}
