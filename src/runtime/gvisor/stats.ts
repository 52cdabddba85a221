// `runsc events --stats <id>` prints one JSON event whose data has runc's stats layout (cpu, memory,
// pids, ...), measured by the Sentry: cpu per container, memory for the whole sandbox. containerd's CRI
// plugin decodes the io.containerd.cgroups.v1 Metrics message, so that is what this builds.
import { create, toBinary } from "@bufbuild/protobuf";
import { MetricsSchema as V1Metrics } from "../../gen/cgroups/v1/metrics_pb.js";
import type { Stats } from "../../shim/runtime.js";

type Obj = Record<string, unknown>;

const MAX_U64 = (1n << 64n) - 1n;

/**
 * JSON numbers arrive as doubles: a cgroup "unlimited" (2^64-1) rounds up past the uint64 range, so
 * anything that large is the unlimited value again; negatives and junk are 0.
 */
function u64(v: unknown): bigint {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) return 0n;
  if (v >= 2 ** 64 - 1) return MAX_U64;
  return BigInt(Math.trunc(v));
}

function obj(v: unknown): Obj {
  return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Obj) : {};
}

function entry(v: unknown) {
  const e = obj(v);
  return { limit: u64(e["limit"]), usage: u64(e["usage"]), max: u64(e["max"]), failcnt: u64(e["failcnt"]) };
}

/** Parses runsc's output; an event that is not "stats" or has no data is an error naming what came. */
export function parseRunscStats(text: string): Obj {
  let ev: Obj;
  try {
    ev = obj(JSON.parse(text.trim().split("\n")[0] ?? ""));
  } catch {
    throw new Error(`runsc events --stats printed no JSON: ${text.slice(0, 200)}`);
  }
  if (ev["type"] !== "stats") throw new Error(`runsc events --stats printed a "${String(ev["type"])}" event, not "stats"`);
  if (!ev["data"] || typeof ev["data"] !== "object") throw new Error("runsc events --stats printed a stats event without data");
  return ev["data"] as Obj;
}

/** Maps runc-layout stats data to the cgroup v1 Metrics message. */
export function metricsFromRunscStats(data: Obj): Stats {
  const cpu = obj(data["cpu"]);
  const usage = obj(cpu["usage"]);
  const thr = obj(cpu["throttling"]);
  const mem = obj(data["memory"]);
  // runc's layout keeps the memory.stat lines it read under "raw"; the Sentry may fill some.
  const raw = obj(mem["raw"]);
  const r = (k: string) => u64(raw[k]);
  const pids = obj(data["pids"]);
  const m = create(V1Metrics, {
    pids: { current: u64(pids["current"]), limit: u64(pids["limit"]) },
    cpu: {
      usage: {
        total: u64(usage["total"]),
        kernel: u64(usage["kernel"]),
        user: u64(usage["user"]),
        perCpu: Array.isArray(usage["percpu"]) ? (usage["percpu"] as unknown[]).map(u64) : [],
      },
      throttling: {
        periods: u64(thr["periods"]),
        throttledPeriods: u64(thr["throttled_periods"]),
        throttledTime: u64(thr["throttled_time"]),
      },
    },
    memory: {
      cache: u64(mem["cache"]) || r("cache"),
      rss: r("rss"), rssHuge: r("rss_huge"), mappedFile: r("mapped_file"), dirty: r("dirty"), writeback: r("writeback"),
      pgPgIn: r("pgpgin"), pgPgOut: r("pgpgout"), pgFault: r("pgfault"), pgMajFault: r("pgmajfault"),
      inactiveAnon: r("inactive_anon"), activeAnon: r("active_anon"), inactiveFile: r("inactive_file"),
      activeFile: r("active_file"), unevictable: r("unevictable"),
      totalCache: r("total_cache"), totalRss: r("total_rss"), totalInactiveFile: r("total_inactive_file"),
      totalActiveFile: r("total_active_file"), totalInactiveAnon: r("total_inactive_anon"), totalActiveAnon: r("total_active_anon"),
      usage: entry(mem["usage"]), swap: entry(mem["swap"]), kernel: entry(mem["kernel"]), kernelTcp: entry(mem["kernelTCP"]),
    },
    blkio: {},
  });
  return { typeUrl: V1Metrics.typeName, value: toBinary(V1Metrics, m) };
}
