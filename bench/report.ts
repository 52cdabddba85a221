// Turns results into the tables printed to stdout and the JSON kept under bench/results/.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { BootstrapResult } from "./bootstrap.js";
import type { LatencyResult } from "./latency.js";
import type { MachineFacts } from "./machine.js";
import type { MemoryResult } from "./memory.js";
import { round1, summarize, type Summary } from "./stats.js";

export interface BenchReport {
  startedAt: string;
  durationSec: number;
  options: unknown;
  machine: MachineFacts;
  loadavgAfter: number[];
  latency?: LatencyResult;
  bootstrap?: BootstrapResult;
  memory?: MemoryResult[];
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
    return [m.label, m.grouping, `${m.pods}×${m.containers / m.pods}`, String(m.shims.length), mib(m.perPod.pss), mib(m.perPod.uss), mib(m.perPodIsolatedPss),
      mib(m.perPod.rss), mib(pssEach.median), mib(rssEach.median), mib(exeRss.median), f1(threads.median)];
  });
  return table(["runtime", "grouping", "pods×ctrs", "shims", "PSS/pod", "USS/pod", "PSS/pod alone", "RSS/pod", "PSS/shim", "RSS/shim", "exe RSS/shim", "threads"], rows) +
    "\n(MiB. 'alone': PSS if no other process on the host mapped the shim's executable; a busy host with other node processes lowers Cocoon's plain PSS.)";
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
