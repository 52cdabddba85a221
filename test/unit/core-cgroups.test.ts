// The shared cgroup stats reader and OOM watcher (host runc mode and guest agent), on fake cgroup
// trees: the values containerd-shim-runc-v2 reports, "max" included.
import assert from "node:assert/strict";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { Cgroup, parseIoStat, parseKeyed, parseSingle, UNLIMITED } from "../../src/core/cgroups.js";
import { watchOom } from "../../src/core/oom.js";
import { MetricsSchema as V1 } from "../../src/gen/cgroups/v1/metrics_pb.js";
import { MetricsSchema as V2 } from "../../src/gen/cgroups/v2/metrics_pb.js";
import { tmpdir } from "../helpers/util.js";

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Writes `files` (path relative to the root -> content) into a new temp dir. */
function tree(files: Record<string, string>): string {
  const root = tmpdir("cocoon-cgroups-");
  dirs.push(root);
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(join(root, rel, ".."), { recursive: true });
    writeFileSync(join(root, rel), text);
  }
  return root;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("cgroup files", () => {
  it("parses single values (max is MaxUint64), keyed files and io.stat", () => {
    assert.equal(parseSingle("max\n"), UNLIMITED);
    assert.equal(UNLIMITED, 0xffffffffffffffffn);
    assert.equal(parseSingle("123\n"), 123n);
    assert.equal(parseSingle(""), undefined);
    assert.equal(parseSingle("-1"), undefined);
    assert.deepEqual([...parseKeyed("usage_usec 10\nuser_usec 7\n")], [["usage_usec", 10n], ["user_usec", 7n]]);
    assert.deepEqual(parseIoStat("254:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n"), [
      { major: 254n, minor: 0n, rbytes: 4096n, wbytes: 0n, rios: 1n, wios: 0n },
    ]);
  });
});

describe("cgroup v2 metrics", () => {
  const root = () =>
    tree({
      "cgroup.controllers": "cpu memory pids io\n",
      "pod/c1/cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n",
      "pod/c1/memory.current": "4096000\n",
      "pod/c1/memory.max": "max\n",
      "pod/c1/memory.swap.max": "max\n",
      "pod/c1/memory.stat": "anon 2000\nfile 3000\ninactive_file 1000\npgfault 9\nthp_collapse_alloc 2\n",
      "pod/c1/memory.events": "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n",
      "pod/c1/pids.current": "3\n",
      "pod/c1/pids.max": "max\n",
      "pod/c1/io.stat": "8:0 rbytes=512 wbytes=1024 rios=1 wios=2 dbytes=0 dios=0\n",
      "pod/c1/rdma.max": "mlx4_0 hca_handle=2 hca_object=max\n",
      "pod/c1/hugetlb.2MB.max": "max\n",
      "pod/c1/hugetlb.2MB.current": "0\n",
      "hugepages/hugepages-2048kB/nr_hugepages": "0\n",
    });

  it("fills the v2 Metrics message, reporting max as MaxUint64", () => {
    const r = root();
    const cg = new Cgroup("/pod/c1", { root: r, hugepagesDir: join(r, "hugepages") });
    assert.equal(cg.v2, true);
    const s = cg.stats();
    assert.equal(s.typeUrl, "io.containerd.cgroups.v2.Metrics");
    const m = fromBinary(V2, s.value);
    assert.deepEqual([m.cpu?.usageUsec, m.cpu?.userUsec, m.cpu?.systemUsec, m.cpu?.nrPeriods, m.cpu?.nrThrottled, m.cpu?.throttledUsec], [1500n, 1000n, 500n, 4n, 1n, 20n]);
    assert.equal(m.memory?.usage, 4096000n);
    assert.equal(m.memory?.usageLimit, UNLIMITED);
    assert.equal(m.memory?.swapLimit, UNLIMITED);
    assert.equal(m.memory?.swapUsage, 0n);
    assert.deepEqual([m.memory?.anon, m.memory?.file, m.memory?.inactiveFile, m.memory?.pgfault, m.memory?.thpCollapseAlloc], [2000n, 3000n, 1000n, 9n, 2n]);
    assert.deepEqual([m.memoryEvents?.max, m.memoryEvents?.oom, m.memoryEvents?.oomKill], [2n, 1n, 1n]);
    assert.deepEqual([m.pids?.current, m.pids?.limit], [3n, UNLIMITED]);
    assert.deepEqual(m.io?.usage.map((e) => [e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios]), [[8n, 0n, 512n, 1024n, 1n, 2n]]);
    assert.deepEqual(m.rdma?.limit.map((e) => [e.device, e.hcaHandles, e.hcaObjects]), [["mlx4_0", 2, 0xffffffff]]);
    assert.deepEqual(m.hugetlb.map((h) => [h.pagesize, h.max, h.current]), [["2MB", UNLIMITED, 0n]]);
  });

  it("a missing controller leaves zeros, and no memory events without the file", () => {
    const r = root();
    const m = fromBinary(V2, new Cgroup("/pod/absent", { root: r, hugepagesDir: join(r, "none") }).stats().value);
    assert.equal(m.memory?.usage, 0n);
    assert.equal(m.pids?.limit, 0n);
    assert.equal(m.memoryEvents, undefined);
    assert.deepEqual(m.hugetlb, []);
  });
});

describe("cgroup v1 metrics", () => {
  const files = (rel: string): Record<string, string> => ({
    [`cpuacct${rel}/cpuacct.usage`]: "123456789\n",
    [`cpuacct${rel}/cpuacct.stat`]: "user 30\nsystem 12\n",
    [`cpuacct${rel}/cpuacct.usage_percpu`]: "100 200 \n",
    [`cpu${rel}/cpu.stat`]: "nr_periods 5\nnr_throttled 2\nthrottled_time 777\n",
    [`pids${rel}/pids.current`]: "4\n",
    [`pids${rel}/pids.max`]: "max\n",
    [`memory${rel}/memory.stat`]: "cache 10\nrss 20\nhierarchical_memory_limit 9223372036854771712\ntotal_rss 21\n",
    [`memory${rel}/memory.usage_in_bytes`]: "4096\n",
    [`memory${rel}/memory.limit_in_bytes`]: "9223372036854771712\n",
    [`memory${rel}/memory.max_usage_in_bytes`]: "8192\n",
    [`memory${rel}/memory.failcnt`]: "3\n",
    [`memory${rel}/memory.kmem.limit_in_bytes`]: "-1\n",
    [`memory${rel}/memory.oom_control`]: "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    [`blkio${rel}/blkio.throttle.io_service_bytes`]: "8:0 Read 4096\n8:0 Write 0\nTotal 4096\n",
    [`blkio${rel}/blkio.throttle.io_serviced`]: "8:0 Read 1\n8:0 Write 0\nTotal 1\n",
    "partitions": "major minor  #blocks  name\n\n   8        0   10485760 sda\n",
  });

  it("fills the v1 Metrics message as containerd's cgroups library does", () => {
    const r = tree(files("/ns/c1"));
    const cg = new Cgroup("/ns/c1", { root: r, partitionsFile: join(r, "partitions"), hugepagesDir: join(r, "none") });
    assert.equal(cg.v2, false);
    const s = cg.stats();
    assert.equal(s.typeUrl, "io.containerd.cgroups.v1.Metrics");
    const m = fromBinary(V1, s.value);
    // cpuacct.stat counts USER_HZ (100/s) ticks; containerd reports nanoseconds.
    assert.deepEqual([m.cpu?.usage?.total, m.cpu?.usage?.user, m.cpu?.usage?.kernel], [123456789n, 300_000_000n, 120_000_000n]);
    assert.deepEqual(m.cpu?.usage?.perCpu, [100n, 200n]);
    assert.deepEqual([m.cpu?.throttling?.periods, m.cpu?.throttling?.throttledPeriods, m.cpu?.throttling?.throttledTime], [5n, 2n, 777n]);
    // v1 reads pids.max "max" as 0 (v2 says MaxUint64).
    assert.deepEqual([m.pids?.current, m.pids?.limit], [4n, 0n]);
    assert.deepEqual([m.memory?.cache, m.memory?.rss, m.memory?.totalRss], [10n, 20n, 21n]);
    assert.equal(m.memory?.hierarchicalMemoryLimit, 9223372036854771712n);
    assert.deepEqual([m.memory?.usage?.usage, m.memory?.usage?.limit, m.memory?.usage?.max, m.memory?.usage?.failcnt], [4096n, 9223372036854771712n, 8192n, 3n]);
    // A negative limit counts as 0; no swap accounting (no memsw files) gives zeros.
    assert.equal(m.memory?.kernel?.limit, 0n);
    assert.deepEqual([m.memory?.swap?.usage, m.memory?.swap?.limit], [0n, 0n]);
    assert.equal(m.memoryOomControl?.oomKill, 2n);
    // No CFQ files: the throttle ones, with device names from /proc/partitions.
    assert.deepEqual(m.blkio?.ioServiceBytesRecursive.map((e) => [e.device, e.major, e.minor, e.op, e.value]), [["/dev/sda", 8n, 0n, "Read", 4096n], ["/dev/sda", 8n, 0n, "Write", 0n]]);
    assert.equal(m.blkio?.ioServicedRecursive.length, 2);
    assert.equal(m.hugetlb.length, 0);
    assert.equal(m.rdma, undefined);
  });

  it("leaves out what a missing controller would report", () => {
    const r = tree({ "cpu/x": "" });
    const m = fromBinary(V1, new Cgroup("/ns/none", { root: r }).stats().value);
    assert.equal(m.memory, undefined);
    assert.equal(m.pids, undefined);
    assert.equal(m.memoryOomControl, undefined);
    assert.equal(m.cpu?.usage?.total, 0n);
  });
});

describe("watchOom", () => {
  const noV1 = { watchOomV1: () => assert.fail("v1 notification on a v2 cgroup") };

  it("v2: reports each rise of oom_kill once, from the inotify watch", async () => {
    const r = tree({ "cgroup.controllers": "memory\n", "c/memory.events": "oom 0\noom_kill 0\n" });
    const seen: number[] = [];
    const stop = watchOom(new Cgroup("/c", { root: r }), noV1, () => seen.push(Date.now()), 60_000);
    const keepAlive = setTimeout(() => {}, 10_000);
    try {
      writeFileSync(join(r, "c/memory.events"), "oom 1\noom_kill 1\n");
      for (let i = 0; i < 100 && seen.length === 0; i++) await sleep(20);
      assert.equal(seen.length, 1);
      writeFileSync(join(r, "c/memory.events"), "oom 1\noom_kill 1\n");
      await sleep(100);
      assert.equal(seen.length, 1, "an unchanged count is no new OOM");
    } finally {
      stop();
      clearTimeout(keepAlive);
    }
  });

  it("the poll finds a kill the notification missed", async () => {
    const r = tree({ "cgroup.controllers": "memory\n", "c/memory.events": "oom_kill 0\n" });
    let n = 0;
    const stop = watchOom(new Cgroup("/c", { root: r }), noV1, () => n++, 30);
    const keepAlive = setTimeout(() => {}, 10_000);
    try {
      // Replace the file rather than write it: the inotify watch (on the old inode) never fires.
      writeFileSync(join(r, "c/memory.events.new"), "oom_kill 3\n");
      const { renameSync } = await import("node:fs");
      renameSync(join(r, "c/memory.events.new"), join(r, "c/memory.events"));
      for (let i = 0; i < 100 && n === 0; i++) await sleep(20);
      assert.equal(n, 1);
    } finally {
      stop();
      clearTimeout(keepAlive);
    }
  });

  it("v1: a notification counts at once (the kernel counts the kill later, the container may be gone by then); the catch-up is not a second kill; the poll sees a kill whose notification was lost", async () => {
    const r = tree({ "memory/c/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n" });
    let notify = () => {};
    let stopped = false;
    const notifier = {
      watchOomV1: (dir: string, cb: () => void) => {
        assert.equal(dir, join(r, "memory/c"));
        notify = cb;
        return () => (stopped = true);
      },
    };
    let n = 0;
    const stop = watchOom(new Cgroup("/c", { root: r }), notifier, () => n++, 30);
    const keepAlive = setTimeout(() => {}, 10_000);
    const count = (k: number) => writeFileSync(join(r, "memory/c/memory.oom_control"), `oom_kill_disable 0\nunder_oom 0\noom_kill ${k}\n`);
    try {
      notify();
      assert.equal(n, 1, "reported on the notification, before the count shows it");
      count(1);
      await sleep(150);
      assert.equal(n, 1, "the count catching up is not a second kill");
      count(2);
      for (let i = 0; i < 50 && n === 1; i++) await sleep(20);
      assert.equal(n, 2, "a kill without a notification is seen by the poll");
    } finally {
      stop();
      clearTimeout(keepAlive);
    }
    assert.equal(stopped, true);
  });
});
