// A container's cgroup: where it is (cgroup v1 or v2), its resource usage as the
// io.containerd.cgroups.v1/v2 Metrics messages that containerd's CRI plugin decodes, and the counter
// its OOM kills show in. Used by the host (runc mode) and by the guest agent (always cgroup v2).
// The values follow containerd's cgroups library, which containerd-shim-runc-v2 reports with: on v2 an
// unlimited ("max") value is MaxUint64, on v1 pids.max "max" is 0 and negative values are 0; a
// controller that is not there leaves its message out (v1) or zeros (v2).
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { MetricsSchema as V1Metrics, type Metrics as V1MetricsMsg } from "../gen/cgroups/v1/metrics_pb.js";
import { MetricsSchema as V2Metrics, type Metrics as V2MetricsMsg } from "../gen/cgroups/v2/metrics_pb.js";

export const CGROUP_ROOT = "/sys/fs/cgroup";
const HUGEPAGES_DIR = "/sys/kernel/mm/hugepages";
const PARTITIONS = "/proc/partitions";
/** What an unlimited cgroup v2 value is reported as. */
export const UNLIMITED = 0xffffffffffffffffn;
const RDMA_UNLIMITED = 0xffffffffn;
/** cpuacct.stat counts in USER_HZ ticks. */
const NS_PER_TICK = 10_000_000n;

/** A Task Stats reply: the Metrics message, encoded, with its type. */
export interface EncodedMetrics {
  typeUrl: string;
  value: Uint8Array;
}

export function isCgroupV2(root = CGROUP_ROOT): boolean {
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

function toU64(v: string): bigint | undefined {
  if (!/^\d+$/.test(v)) return undefined;
  const n = BigInt(v);
  return n <= UNLIMITED ? n : undefined;
}

/** A cgroup v2 single-value file: a number, or "max" (MaxUint64); undefined if absent or unparsable. */
export function parseSingle(text: string | undefined): bigint | undefined {
  const v = text?.trim();
  if (!v) return undefined;
  return v === "max" ? UNLIMITED : toU64(v);
}

/** A cgroup v1 single-value file: negative values (and "max") count as 0, as containerd reads them. */
function parseV1(text: string | undefined): bigint {
  const v = text?.trim() ?? "";
  return toU64(v) ?? 0n;
}

/** A flat keyed file ("key value" per line): cpu.stat, memory.stat, memory.events, memory.oom_control. */
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
    const n = (k: string) => toU64(kv.get(k) ?? "") ?? 0n;
    out.push({ major: BigInt(m[1]!), minor: BigInt(m[2]!), rbytes: n("rbytes"), wbytes: n("wbytes"), rios: n("rios"), wios: n("wios") });
  }
  return out;
}

/** rdma.current / rdma.max: "DEV hca_handle=N hca_object=N" per device ("max" is MaxUint32). */
function parseRdma(text: string | undefined) {
  const out: Array<{ device: string; hcaHandles: number; hcaObjects: number }> = [];
  for (const line of (text ?? "").split("\n")) {
    const parts = line.trim().split(/\s+/);
    if (parts.length !== 3) continue;
    const e = { device: parts[0]!, hcaHandles: 0, hcaObjects: 0 };
    for (const kv of parts.slice(1)) {
      const [k, v = ""] = kv.split("=");
      const n = v === "max" ? RDMA_UNLIMITED : toU64(v);
      if (n === undefined || n > RDMA_UNLIMITED) continue;
      if (k === "hca_handle") e.hcaHandles = Number(n);
      else if (k === "hca_object") e.hcaObjects = Number(n);
    }
    out.push(e);
  }
  return out;
}

/** Huge page sizes as cgroup file names spell them ("2MB", "1GB"), from hugepages-<N>kB dirs. */
export function hugePageSizes(dir = HUGEPAGES_DIR): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const sizes: string[] = [];
  for (const n of names) {
    const m = /^hugepages-(\d+)kB$/.exec(n);
    if (!m) continue;
    const kb = Number(m[1]);
    sizes.push(kb >= 1 << 20 ? `${kb >> 20}GB` : kb >= 1 << 10 ? `${kb >> 10}MB` : `${kb}KB`);
  }
  return sizes;
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

/** Block devices by "major:minor", named as containerd names them (/dev/<name> from /proc/partitions). */
function devicesByNumber(file: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of (readText(file) ?? "").split("\n").slice(2)) {
    const [major, minor, , name] = line.trim().split(/\s+/);
    if (!name || !/^\d+$/.test(major ?? "") || !/^\d+$/.test(minor ?? "")) continue;
    const key = `${major}:${minor}`;
    if (!m.has(key)) m.set(key, `/dev/${name}`);
  }
  return m;
}

export interface CgroupOptions {
  /** The cgroup file system root (tests point it at a fake tree: v1 then has one dir per controller). */
  root?: string;
  hugepagesDir?: string;
  partitionsFile?: string;
}

export class Cgroup {
  readonly v2: boolean;
  private readonly root: string;
  private readonly mounts: Map<string, string>;

  constructor(
    private readonly rel: string,
    private readonly o: CgroupOptions = {},
  ) {
    this.root = o.root ?? CGROUP_ROOT;
    this.v2 = isCgroupV2(this.root);
    this.mounts = this.v2 || o.root ? new Map() : v1Mounts();
  }

  /** The directory of `controller` (v1), or the cgroup's one directory (v2). */
  dir(controller = ""): string {
    if (this.v2) return path.join(this.root, this.rel);
    return path.join(this.mounts.get(controller) ?? path.join(this.root, controller), this.rel);
  }

  /** The file whose `oom_kill` count grows with each OOM kill in the cgroup, with the key to read. */
  oomCounterFile(): string {
    return this.v2 ? path.join(this.dir(), "memory.events") : path.join(this.dir("memory"), "memory.oom_control");
  }

  /** How many OOM kills the cgroup has seen; undefined if the kernel does not say. */
  oomKills(): bigint | undefined {
    return parseKeyed(readText(this.oomCounterFile())).get("oom_kill");
  }

  /** The metrics, encoded for a Task Stats reply. */
  stats(): EncodedMetrics {
    return this.v2
      ? { typeUrl: V2Metrics.typeName, value: toBinary(V2Metrics, this.metricsV2()) }
      : { typeUrl: V1Metrics.typeName, value: toBinary(V1Metrics, this.metricsV1()) };
  }

  metricsV2(): V2MetricsMsg {
    const d = this.dir();
    const f = (name: string) => readText(path.join(d, name));
    const one = (name: string) => parseSingle(f(name)) ?? 0n;
    const stat = new Map([...parseKeyed(f("cpu.stat")), ...parseKeyed(f("memory.stat"))]);
    const g = (k: string) => stat.get(k) ?? 0n;
    const events = parseKeyed(f("memory.events"));
    const ev = (k: string) => events.get(k) ?? 0n;
    return create(V2Metrics, {
      pids: { current: one("pids.current"), limit: one("pids.max") },
      cpu: {
        usageUsec: g("usage_usec"), userUsec: g("user_usec"), systemUsec: g("system_usec"),
        nrPeriods: g("nr_periods"), nrThrottled: g("nr_throttled"), throttledUsec: g("throttled_usec"),
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
        usage: one("memory.current"), usageLimit: one("memory.max"),
        swapUsage: one("memory.swap.current"), swapLimit: one("memory.swap.max"),
      },
      // containerd leaves the events out when the file is missing or empty.
      memoryEvents: events.size > 0 ? { low: ev("low"), high: ev("high"), max: ev("max"), oom: ev("oom"), oomKill: ev("oom_kill") } : undefined,
      io: { usage: parseIoStat(f("io.stat")) },
      rdma: { current: parseRdma(f("rdma.current")), limit: parseRdma(f("rdma.max")) },
      hugetlb: hugePageSizes(this.o.hugepagesDir).map((size) => ({
        pagesize: size,
        max: one(`hugetlb.${size}.max`),
        current: one(`hugetlb.${size}.current`),
      })),
    });
  }

  metricsV1(): V1MetricsMsg {
    const file = (controller: string, name: string) => readText(path.join(this.dir(controller), name));
    const num = (controller: string, name: string) => parseV1(file(controller, name));
    const has = (controller: string, name = "") => existsSync(path.join(this.dir(controller), name));
    const init: MessageInitShape<typeof V1Metrics> = {};
    const st = parseKeyed(file("cpuacct", "cpuacct.stat"));
    const throttle = parseKeyed(file("cpu", "cpu.stat"));
    init.cpu = {
      usage: has("cpuacct", "cpuacct.usage")
        ? {
            total: num("cpuacct", "cpuacct.usage"),
            user: (st.get("user") ?? 0n) * NS_PER_TICK,
            kernel: (st.get("system") ?? 0n) * NS_PER_TICK,
            perCpu: (file("cpuacct", "cpuacct.usage_percpu") ?? "").trim().split(/\s+/).filter(Boolean).map(parseV1),
          }
        : {},
      throttling: {
        periods: throttle.get("nr_periods") ?? 0n,
        throttledPeriods: throttle.get("nr_throttled") ?? 0n,
        throttledTime: throttle.get("throttled_time") ?? 0n,
      },
    };
    if (has("pids", "pids.current")) init.pids = { current: num("pids", "pids.current"), limit: num("pids", "pids.max") };
    if (has("memory", "memory.stat")) {
      const ms = parseKeyed(file("memory", "memory.stat"));
      const g = (k: string) => ms.get(k) ?? 0n;
      const entry = (prefix: string) => ({
        limit: num("memory", `${prefix}.limit_in_bytes`),
        usage: num("memory", `${prefix}.usage_in_bytes`),
        max: num("memory", `${prefix}.max_usage_in_bytes`),
        failcnt: num("memory", `${prefix}.failcnt`),
      });
      init.memory = {
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
        // Without swap accounting there are no memsw files: zeros, as containerd's OptionalSwap gives.
        usage: entry("memory"), swap: entry("memory.memsw"), kernel: entry("memory.kmem"), kernelTcp: entry("memory.kmem.tcp"),
      };
      const oom = parseKeyed(file("memory", "memory.oom_control"));
      init.memoryOomControl = {
        oomKillDisable: oom.get("oom_kill_disable") ?? 0n,
        underOom: oom.get("under_oom") ?? 0n,
        oomKill: oom.get("oom_kill") ?? 0n,
      };
    }
    if (has("blkio")) init.blkio = this.blkioV1();
    if (has("hugetlb")) {
      init.hugetlb = hugePageSizes(this.o.hugepagesDir).map((size) => ({
        pagesize: size,
        usage: num("hugetlb", `hugetlb.${size}.usage_in_bytes`),
        max: num("hugetlb", `hugetlb.${size}.max_usage_in_bytes`),
        failcnt: num("hugetlb", `hugetlb.${size}.failcnt`),
      }));
    }
    if (has("rdma")) init.rdma = { current: parseRdma(file("rdma", "rdma.current")), limit: parseRdma(file("rdma", "rdma.max")) };
    return create(V1Metrics, init);
  }

  /** blkio: the CFQ "_recursive" files where the kernel has them and they say anything, else the throttle ones. */
  private blkioV1() {
    const dir = this.dir("blkio");
    const devices = devicesByNumber(this.o.partitionsFile ?? PARTITIONS);
    const read = (name: string) => {
      const out: Array<{ op: string; device: string; major: bigint; minor: bigint; value: bigint }> = [];
      for (const line of (readText(path.join(dir, `blkio.${name}`)) ?? "").split("\n")) {
        const f = line.trim().split(/[\s:]+/);
        if (f.length < 3) continue;
        const [major, minor] = [toU64(f[0]!), toU64(f[1]!)];
        const value = toU64(f[f.length === 4 ? 3 : 2]!);
        if (major === undefined || minor === undefined || value === undefined) continue;
        out.push({ op: f.length === 4 ? f[2]! : "", device: devices.get(`${major}:${minor}`) ?? "", major, minor, value });
      }
      return out;
    };
    const cfq = {
      sectorsRecursive: read("sectors_recursive"),
      ioServiceBytesRecursive: read("io_service_bytes_recursive"),
      ioServicedRecursive: read("io_serviced_recursive"),
      ioQueuedRecursive: read("io_queued_recursive"),
      ioServiceTimeRecursive: read("io_service_time_recursive"),
      ioWaitTimeRecursive: read("io_wait_time_recursive"),
      ioMergedRecursive: read("io_merged_recursive"),
      ioTimeRecursive: read("time_recursive"),
    };
    if (Object.values(cfq).some((l) => l.length > 0)) return cfq;
    return { ioServicedRecursive: read("throttle.io_serviced"), ioServiceBytesRecursive: read("throttle.io_service_bytes") };
  }
}
