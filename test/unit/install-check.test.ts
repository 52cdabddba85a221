// `cocoon check`: the decisions against a fake node, and one real run on this machine.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { checkExitCode, cgroupVersion, formatResults, majorMinor, runChecks, type CheckEnv, type CheckResult } from "../../src/cli/check.js";
import { mergeContainerdConfig, cocoonRuntimes } from "../../src/cli/install/containerd-config.js";
import type { CommandResult } from "../../src/cli/install/host.js";
import type { AccelProbe } from "../../src/runtime/vm/kvm.js";
import type { VmConfig } from "../../src/runtime/vm/settings.js";

const HERE = new URL(".", import.meta.url).pathname;
const REPO = HERE.includes("/dist/js/") ? HERE.slice(0, HERE.indexOf("/dist/js/")) : join(HERE, "..", "..");

const KVM_WORKS = async (): Promise<AccelProbe> => ({ accel: "kvm", reason: "the guest kernel booted under KVM in 300 ms", ms: 300 });
const KVM_HANGS: AccelProbe = { accel: "tcg", reason: "the guest kernel did not finish booting under KVM within 8000 ms", kvmProblem: "boot", ms: 8000 };
const TCG_BOOTS = { ok: true, reason: "the guest kernel booted under TCG in 1900 ms", ms: 1900 };

const V1_MOUNTS = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
const V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";

interface FakeNode {
  files: Record<string, string>;
  /** Paths that exist besides `files` (devices, binaries). */
  paths: string[];
  commands: Record<string, Partial<CommandResult>>;
  dirs: Record<string, string[]>;
  kvmOpen: string;
  koffi: boolean;
}

function healthyNode(): FakeNode {
  const ctrd = mergeContainerdConfig('version = 2\n[plugins."io.containerd.grpc.v1.cri".cni]\n  bin_dir = "/usr/lib/cni"\n', cocoonRuntimes()).text;
  return {
    files: {
      "/etc/containerd/config.toml": ctrd,
      "/etc/cocoon/cocoon-vm.toml": readFileSync(join(REPO, "deploy/config/cocoon-vm.toml"), "utf8"),
      "/etc/cocoon/cocoon-runc.toml": readFileSync(join(REPO, "deploy/config/cocoon-runc.toml"), "utf8"),
      "/etc/cocoon/cocoon-gvisor.toml": readFileSync(join(REPO, "deploy/config/cocoon-gvisor.toml"), "utf8"),
      "/proc/self/mounts": V2_MOUNTS,
      "/sys/kernel/mm/ksm/run": "1\n",
    },
    paths: [
      "/dev/kvm",
      "/usr/local/bin/containerd-shim-cocoon-v2",
      "/usr/local/share/cocoon/vmlinux",
      "/usr/local/share/cocoon/initramfs-9p.cpio.zst",
      "/usr/local/share/cocoon/rootfs.erofs",
      "/usr/lib/cni/bridge",
      "/usr/lib/cni/host-local",
      "/usr/lib/cni/loopback",
    ],
    commands: {
      "containerd --version": { stdout: "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1\n" },
      "runc --version": { stdout: "runc version 1.1.5+ds1\ncommit: x\n" },
      "crun --version": { stdout: "crun version 1.8.1\n" },
      "qemu-system-x86_64 --version": { stdout: "QEMU emulator version 7.2.22\n" },
      "runsc --version": { stdout: "runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n" },
    },
    dirs: { "/etc/cni/net.d": ["10-bridge.conflist"] },
    kvmOpen: "",
    koffi: true,
  };
}

/** `config dump` is answered with the file itself (enough for these decisions). */
function envOf(n: FakeNode): CheckEnv & { ran: string[] } {
  const ran: string[] = [];
  return {
    ran,
    run: async (argv) => {
      const key = argv.join(" ");
      ran.push(key);
      if (argv[0] === "containerd" && argv[3] === "config" && n.commands["containerd --version"]) {
        const text = n.files[argv[2]!];
        return text === undefined ? { code: 1, stdout: "", stderr: "no such file" } : { code: 0, stdout: text, stderr: "" };
      }
      const c = n.commands[key];
      if (!c) return { code: -1, stdout: "", stderr: "", spawnError: `${argv[0]}: ENOENT` };
      return { code: 0, stdout: "", stderr: "", ...c };
    },
    readFile: (p) => n.files[p],
    exists: (p) => p in n.files || n.paths.includes(p),
    listDir: (p) => n.dirs[p],
    openRW: (p) => (p === "/dev/kvm" ? n.kvmOpen : "ENOENT"),
    loadKoffi: async () => {
      if (!n.koffi) throw new Error("Cannot find module 'koffi'");
      return "koffi 3.3.4";
    },
    pathDirs: () => ["/usr/bin"],
  };
}

/** gVisor mode's probes on a node where both work (none of them touches this host). */
const GVISOR_PROBES = {
  "gvisor-platform": async () => ({ platform: "kvm", reason: "a KVM sandbox ran `true`", ms: 40 }),
  "gvisor-network": async () => ({ network: "sandbox", reason: "runsc release 20240807" }),
};

const byName = (rs: CheckResult[], name: string) => {
  const r = rs.find((x) => x.name === name);
  assert.ok(r, `no result named ${name}`);
  return r;
};

const NAMES = ["containerd", "cri handlers", "config cocoon-runc", "config cocoon", "config cocoon-gvisor", "shim binary", "runc", "crun", "qemu", "kvm", "guest assets", "vm templates", "ksm", "runsc", "gvisor platform", "gvisor network", "cgroups", "cni plugins", "cni config", "koffi"];

test("a healthy node passes every check", async () => {
  const rs = await runChecks({ env: envOf(healthyNode()), probes: { ...GVISOR_PROBES, accel: KVM_WORKS } });
  assert.deepEqual(rs.map((r) => r.name), NAMES);
  assert.deepEqual(rs.filter((r) => r.level !== "ok").map((r) => `${r.name}: ${r.detail}`), []);
  assert.match(byName(rs, "cri handlers").detail, /cocoon-runc -> \/etc\/cocoon\/cocoon-runc.toml, cocoon -> \/etc\/cocoon\/cocoon-vm.toml/);
  assert.equal(byName(rs, "cgroups").detail, "cgroup v2 (unified)");
  assert.equal(checkExitCode(rs), 0);
});

test("an untouched node fails the Cocoon-specific checks, each with a fix", async () => {
  const n = healthyNode();
  n.files["/etc/containerd/config.toml"] = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".cni]\n  bin_dir = "/usr/lib/cni"\n';
  delete n.files["/etc/cocoon/cocoon-vm.toml"];
  delete n.files["/etc/cocoon/cocoon-runc.toml"];
  delete n.files["/etc/cocoon/cocoon-gvisor.toml"];
  n.paths = n.paths.filter((p) => !p.includes("cocoon"));
  const rs = await runChecks({ env: envOf(n), probes: { ...GVISOR_PROBES, accel: KVM_WORKS } });
  const failed = rs.filter((r) => r.level === "fail");
  assert.deepEqual(failed.map((r) => r.name), ["cri handlers", "config cocoon-runc", "config cocoon", "config cocoon-gvisor", "shim binary", "guest assets"]);
  for (const r of failed) {
    assert.equal(r.ok, false);
    assert.match(r.fix, /cocoon install/);
  }
  assert.equal(checkExitCode(rs), 1);
});

test("missing tools: containerd and qemu fail, crun is optional, runc is required when configured", async () => {
  const n = healthyNode();
  delete n.commands["containerd --version"];
  delete n.commands["qemu-system-x86_64 --version"];
  delete n.commands["crun --version"];
  delete n.commands["runc --version"];
  const rs = await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES });
  assert.equal(byName(rs, "containerd").level, "fail");
  assert.equal(byName(rs, "qemu").level, "fail");
  assert.equal(byName(rs, "crun").level, "warn");
  assert.equal(byName(rs, "runc").level, "fail");
  // Without containerd the file itself is read, so the handlers are still found.
  assert.equal(byName(rs, "cri handlers").level, "ok");
  n.files["/etc/cocoon/cocoon-runc.toml"] = 'mode = "runc"\n[runc]\nbinary = "crun"\n';
  const rs2 = await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES });
  assert.equal(byName(rs2, "runc").level, "warn");
  assert.equal(byName(rs2, "crun").level, "fail");
});

test("containerd versions: 1.5 fails, 2.x warns", async () => {
  const n = healthyNode();
  n.commands["containerd --version"] = { stdout: "containerd github.com/containerd/containerd v1.5.9 abc\n" };
  assert.equal(byName(await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES }), "containerd").level, "fail");
  n.commands["containerd --version"] = { stdout: "containerd containerd.io v2.0.1 abc\n" };
  assert.equal(byName(await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES }), "containerd").level, "warn");
  assert.deepEqual(majorMinor("1.6.20~ds1"), [1, 6]);
  assert.equal(majorMinor("garbage"), undefined);
});

test("KVM: probe verdicts, no device, unopenable device, and accel = kvm makes it a failure", async () => {
  const n = healthyNode();
  let r = byName(await runChecks({ env: envOf(n), probes: { ...GVISOR_PROBES, accel: KVM_WORKS } }), "kvm");
  assert.equal(r.level, "ok");
  assert.match(r.detail, /^kvm \(the guest kernel booted under KVM/);
  r = byName(await runChecks({ env: envOf(n), probes: { ...GVISOR_PROBES, accel: async () => ({ ...KVM_HANGS, tcg: TCG_BOOTS }) } }), "kvm");
  assert.equal(r.level, "warn");
  assert.match(r.detail, /^tcg \(no KVM: .*within 8000 ms\); the guest kernel booted under TCG in 1900 ms; VMs run under TCG/);
  assert.match(r.fix, /nested virtualisation/);
  // Neither accelerator boots the kernel: pods cannot run at all.
  r = byName(await runChecks({ env: envOf(n), probes: { ...GVISOR_PROBES, accel: async () => ({ ...KVM_HANGS, tcg: { ok: false, reason: "QEMU exited under TCG: bad kernel", ms: 5 } }) } }), "kvm");
  assert.equal(r.level, "fail");
  assert.match(r.detail, /QEMU exited under TCG: bad kernel/);
  r = byName(await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES }), "kvm");
  assert.equal(r.level, "warn");
  assert.match(r.detail, /not verified/);
  n.kvmOpen = "EACCES";
  r = byName(await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES }), "kvm");
  assert.match(r.detail, /cannot be opened \(EACCES\)/);
  n.paths = n.paths.filter((p) => p !== "/dev/kvm");
  r = byName(await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES }), "kvm");
  assert.equal(r.level, "warn");
  assert.match(r.detail, /^tcg \(no KVM: \/dev\/kvm does not exist\)/);
  n.files["/etc/cocoon/cocoon-vm.toml"] = n.files["/etc/cocoon/cocoon-vm.toml"]!.replace('accel = "auto"', 'accel = "kvm"');
  r = byName(await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES }), "kvm");
  assert.equal(r.level, "fail");
  r = byName(await runChecks({ env: envOf(n), probes: { ...GVISOR_PROBES, accel: async () => ({ ...KVM_HANGS, tcg: TCG_BOOTS }) } }), "kvm");
  assert.equal(r.level, "fail");
  assert.match(r.fix, /set vm.accel = "auto" or "tcg"/);
});

test("the probe is given the VM config and not run without a guest kernel", async () => {
  const n = healthyNode();
  const seen: string[] = [];
  const probe = async (vm: VmConfig) => (seen.push(`${vm.qemu} ${vm.kernel}`), KVM_WORKS());
  await runChecks({ env: envOf(n), probes: { ...GVISOR_PROBES, accel: probe } });
  assert.deepEqual(seen, ["qemu-system-x86_64 /usr/local/share/cocoon/vmlinux"]);
  n.paths = n.paths.filter((p) => !p.endsWith("/vmlinux"));
  const r = byName(await runChecks({ env: envOf(n), probes: { ...GVISOR_PROBES, accel: probe } }), "kvm");
  assert.equal(r.level, "warn");
  assert.match(r.detail, /not probed: the guest kernel .* is missing/);
  assert.equal(seen.length, 1);
});

test("config problems: wrong mode, invalid file, wrong runtime_type, disabled CRI, CNI in /usr/lib/cni only", async () => {
  const n = healthyNode();
  n.files["/etc/cocoon/cocoon-vm.toml"] = 'mode = "runc"\n';
  n.files["/etc/cocoon/cocoon-runc.toml"] = "mode = 7\n";
  let rs = await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES });
  assert.equal(byName(rs, "config cocoon").level, "warn");
  assert.equal(byName(rs, "config cocoon-runc").level, "fail");
  n.files["/etc/containerd/config.toml"] = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon]\n  runtime_type = "io.containerd.runc.v2"\n';
  assert.match(byName(await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES }), "cri handlers").detail, /runtime_type other than/);
  n.files["/etc/containerd/config.toml"] = 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n';
  rs = await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES });
  assert.match(byName(rs, "cri handlers").detail, /disabled/);
  // Default bin_dir /opt/cni/bin is empty, the plugins are in /usr/lib/cni.
  const cni = byName(rs, "cni plugins");
  assert.equal(cni.level, "fail");
  assert.match(cni.fix, /bin_dir = "\/usr\/lib\/cni"/);
  n.dirs = {};
  assert.equal(byName(await runChecks({ env: envOf(n), skipSlowProbes: true, probes: GVISOR_PROBES }), "cni config").level, "warn");
});

test("cgroup version detection", () => {
  assert.equal(cgroupVersion(V2_MOUNTS), "v2");
  assert.equal(cgroupVersion(V1_MOUNTS), "v1");
  assert.equal(cgroupVersion(V1_MOUNTS + "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"), "hybrid");
  assert.equal(cgroupVersion(""), "none");
});

test("the printer shows OK/WARN/FAIL, a fix line for problems, and a summary", () => {
  const out = formatResults([
    { name: "a", ok: true, level: "ok", detail: "fine", fix: "" },
    { name: "bbb", ok: true, level: "warn", detail: "meh", fix: "do x" },
    { name: "c", ok: false, level: "fail", detail: "bad", fix: "do y" },
  ]);
  assert.equal(out, ["OK    a    fine", "WARN  bbb  meh", "           fix: do x", "FAIL  c    bad", "           fix: do y", "1 ok, 1 warning(s), 1 failure(s)", ""].join("\n"));
});

test("a real run on this machine gives a result for every check", { timeout: 90_000 }, async (t) => {
  const rs = await runChecks();
  assert.deepEqual(rs.map((r) => r.name), NAMES);
  for (const r of rs) {
    assert.ok(["ok", "warn", "fail"].includes(r.level), r.name);
    assert.equal(r.ok, r.level !== "fail");
    assert.ok(r.detail.length > 0, r.name);
  }
  for (const line of formatResults(rs).trimEnd().split("\n")) t.diagnostic(line);
});

test("VM templates: ready ones are listed; a recent failure or a 9p root is a warning", async () => {
  const n = healthyNode();
  const dir = "/run/cocoon/vm/templates";
  n.dirs[dir] = ["0123456789abcdef", "fedcba9876543210.failed"];
  n.paths.push(`${dir}/0123456789abcdef/ready`);
  let rs = await runChecks({ env: envOf(n), probes: { ...GVISOR_PROBES, accel: KVM_WORKS } });
  const t = byName(rs, "vm templates");
  assert.equal(t.level, "warn");
  assert.match(t.detail, /1 ready in \/run\/cocoon\/vm\/templates \(0123456789abcdef\).*recently failed: fedcba9876543210/);
  n.files["/etc/cocoon/cocoon-vm.toml"] = n.files["/etc/cocoon/cocoon-vm.toml"]!.replace(/^rootfs = .*$/m, 'rootfs = "/usr/local/share/cocoon/rootfs"');
  n.dirs["/usr/local/share/cocoon/rootfs"] = ["bin"];
  n.paths.push("/usr/local/share/cocoon/rootfs");
  rs = await runChecks({ env: envOf(n), probes: { ...GVISOR_PROBES, accel: KVM_WORKS } });
  assert.match(byName(rs, "vm templates").detail, /is not an image/);
  assert.equal(checkExitCode(rs), 0);
});

test("KSM off or absent is a warning that says how to turn it on, never a failure", async () => {
  for (const run of ["0\n", undefined]) {
    const n = healthyNode();
    if (run === undefined) delete n.files["/sys/kernel/mm/ksm/run"];
    else n.files["/sys/kernel/mm/ksm/run"] = run;
    const rs = await runChecks({ env: envOf(n), probes: { ...GVISOR_PROBES, accel: KVM_WORKS } });
    const k = byName(rs, "ksm");
    assert.equal(k.level, "warn");
    if (run) assert.match(k.fix, /echo 1 > \/sys\/kernel\/mm\/ksm\/run.*nokaslr/);
    assert.equal(checkExitCode(rs), 0);
  }
});
