// Container start latency: `ctr run -d … sleep 1000` wall time per runtime, interleaved run by run so
// that background load and drift hit every row alike, plus the containerd-side split from events.
import { sleep } from "../test/helpers/util.js";
import { EventWatcher } from "./events.js";
import { findShims } from "./procmem.js";
import type { Grouping, Rig, RuntimeUnderTest } from "./rig.js";

export interface LatencyRow {
  label: string;
  rt: RuntimeUnderTest;
  grouping: Grouping;
  /** When set, a keeper container of this pod runs throughout, so every start reuses its shim. */
  warmPod?: string;
  /** A config file instead of the runtime's own for this grouping. */
  config?: string;
  /** Served by a spare daemon: before the next start, wait until the pool has refilled. */
  spares?: boolean;
  note: string;
}

export interface LatencySamples {
  /** Wall time of `ctr run -d`, ms. */
  ctr: number[];
  /** containerd's /containers/create to the shim's /tasks/start event, ms. */
  createToStart: number[];
  /** /containers/create to /tasks/create: shim launch (or reuse) plus the OCI runtime's create. */
  createToTaskCreate: number[];
  /** /tasks/create to /tasks/start: ctr's next calls plus the OCI runtime's start. */
  taskCreateToStart: number[];
}

export interface LatencyResult {
  rows: { label: string; runtime: string; grouping: Grouping | "-"; warm: boolean; note: string; samples: LatencySamples }[];
  /** Starts after which the spare pool had not refilled within 5 s (the next spare-row start then went through Node). */
  missedRefills: number;
}

/** Waits (bounded) until no more than `n` shim daemons of this containerd are left. */
async function shimsSettle(address: string, n: number, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (findShims(address).length > n && Date.now() < deadline) await sleep(20);
}

/**
 * Waits (bounded) until an idle spare is registered again: the spare that served a start is a daemon
 * now, and its replacement boots once that daemon has exited (or ~1.5 s after it began serving).
 * Each cold start so measured is one a spare serves, and no spare's Node start-up runs during
 * another row's start.
 */
async function sparesRefilled(rig: Rig, timeoutMs = 5_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (rig.spares().length < 1) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

export async function benchLatency(rig: Rig, rows: LatencyRow[], runs: number, warmup: number, progress: (msg: string) => void): Promise<LatencyResult> {
  const { ctrd } = rig;
  const watcher = new EventWatcher(ctrd.address);
  const keepers: string[] = [];
  const samples = rows.map((): LatencySamples => ({ ctr: [], createToStart: [], createToTaskCreate: [], taskCreateToStart: [] }));
  let missedRefills = 0;
  try {
    await sleep(300);
    for (const [r, row] of rows.entries()) {
      if (!row.warmPod) continue;
      const id = `keeper-${r}`;
      const pod = row.rt.kind === "runc-v2" || row.grouping === "pod" ? row.warmPod : undefined;
      await ctrd.ctr(rig.runArgs(row.rt, id, { grouping: row.grouping, pod, config: row.config }));
      keepers.push(id);
    }
    const base = findShims(ctrd.address).length;
    for (let i = -warmup; i < runs; i++) {
      // Rotate which row goes first so that no runtime always follows the same one.
      const order = rows.map((_, k) => (k + i + warmup) % rows.length);
      for (const r of order) {
        const row = rows[r]!;
        const id = `lat-${r}-${i + warmup}`;
        const pod = row.warmPod && (row.rt.kind === "runc-v2" || row.grouping === "pod") ? row.warmPod : undefined;
        const args = rig.runArgs(row.rt, id, { grouping: row.grouping, pod, config: row.config });
        const t0 = performance.now();
        await ctrd.ctr(args);
        const ms = performance.now() - t0;
        const t = await watcher.get(id);
        rig.noteDaemons();
        await rig.remove(id);
        await shimsSettle(ctrd.address, base);
        if (row.spares && !(await sparesRefilled(rig))) missedRefills++;
        if (i < 0) continue;
        const s = samples[r]!;
        s.ctr.push(ms);
        if (t.containerCreate && t.taskStart) s.createToStart.push(t.taskStart - t.containerCreate);
        if (t.containerCreate && t.taskCreate) s.createToTaskCreate.push(t.taskCreate - t.containerCreate);
        if (t.taskCreate && t.taskStart) s.taskCreateToStart.push(t.taskStart - t.taskCreate);
      }
      if (i >= 0 && (i + 1) % 5 === 0) progress(`latency: ${i + 1}/${runs} rounds`);
    }
  } finally {
    for (const id of keepers) await rig.remove(id);
    watcher.stop();
  }
  return {
    missedRefills,
    rows: rows.map((row, r) => ({
      label: row.label,
      runtime: row.rt.runtime,
      grouping: row.rt.kind === "runc-v2" ? "-" : row.grouping,
      warm: !!row.warmPod,
      note: row.note,
      samples: samples[r]!,
    })),
  };
}
