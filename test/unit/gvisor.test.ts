// gVisor mode's runsc-specific pieces without runsc: the stats mapping (on JSON runsc 20221219
// really printed here), which containers join a sandbox, the sandbox's cgroup, the platform probe
// (fake runsc scripts standing in for a KVM that works, fails or hangs) and the [gvisor] table.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { MetricsSchema as V1Metrics } from "../../src/gen/cgroups/v1/metrics_pb.js";
import { metricsFromRunscStats, parseRunscStats } from "../../src/runtime/gvisor/stats.js";
import { joinsSandbox, sandboxCgroup } from "../../src/runtime/gvisor/flavor.js";
import { cachedProbe, choosePlatform, probeKvmPlatform } from "../../src/runtime/gvisor/platform.js";
import { parseGvisorSettings } from "../../src/runtime/gvisor/settings.js";
import { runscGlobalArgs } from "../../src/runtime/gvisor/runtime.js";
import { runscRelease } from "../../src/runtime/gvisor/network.js";
import { Logger } from "../../src/core/log.js";
import { ShimError } from "../../src/core/errors.js";

// `runsc events --stats c2` for a busybox container in a two-container sandbox (ptrace platform).
const CAPTURED =
  '{"type":"stats","id":"c2","data":{"cpu":{"usage":{"total":3219446666}},"memory":{"usage":{"limit":0,"usage":8253440,"failcnt":0},' +
  '"swap":{"limit":0,"failcnt":0},"kernel":{"limit":0,"failcnt":0},"kernelTCP":{"limit":0,"failcnt":0}},"pids":{"current":5}}}\n';

describe("gvisor: runsc events --stats to cgroup v1 Metrics", () => {
  it("maps the captured output: cpu total, memory usage, pids", () => {
    const s = metricsFromRunscStats(parseRunscStats(CAPTURED));
    assert.equal(s.typeUrl, "io.containerd.cgroups.v1.Metrics");
    const m = fromBinary(V1Metrics, s.value);
    assert.equal(m.cpu?.usage?.total, 3219446666n);
    assert.equal(m.memory?.usage?.usage, 8253440n);
    assert.equal(m.memory?.usage?.limit, 0n);
    assert.equal(m.pids?.current, 5n);
  });

  it("keeps an unlimited (2^64-1) limit, per-cpu usage, throttling and memory.stat lines", () => {
    const text = JSON.stringify({
      type: "stats",
      id: "x",
      data: {
        cpu: { usage: { total: 10, kernel: 4, user: 6, percpu: [7, 3] }, throttling: { periods: 2, throttled_periods: 1, throttled_time: 9 } },
        memory: { cache: 100, usage: { limit: 18446744073709551615, usage: 4096, max: 8192, failcnt: 1 }, raw: { total_inactive_file: 512, rss: 300 } },
        pids: { current: 2, limit: 50 },
      },
    });
    const m = fromBinary(V1Metrics, metricsFromRunscStats(parseRunscStats(text)).value);
    assert.equal(m.memory?.usage?.limit, (1n << 64n) - 1n);
    assert.equal(m.memory?.usage?.max, 8192n);
    assert.equal(m.memory?.cache, 100n);
    assert.equal(m.memory?.totalInactiveFile, 512n);
    assert.equal(m.memory?.rss, 300n);
    assert.deepEqual(m.cpu?.usage?.perCpu, [7n, 3n]);
    assert.equal(m.cpu?.throttling?.throttledTime, 9n);
    assert.equal(m.pids?.limit, 50n);
  });

  it("refuses what is not a stats event", () => {
    assert.throws(() => parseRunscStats(""), /no JSON/);
    assert.throws(() => parseRunscStats('{"type":"oom","id":"x"}'), /"oom" event/);
    assert.throws(() => parseRunscStats('{"type":"stats","id":"x"}'), /without data/);
  });
});

describe("gvisor: sandbox grouping and cgroups", () => {
  it("a container joins a sandbox only with CRI's container type and a sandbox id", () => {
    const ann = (a: Record<string, string>) => ({ annotations: a });
    assert.equal(joinsSandbox(ann({ "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "p" })), true);
    assert.equal(joinsSandbox(ann({ "io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "p" })), false);
    assert.equal(joinsSandbox(ann({ "io.kubernetes.cri.container-type": "container" })), false);
    assert.equal(joinsSandbox({}), false);
  });

  it("finds the sandbox process's memory cgroup (v1) or its unified one (v2)", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "gvisor-proc-"));
    try {
      mkdirSync(path.join(dir, "10"));
      writeFileSync(path.join(dir, "10", "cgroup"), "9:name=systemd:/k/p\n4:memory:/kubepods/pod1/abc\n3:cpu,cpuacct:/kubepods/pod1/abc\n");
      mkdirSync(path.join(dir, "11"));
      writeFileSync(path.join(dir, "11", "cgroup"), "0::/kubepods.slice/a:b\n");
      assert.equal(sandboxCgroup(10, dir), "/kubepods/pod1/abc");
      assert.equal(sandboxCgroup(11, dir), "/kubepods.slice/a:b");
      assert.equal(sandboxCgroup(12, dir), undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("gvisor: platform probe", () => {
  let dir: string;
  const log = new Logger("error");
  const script = (name: string, body: string) => {
    const p = path.join(dir, name);
    writeFileSync(p, `#!/bin/sh\n${body}\n`);
    chmodSync(p, 0o755);
    return p;
  };
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), "gvisor-probe-"));
    writeFileSync(path.join(dir, "kvm"), "");
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("uses KVM when a KVM sandbox runs, ptrace when it fails, hangs or there is no /dev/kvm", async () => {
    const kvm = path.join(dir, "kvm");
    const args = path.join(dir, "args");
    const ok = script("ok", `echo "$@" > ${args}; exit 0`);
    const r1 = await probeKvmPlatform(ok, path.join(dir, "s1"), 5000, kvm);
    assert.equal(r1.platform, "kvm");
    const fail = script("fail", "echo 'opening device file for platform \"kvm\": EBUSY' >&2; exit 128");
    const r2 = await probeKvmPlatform(fail, path.join(dir, "s2"), 5000, kvm);
    assert.equal(r2.platform, "ptrace");
    assert.match(r2.reason, /EBUSY/);
    const hang = script("hang", "exec sleep 30");
    const r3 = await probeKvmPlatform(hang, path.join(dir, "s3"), 300, kvm);
    assert.equal(r3.platform, "ptrace");
    assert.match(r3.reason, /within 300 ms/);
    const r4 = await probeKvmPlatform(ok, path.join(dir, "s4"), 5000, path.join(dir, "no-such-kvm"));
    assert.deepEqual([r4.platform, r4.reason], ["ptrace", `${path.join(dir, "no-such-kvm")} does not exist`]);
  });

  it("an explicit platform is used as is; auto probes once and then reads the cache", async () => {
    const never = script("never", "echo called >&2; exit 99");
    assert.equal(await choosePlatform("kvm", never, path.join(dir, "c0"), log), "kvm");
    const state = path.join(dir, "c1");
    const first = await choosePlatform("auto", never, state, log);
    assert.equal(first, "ptrace");
    assert.equal(cachedProbe(state)?.platform, "ptrace");
    writeFileSync(path.join(state, "platform-probe.json"), JSON.stringify({ platform: "kvm", reason: "cached", ms: 1 }));
    assert.equal(await choosePlatform("auto", never, state, log), "kvm");
  });
});

describe("gvisor: [gvisor] settings", () => {
  it("has defaults, checks keys and values, and turns them into runsc flags", () => {
    const d = parseGvisorSettings({}, "t.toml");
    assert.deepEqual(d, {
      binary: "runsc", root: "/run/containerd/runsc-cocoon", platform: "auto", network: "auto", stateDir: "/run/cocoon/gvisor", systemdCgroup: false, debugLog: "",
    });
    assert.deepEqual(runscGlobalArgs(d, "ptrace", "sandbox"), ["--platform=ptrace", "--network=sandbox"]);
    const s = parseGvisorSettings({ platform: "kvm", debug_log: "/var/log/runsc" }, "t.toml");
    assert.deepEqual(runscGlobalArgs(s, "kvm", "host"), ["--platform=kvm", "--network=host", "--debug", "--debug-log=/var/log/runsc/"]);
    const bad = (t: Record<string, unknown>, re: RegExp) =>
      assert.throws(() => parseGvisorSettings(t, "t.toml"), (e: unknown) => e instanceof ShimError && e.kind === "InvalidArgument" && re.test(e.message));
    bad({ platfrom: "kvm" }, /unknown key "gvisor.platfrom"/);
    bad({ platform: "systrap" }, /gvisor.platform must be one of auto, kvm, ptrace/);
    bad({ root: "run/x" }, /gvisor.root must be an absolute path/);
    bad({ binary: 3 }, /"gvisor.binary" must be a string/);
    bad({ network: "none" }, /gvisor.network must be one of auto, sandbox, host/);
  });
});

describe("gvisor: network choice", () => {
  it("reads runsc's release from its version line, upstream's and Debian's", () => {
    assert.equal(runscRelease("runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n"), 20221219);
    assert.equal(runscRelease("runsc version release-20240807.0\nspec: 1.1.0\n"), 20240807);
    assert.equal(runscRelease("runsc version VERSION_MISSING\n"), undefined);
  });
});
