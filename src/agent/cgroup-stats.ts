// A container's resource usage from its cgroup v2 directory, as containerd's v2 Metrics message
// (what `ctr task metrics` and the CRI stats of a cgroup v2 host carry).
import { readFileSync } from "node:fs";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { MetricsSchema } from "../gen/cgroups/v2/metrics_pb.js";
import type { Metrics } from "../gen/cgroups/v2/metrics_pb.js";

export const CGROUP_ROOT = "/sys/fs/cgroup";
export const METRICS_TYPE_URL = "io.containerd.cgroups.v2.Metrics";
/** What containerd reports for an unlimited ("max") value. */
const UNLIMITED = 0xffffffffffffffffn;

function readText(dir: string, file: string): string | undefined {
  try {
    return readFileSync(path.join(dir, file), "utf8");
  } catch {
    return undefined;
  }
}

/** A single-value file: a number, or "max". */
export function parseSingle(text: string | undefined): bigint | undefined {
  const v = text?.trim();
  if (!v) return undefined;
  if (v === "max") return UNLIMITED;
  try {
    return BigInt(v);
  } catch {
    return undefined;
  }
}

/** A flat keyed file ("key value" per line), e.g. cpu.stat, memory.stat, memory.events. */
export function parseKeyed(text: string | undefined): Map<string, bigint> {
  const out = new Map<string, bigint>();
  for (const line of (text ?? "").split("\n")) {
    const [k, v] = line.trim().split(/\s+/);
    if (!k || v === undefined) continue;
    const n = parseSingle(v);
    if (n !== undefined) out.set(k, n);
  }
  return out;
}

/** io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ..." per device. */
export function parseIoStat(text: string | undefined) {
  const out: Array<{ major: bigint; minor: bigint; rbytes: bigint; wbytes: bigint; rios: bigint; wios: bigint }> = [];
  for (const line of (text ?? "").split("\n")) {
    const [dev, ...fields] = line.trim().split(/\s+/);
    const m = /^(\d+):(\d+)$/.exec(dev ?? "");
    if (!m) continue;
    const kv = new Map(fields.map((f) => f.split("=") as [string, string]));
    const n = (k: string) => parseSingle(kv.get(k)) ?? 0n;
    out.push({ major: BigInt(m[1]!), minor: BigInt(m[2]!), rbytes: n("rbytes"), wbytes: n("wbytes"), rios: n("rios"), wios: n("wios") });
  }
  return out;
}

const MEMORY_STAT_FIELDS: Record<string, string> = {
  anon: "anon",
  file: "file",
  kernel_stack: "kernelStack",
  slab: "slab",
  sock: "sock",
  shmem: "shmem",
  file_mapped: "fileMapped",
  file_dirty: "fileDirty",
  file_writeback: "fileWriteback",
  anon_thp: "anonThp",
  inactive_anon: "inactiveAnon",
  active_anon: "activeAnon",
  inactive_file: "inactiveFile",
  active_file: "activeFile",
  unevictable: "unevictable",
  slab_reclaimable: "slabReclaimable",
  slab_unreclaimable: "slabUnreclaimable",
  pgfault: "pgfault",
  pgmajfault: "pgmajfault",
  workingset_refault: "workingsetRefault",
  workingset_activate: "workingsetActivate",
  workingset_nodereclaim: "workingsetNodereclaim",
  pgrefill: "pgrefill",
  pgscan: "pgscan",
  pgsteal: "pgsteal",
  pgactivate: "pgactivate",
  pgdeactivate: "pgdeactivate",
  pglazyfree: "pglazyfree",
  pglazyfreed: "pglazyfreed",
  thp_fault_alloc: "thpFaultAlloc",
  thp_collapse_alloc: "thpCollapseAlloc",
};

/** Reads the metrics of the cgroup at `dir`; files that are missing (controller off) leave zeros. */
export function readMetrics(dir: string): Metrics {
  const cpu = parseKeyed(readText(dir, "cpu.stat"));
  const memStat = parseKeyed(readText(dir, "memory.stat"));
  const events = parseKeyed(readText(dir, "memory.events"));
  const memory: Record<string, bigint> = {};
  for (const [file, field] of Object.entries(MEMORY_STAT_FIELDS)) memory[field] = memStat.get(file) ?? 0n;
  const init: MessageInitShape<typeof MetricsSchema> = {
    pids: {
      current: parseSingle(readText(dir, "pids.current")) ?? 0n,
      limit: parseSingle(readText(dir, "pids.max")) ?? 0n,
    },
    cpu: {
      usageUsec: cpu.get("usage_usec") ?? 0n,
      userUsec: cpu.get("user_usec") ?? 0n,
      systemUsec: cpu.get("system_usec") ?? 0n,
      nrPeriods: cpu.get("nr_periods") ?? 0n,
      nrThrottled: cpu.get("nr_throttled") ?? 0n,
      throttledUsec: cpu.get("throttled_usec") ?? 0n,
    },
    memory: {
      ...memory,
      usage: parseSingle(readText(dir, "memory.current")) ?? 0n,
      usageLimit: parseSingle(readText(dir, "memory.max")) ?? 0n,
      swapUsage: parseSingle(readText(dir, "memory.swap.current")) ?? 0n,
      swapLimit: parseSingle(readText(dir, "memory.swap.max")) ?? 0n,
    },
    memoryEvents: {
      low: events.get("low") ?? 0n,
      high: events.get("high") ?? 0n,
      max: events.get("max") ?? 0n,
      oom: events.get("oom") ?? 0n,
      oomKill: events.get("oom_kill") ?? 0n,
    },
    io: { usage: parseIoStat(readText(dir, "io.stat")) },
  };
  return create(MetricsSchema, init);
}
