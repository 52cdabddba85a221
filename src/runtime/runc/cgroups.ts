// Container resource metrics read straight from the cgroup filesystem, encoded as the
// io.containerd.cgroups.v1/v2 Metrics messages that containerd's CRI plugin decodes.
import { existsSync, readFileSync, watch, type FSWatcher } from "node:fs";
import path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { MetricsSchema as V1Metrics } from "../../gen/cgroups/v1/metrics_pb.js";
import { MetricsSchema as V2Metrics } from "../../gen/cgroups/v2/metrics_pb.js";
import type { Stats } from "../../shim/runtime.js";
import type { Sys } from "../../sys/types.js";

const ROOT = "/sys/fs/cgroup";
const USER_HZ = 100;

export function isCgroupV2(root = ROOT): boolean {
  return existsSync(path.join(root, "cgroup.controllers"));
}

/** Resolves the OCI cgroupsPath (cgroupfs path, or systemd "slice:prefix:name") to a relative dir. */
export function cgroupRelPath(cgroupsPath: string | undefined, id: string): string {
  if (!cgroupsPath) return `/${id}`;
  const parts = cgroupsPath.split(":");
  if (parts.length === 3 && !cgroupsPath.startsWith("/")) {
    const [slice, prefix, name] = parts as [string, string, string];
    // systemd nests "a-b-c.slice" as a.slice/a-b.slice/a-b-c.slice.
    const sliceName = slice || "system.slice";
    const segs = sliceName.replace(/\.slice$/, "").split("-");
    const dirs: string[] = [];
    for (let i = 1; i <= segs.length; i++) dirs.push(segs.slice(0, i).join("-") + ".slice");
    if (sliceName === "-.slice") dirs.length = 0;
    const unit = name.endsWith(".slice") ? name : `${prefix ? prefix + "-" : ""}${name}.scope`;
    return "/" + [...dirs, unit].join("/");
  }
  return cgroupsPath.startsWith("/") ? cgroupsPath : `/${cgroupsPath}`;
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

/** containerd's cgroups library reports an unlimited ("max") cgroup v2 value as MaxUint64. */
const UNLIMITED = (1n << 64n) - 1n;

function readU64(file: string): bigint {
  const t = readText(file)?.trim();
  if (!t) return 0n;
  if (t === "max") return UNLIMITED;
  try {
    return BigInt(t.split(/\s+/)[0]!);
  } catch {
    return 0n;
  }
}

function readKV(file: string): Map<string, bigint> {
  const m = new Map<string, bigint>();
  for (const line of (readText(file) ?? "").split("\n")) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v !== undefined && /^\d+$/.test(v)) m.set(k, BigInt(v));
  }
  return m;
}

/** Mount points of cgroup v1 hierarchies, by controller. */
function v1Mounts(): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of (readText("/proc/self/mountinfo") ?? "").split("\n")) {
    const sep = line.indexOf(" - ");
    if (sep < 0) continue;
    const [fstype, , superOpts] = line.slice(sep + 3).split(" ");
    if (fstype !== "cgroup") continue;
    const mp = line.split(" ")[4]!;
    for (const opt of (superOpts ?? "").split(",")) m.set(opt, mp);
  }
  return m;
}

export class CgroupPaths {
  readonly v2: boolean;
  private mounts: Map<string, string>;

  constructor(private readonly rel: string) {
    this.v2 = isCgroupV2();
    this.mounts = this.v2 ? new Map() : v1Mounts();
  }

  dir(controller: string): string {
    if (this.v2) return path.join(ROOT, this.rel);
    return path.join(this.mounts.get(controller) ?? path.join(ROOT, controller), this.rel);
  }

  stats(): Stats {
    return this.v2 ? this.statsV2() : this.statsV1();
  }

  private statsV1(): Stats {
    const cpuacct = this.dir("cpuacct");
    const cpu = this.dir("cpu");
    const mem = this.dir("memory");
    const pids = this.dir("pids");
    const cpuStat = readKV(path.join(cpuacct, "cpuacct.stat"));
    const throttle = readKV(path.join(cpu, "cpu.stat"));
    const perCpu = (readText(path.join(cpuacct, "cpuacct.usage_percpu")) ?? "").trim().split(/\s+/).filter(Boolean).map((v) => BigInt(v));
    const ms = readKV(path.join(mem, "memory.stat"));
    const g = (k: string) => ms.get(k) ?? 0n;
    const entry = (prefix: string) => ({
      limit: readU64(path.join(mem, `${prefix}.limit_in_bytes`)),
      usage: readU64(path.join(mem, `${prefix}.usage_in_bytes`)),
      max: readU64(path.join(mem, `${prefix}.max_usage_in_bytes`)),
      failcnt: readU64(path.join(mem, `${prefix}.failcnt`)),
    });
    const oom = readKV(path.join(mem, "memory.oom_control"));
    const tickNs = BigInt(1e9 / USER_HZ);
    const m = create(V1Metrics, {
      pids: { current: readU64(path.join(pids, "pids.current")), limit: readU64(path.join(pids, "pids.max")) },
      cpu: {
        usage: {
          total: readU64(path.join(cpuacct, "cpuacct.usage")),
          kernel: (cpuStat.get("system") ?? 0n) * tickNs,
          user: (cpuStat.get("user") ?? 0n) * tickNs,
          perCpu,
        },
        throttling: {
          periods: throttle.get("nr_periods") ?? 0n,
          throttledPeriods: throttle.get("nr_throttled") ?? 0n,
          throttledTime: throttle.get("throttled_time") ?? 0n,
        },
      },
      memory: {
        cache: g("cache"), rss: g("rss"), rssHuge: g("rss_huge"), mappedFile: g("mapped_file"), dirty: g("dirty"),
        writeback: g("writeback"), pgPgIn: g("pgpgin"), pgPgOut: g("pgpgout"), pgFault: g("pgfault"),
        pgMajFault: g("pgmajfault"), inactiveAnon: g("inactive_anon"), activeAnon: g("active_anon"),
        inactiveFile: g("inactive_file"), activeFile: g("active_file"), unevictable: g("unevictable"),
        hierarchicalMemoryLimit: g("hierarchical_memory_limit"), hierarchicalSwapLimit: g("hierarchical_memsw_limit"),
        totalCache: g("total_cache"), totalRss: g("total_rss"), totalRssHuge: g("total_rss_huge"),
        totalMappedFile: g("total_mapped_file"), totalDirty: g("total_dirty"), totalWriteback: g("total_writeback"),
        totalPgPgIn: g("total_pgpgin"), totalPgPgOut: g("total_pgpgout"), totalPgFault: g("total_pgfault"),
        totalPgMajFault: g("total_pgmajfault"), totalInactiveAnon: g("total_inactive_anon"),
        totalActiveAnon: g("total_active_anon"), totalInactiveFile: g("total_inactive_file"),
        totalActiveFile: g("total_active_file"), totalUnevictable: g("total_unevictable"),
        usage: entry("memory"), swap: entry("memory.memsw"), kernel: entry("memory.kmem"), kernelTcp: entry("memory.kmem.tcp"),
      },
      memoryOomControl: {
        oomKillDisable: oom.get("oom_kill_disable") ?? 0n,
        underOom: oom.get("under_oom") ?? 0n,
        oomKill: oom.get("oom_kill") ?? 0n,
      },
      blkio: {},
    });
    return { typeUrl: V1Metrics.typeName, value: toBinary(V1Metrics, m) };
  }

  private statsV2(): Stats {
    const d = this.dir("");
    const cpu = readKV(path.join(d, "cpu.stat"));
    const ms = readKV(path.join(d, "memory.stat"));
    const ev = readKV(path.join(d, "memory.events"));
    const g = (k: string) => ms.get(k) ?? 0n;
    const m = create(V2Metrics, {
      pids: { current: readU64(path.join(d, "pids.current")), limit: readU64(path.join(d, "pids.max")) },
      cpu: {
        usageUsec: cpu.get("usage_usec") ?? 0n, userUsec: cpu.get("user_usec") ?? 0n, systemUsec: cpu.get("system_usec") ?? 0n,
        nrPeriods: cpu.get("nr_periods") ?? 0n, nrThrottled: cpu.get("nr_throttled") ?? 0n, throttledUsec: cpu.get("throttled_usec") ?? 0n,
      },
      memory: {
        anon: g("anon"), file: g("file"), kernelStack: g("kernel_stack"), slab: g("slab"), sock: g("sock"), shmem: g("shmem"),
        fileMapped: g("file_mapped"), fileDirty: g("file_dirty"), fileWriteback: g("file_writeback"), anonThp: g("anon_thp"),
        inactiveAnon: g("inactive_anon"), activeAnon: g("active_anon"), inactiveFile: g("inactive_file"),
        activeFile: g("active_file"), unevictable: g("unevictable"), slabReclaimable: g("slab_reclaimable"),
        slabUnreclaimable: g("slab_unreclaimable"), pgfault: g("pgfault"), pgmajfault: g("pgmajfault"),
        workingsetRefault: g("workingset_refault"), workingsetActivate: g("workingset_activate"),
        workingsetNodereclaim: g("workingset_nodereclaim"), pgrefill: g("pgrefill"), pgscan: g("pgscan"),
        pgsteal: g("pgsteal"), pgactivate: g("pgactivate"), pgdeactivate: g("pgdeactivate"), pglazyfree: g("pglazyfree"),
        pglazyfreed: g("pglazyfreed"), thpFaultAlloc: g("thp_fault_alloc"), thpCollapseAlloc: g("thp_collapse_alloc"),
        usage: readU64(path.join(d, "memory.current")), usageLimit: readU64(path.join(d, "memory.max")),
        swapUsage: readU64(path.join(d, "memory.swap.current")), swapLimit: readU64(path.join(d, "memory.swap.max")),
      },
      memoryEvents: { low: ev.get("low") ?? 0n, high: ev.get("high") ?? 0n, max: ev.get("max") ?? 0n, oom: ev.get("oom") ?? 0n, oomKill: ev.get("oom_kill") ?? 0n },
    });
    return { typeUrl: V2Metrics.typeName, value: toBinary(V2Metrics, m) };
  }

  /** Calls onOom for each OOM kill in the cgroup; returns a function that stops watching. */
  watchOom(sys: Sys, onOom: () => void): () => void {
    if (!this.v2) {
      const dir = this.dir("memory");
      if (!existsSync(path.join(dir, "memory.oom_control"))) return () => {};
      return sys.watchOomV1(dir, onOom);
    }
    const file = path.join(this.dir(""), "memory.events");
    let seen = readKV(file).get("oom_kill") ?? 0n;
    let w: FSWatcher | undefined;
    try {
      w = watch(file, () => {
        const now = readKV(file).get("oom_kill") ?? 0n;
        if (now > seen) {
          seen = now;
          onOom();
        }
      });
      w.unref();
    } catch {}
    return () => w?.close();
  }
}
