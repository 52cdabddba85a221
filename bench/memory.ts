// Shim memory at density: pods × containers per configuration, then PSS/USS of every shim daemon
// of this containerd, summed and divided by the number of pods.
import { sleep } from "../test/helpers/util.js";
import { findShims, readExeMemory, readMemory, threadCount, type ProcMemory } from "./procmem.js";
import type { Grouping, Rig, RuntimeUnderTest } from "./rig.js";

export interface MemoryConfig {
  label: string;
  rt: RuntimeUnderTest;
  grouping: Grouping;
}

export interface ShimSample extends ProcMemory {
  pid: number;
  /** An idle spare daemon (Cocoon, pod grouping) counts as the price of fast new-pod starts. */
  spare: boolean;
  threads: number;
  /** KiB of the shim's executable (node or the Go binary) resident, and its share of it. */
  exeRss: number;
  exePss: number;
}

export interface MemoryResult {
  label: string;
  runtime: string;
  grouping: Grouping | "-";
  pods: number;
  containers: number;
  shims: ShimSample[];
  /** KiB over all shim daemons. */
  total: { pss: number; uss: number; rss: number };
  /** KiB per pod. */
  perPod: { pss: number; uss: number; rss: number };
  /**
   * KiB per pod as PSS would be if nothing but these shims mapped their executable: other node
   * processes on a busy host share node's text and so lower Cocoon's PSS, which a quiet host
   * would not. Counts the executable's resident pages once (the largest RSS among the shims).
   */
  perPodIsolatedPss: number;
}

async function inBatches<T>(items: T[], size: number, fn: (t: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

export async function benchMemory(rig: Rig, configs: MemoryConfig[], pods: number, perPod: number, settleSec: number, progress: (msg: string) => void): Promise<MemoryResult[]> {
  const { ctrd } = rig;
  const out: MemoryResult[] = [];
  for (const [c, cfg] of configs.entries()) {
    const ids: string[] = [];
    try {
      for (let p = 0; p < pods; p++) {
        for (let k = 0; k < perPod; k++) {
          const id = `mem${c}-p${p}-c${k}`;
          await ctrd.ctr(rig.runArgs(cfg.rt, id, { grouping: cfg.grouping, pod: `pod${c}-${p}` }));
          ids.push(id);
        }
      }
      await sleep(settleSec * 1000);
      rig.noteDaemons();
      const shims: ShimSample[] = [];
      // Spares serve only pod grouping: with node grouping they would not exist (those seen here are
      // left idle by the pod rows), so they count in pod rows only.
      const withSpares = cfg.rt.kind === "cocoon" && cfg.grouping === "pod";
      for (const s of findShims(ctrd.address, undefined, { spares: withSpares })) {
        const m = readMemory(s.pid);
        const exe = readExeMemory(s.pid);
        if (m) shims.push({ pid: s.pid, spare: s.role === "spare", threads: threadCount(s.pid), ...m, exeRss: exe?.rss ?? 0, exePss: exe?.pss ?? 0 });
      }
      const sum = (k: keyof ProcMemory) => shims.reduce((a, s) => a + s[k], 0);
      const total = { pss: sum("pss"), uss: sum("uss"), rss: sum("rss") };
      const isolated = shims.reduce((a, s) => a + s.pss - s.exePss, 0) + Math.max(0, ...shims.map((s) => s.exeRss));
      out.push({
        label: cfg.label,
        runtime: cfg.rt.runtime,
        grouping: cfg.rt.kind === "runc-v2" ? "-" : cfg.grouping,
        pods,
        containers: ids.length,
        shims,
        total,
        perPod: { pss: total.pss / pods, uss: total.uss / pods, rss: total.rss / pods },
        perPodIsolatedPss: isolated / pods,
      });
      progress(`memory: ${cfg.label}: ${shims.length} shim(s) (${shims.filter((x) => x.spare).length} idle spare), ${(total.pss / pods / 1024).toFixed(2)} MiB PSS per pod`);
    } finally {
      await inBatches(ids, 6, (id) => rig.remove(id));
      const deadline = Date.now() + 10_000;
      while (findShims(ctrd.address).length && Date.now() < deadline) await sleep(50);
    }
  }
  return out;
}
