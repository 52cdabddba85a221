// `cocoon check`: is this node ready to run Cocoon pods? One line per prerequisite with OK/WARN/FAIL and,
// when not OK, what to do about it. Everything the checks look at goes through CheckEnv so that the
// decisions can be tested with a fake node.
import { closeSync, constants, existsSync, openSync, readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { Command } from "commander";
import { parse as parseToml } from "smol-toml";
import { defaultConfig, parseConfig, settingsFor } from "../shim/config.js";
import { MODES } from "../runtime/modes.js";
import type { RuncSettings } from "../runtime/runc/settings.js";
import type { VmConfig } from "../runtime/vm/settings.js";
import { isTemplateKey } from "../runtime/vm/template.js";
import { CRI_PLUGIN, RUNTIME_TYPE, criRuntimes, type RegisteredRuntime } from "./install/containerd-config.js";
import { runCommand, type Runner } from "./install/host.js";
import { findSourceRoot } from "./install/layout.js";

export type CheckLevel = "ok" | "warn" | "fail";

export interface CheckResult {
  name: string;
  /** False only for FAIL: WARN means usable with a caveat. */
  ok: boolean;
  level: CheckLevel;
  detail: string;
  /** What to do about a WARN/FAIL ("" for OK). */
  fix: string;
}

/** The node as the checks see it. */
export interface CheckEnv {
  run: Runner;
  readFile(path: string): string | undefined;
  exists(path: string): boolean;
  listDir(path: string): string[] | undefined;
  /** Opens a device read-write; returns "" on success or the error code. */
  openRW(path: string): string;
  /** Loads koffi; resolves to a description (e.g. its version) or rejects. */
  loadKoffi(): Promise<string>;
  pathDirs(): string[];
}

export interface KvmProbeResult {
  ok: boolean;
  detail: string;
}

export interface CheckOptions {
  /** containerd's config (default /etc/containerd/config.toml). */
  containerdConfig?: string;
  env?: CheckEnv;
  /** A bounded KVM boot test; default: guest/kvm-probe.sh when it can be found, else only open /dev/kvm. */
  kvmProbe?: (() => Promise<KvmProbeResult>) | "skip";
  /** Directory holding kvm-probe.sh (default: <package>/guest, then /opt/cocoon/guest). */
  guestDir?: string;
}

const HANDLERS = MODES.map((m) => ({ name: m.handler, mode: m.name, file: `/etc/cocoon/${m.configFile}` }));
/** containerd's PATH when started by its systemd unit; shims are looked up there. */
const SYSTEMD_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];
const CNI_PLUGINS = ["bridge", "host-local", "loopback"];

export const realEnv: CheckEnv = {
  run: runCommand,
  readFile: (p) => {
    try {
      return readFileSync(p, "utf8");
    } catch {
      return undefined;
    }
  },
  exists: (p) => existsSync(p),
  listDir: (p) => {
    try {
      return readdirSync(p);
    } catch {
      return undefined;
    }
  },
  openRW: (p) => {
    try {
      closeSync(openSync(p, constants.O_RDWR));
      return "";
    } catch (err) {
      return (err as NodeJS.ErrnoException).code ?? String(err);
    }
  },
  loadKoffi: async () => {
    const mod = (await import("koffi")) as { default?: { version?: string }; version?: string };
    const version = mod.version ?? mod.default?.version;
    return version ? `koffi ${version}` : "koffi loaded";
  },
  pathDirs: () => (process.env["PATH"] ?? "").split(":").filter(Boolean),
};

const ok = (name: string, detail: string): CheckResult => ({ name, ok: true, level: "ok", detail, fix: "" });
const warn = (name: string, detail: string, fix: string): CheckResult => ({ name, ok: true, level: "warn", detail, fix });
const fail = (name: string, detail: string, fix: string): CheckResult => ({ name, ok: false, level: "fail", detail, fix });

const firstLine = (s: string) => s.trim().split("\n")[0] ?? "";

/** "1.6.20~ds1" → [1, 6]; undefined when there is no version-looking token. */
export function majorMinor(version: string): [number, number] | undefined {
  const m = /(\d+)\.(\d+)/.exec(version);
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

async function checkContainerd(env: CheckEnv): Promise<{ result: CheckResult; present: boolean }> {
  const res = await env.run(["containerd", "--version"], 10_000);
  if (res.spawnError || res.code !== 0) {
    return { present: false, result: fail("containerd", "containerd not found", "install containerd 1.6 or 1.7 (Debian/Ubuntu: apt-get install containerd)") };
  }
  // "containerd github.com/containerd/containerd 1.6.20~ds1 <commit>"
  const version = firstLine(res.stdout).split(/\s+/)[2] ?? firstLine(res.stdout);
  const mm = majorMinor(version);
  if (!mm) return { present: true, result: warn("containerd", `unrecognised version output: ${firstLine(res.stdout)}`, "") };
  const [maj, min] = mm;
  if (maj === 1 && min < 6) return { present: true, result: fail("containerd", `version ${version}`, "upgrade containerd to 1.6 or 1.7") };
  if (maj >= 2) {
    return {
      present: true,
      result: warn("containerd", `version ${version}: not tested; its config (version 3) is not handled by cocoon install`, "register the runtimes by hand under [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes]"),
    };
  }
  return { present: true, result: ok("containerd", `version ${version}`) };
}

interface EffectiveConfig {
  doc?: Record<string, unknown>;
  /** How the config was read, or why it could not be. */
  how: string;
  error?: string;
}

/** The config as containerd reads it (`config dump` applies imports and defaults), else the file itself. */
async function loadContainerdConfig(env: CheckEnv, path: string, haveContainerd: boolean): Promise<EffectiveConfig> {
  const text = env.readFile(path);
  if (text === undefined) return { how: path, error: `no containerd config at ${path}` };
  if (haveContainerd) {
    const res = await env.run(["containerd", "--config", path, "config", "dump"], 20_000);
    if (!res.spawnError && res.code === 0) {
      try {
        return { doc: parseToml(res.stdout) as Record<string, unknown>, how: `containerd config dump of ${path}` };
      } catch {
        // fall through to the file itself
      }
    } else if (!res.spawnError) {
      return { how: path, error: `containerd rejects ${path}: ${firstLine(res.stderr.split("\n").filter(Boolean).slice(-1)[0] ?? "")}` };
    }
  }
  try {
    return { doc: parseToml(text) as Record<string, unknown>, how: path };
  } catch (err) {
    return { how: path, error: `${path} is not valid TOML: ${firstLine((err as Error).message)}` };
  }
}

function checkHandlers(cfg: EffectiveConfig): { result: CheckResult; runtimes: RegisteredRuntime[] } {
  const name = "cri handlers";
  const fixInstall = "run `cocoon install` (then restart containerd), or add deploy/containerd/cocoon.toml to the config by hand";
  if (!cfg.doc) return { result: fail(name, cfg.error ?? "no config", fixInstall), runtimes: [] };
  const disabled = cfg.doc["disabled_plugins"];
  if (Array.isArray(disabled) && (disabled.includes(CRI_PLUGIN) || disabled.includes("cri"))) {
    return { result: fail(name, `the CRI plugin is disabled in ${cfg.how}`, "remove it from disabled_plugins and restart containerd"), runtimes: [] };
  }
  const all = criRuntimes(cfg.doc);
  const ours = HANDLERS.map((h) => all.find((r) => r.name === h.name && r.runtimeType === RUNTIME_TYPE));
  const have = ours.filter((r): r is RegisteredRuntime => !!r);
  const missing = HANDLERS.filter((_, i) => !ours[i]).map((h) => h.name);
  const wrongType = HANDLERS.filter((h) => all.some((r) => r.name === h.name && r.runtimeType !== RUNTIME_TYPE)).map((h) => h.name);
  const desc = have.map((r) => `${r.name} -> ${r.configPath || "(no ConfigPath)"}`).join(", ");
  if (wrongType.length) return { result: fail(name, `${wrongType.join(", ")} registered with a runtime_type other than ${RUNTIME_TYPE}`, fixInstall), runtimes: have };
  if (!have.length) return { result: fail(name, `none of ${HANDLERS.map((h) => h.name).join(", ")} is registered (${cfg.how})`, fixInstall), runtimes: [] };
  if (missing.length) return { result: warn(name, `${desc}; ${missing.join(", ")} not registered`, fixInstall), runtimes: have };
  const noPath = have.filter((r) => !r.configPath).map((r) => r.name);
  if (noPath.length) return { result: warn(name, `${desc}: no options.ConfigPath, the shim uses built-in defaults`, fixInstall), runtimes: have };
  return { result: ok(name, desc), runtimes: have };
}

function checkCocoonConfigs(env: CheckEnv, runtimes: RegisteredRuntime[]): { results: CheckResult[]; vm: VmConfig; runc: RuncSettings } {
  const results: CheckResult[] = [];
  const loaded: Record<string, unknown> = {};
  for (const h of HANDLERS) {
    const path = runtimes.find((r) => r.name === h.name)?.configPath || h.file;
    const name = `config ${h.name}`;
    const text = env.readFile(path);
    if (text === undefined) {
      results.push(fail(name, `cannot read ${path}`, `run \`cocoon install\`, or copy deploy/config/${h.file.split("/").pop()} to ${path}`));
      continue;
    }
    try {
      const cfg = parseConfig(text, path, MODES);
      loaded[h.mode] = settingsFor(cfg, h.mode);
      if (cfg.mode !== h.mode) results.push(warn(name, `${path} has mode = "${cfg.mode}", expected "${h.mode}" for handler ${h.name}`, `set mode = "${h.mode}" in ${path}`));
      else results.push(ok(name, `${path} (mode ${cfg.mode})`));
    } catch (err) {
      results.push(fail(name, (err as Error).message, `fix ${path}`));
    }
  }
  const defaults = defaultConfig(MODES);
  const vm = (loaded["vm"] ?? settingsFor(defaults, "vm")) as VmConfig;
  const runc = (loaded["runc"] ?? settingsFor(defaults, "runc")) as RuncSettings;
  return { results, vm, runc };
}

function checkShimBinary(env: CheckEnv): CheckResult {
  const name = "shim binary";
  const dirs = [...new Set([...SYSTEMD_PATH, ...env.pathDirs()])];
  const found = dirs.map((d) => join(d, "containerd-shim-cocoon-v2")).find((p) => env.exists(p));
  if (!found) return fail(name, "containerd-shim-cocoon-v2 is not on containerd's PATH", "run `cocoon install` (it writes /usr/local/bin/containerd-shim-cocoon-v2)");
  return ok(name, found);
}

async function checkOciRuntime(env: CheckEnv, bin: "runc" | "crun", configured: string): Promise<CheckResult> {
  const isConfigured = configured === bin || configured.endsWith(`/${bin}`);
  const exe = isConfigured ? configured : bin;
  const res = await env.run([exe, "--version"], 10_000);
  if (res.spawnError || res.code !== 0) {
    const fix = `apt-get install ${bin}`;
    return isConfigured
      ? fail(bin, `${exe} not found, but the cocoon-runc config uses it`, fix)
      : warn(bin, `${bin} not found (optional; the cocoon-runc config uses ${configured})`, fix);
  }
  const version = firstLine(res.stdout).replace(/^.*?version\s+/, "");
  return ok(bin, `${version}${isConfigured ? " (used by cocoon-runc)" : ""}`);
}

async function checkQemu(env: CheckEnv, vm: VmConfig): Promise<CheckResult> {
  const res = await env.run([vm.qemu, "--version"], 10_000);
  if (res.spawnError || res.code !== 0) {
    return fail("qemu", `${vm.qemu} not found (needed by the cocoon VM runtime)`, "apt-get install qemu-system-x86 (or set vm.qemu in the VM config)");
  }
  return ok("qemu", firstLine(res.stdout));
}

function findProbe(env: CheckEnv, guestDir: string | undefined): string | undefined {
  const dirs: string[] = [];
  if (guestDir) dirs.push(guestDir);
  else {
    try {
      dirs.push(join(findSourceRoot(), "guest"));
    } catch {
      // not running from a package checkout
    }
    dirs.push("/opt/cocoon/guest");
  }
  return dirs.map((d) => join(d, "kvm-probe.sh")).find((p) => env.exists(p));
}

/** Runs guest/kvm-probe.sh (one bounded KVM boot) against the guest assets the VM config names. */
function scriptProbe(env: CheckEnv, script: string, vm: VmConfig): () => Promise<KvmProbeResult> {
  return async () => {
    const assets = dirname(vm.kernel);
    const localOut = join(dirname(script), "out");
    const extra: Record<string, string> = {};
    if (!env.exists(join(localOut, "manifest.json")) && env.exists(join(assets, "manifest.json"))) extra["COCOON_GUEST_OUT"] = assets;
    // An installed probe runs with the node binary installed next to it.
    const bin = join(dirname(dirname(script)), "bin");
    if (env.exists(join(bin, "node"))) extra["PATH"] = `${bin}:${process.env["PATH"] ?? ""}`;
    const res = await env.run([script, "--json", "--timeout", "10"], 45_000, extra);
    try {
      const r = JSON.parse(res.stdout.trim().split("\n").pop() ?? "") as { kvm?: boolean; reason?: string | null; readyMs?: number | null };
      return r.kvm ? { ok: true, detail: `a KVM guest booted (agent ready after ${r.readyMs} ms)` } : { ok: false, detail: `KVM guest boot failed: ${r.reason ?? "unknown reason"}` };
    } catch {
      return { ok: false, detail: `kvm-probe.sh gave no verdict (exit ${res.code}): ${firstLine(res.stderr || res.stdout) || res.spawnError || ""}` };
    }
  };
}

async function checkKvm(env: CheckEnv, vm: VmConfig, o: CheckOptions): Promise<CheckResult> {
  const name = "kvm";
  const needKvm = vm.accel === "kvm";
  const noKvm = (detail: string, fix: string) =>
    needKvm ? fail(name, `${detail}; the VM config sets accel = "kvm"`, fix) : warn(name, `${detail}; VMs fall back to TCG emulation (much slower)`, fix);
  if (!env.exists("/dev/kvm")) return noKvm("no /dev/kvm", "enable virtualisation (VT-x/AMD-V, nested virtualisation on a VM) and load kvm_intel/kvm_amd");
  const openErr = env.openRW("/dev/kvm");
  if (openErr) return noKvm(`/dev/kvm cannot be opened (${openErr})`, "run as root or give the containerd user access to /dev/kvm");
  if (o.kvmProbe === "skip") return warn(name, "/dev/kvm opens; a KVM guest boot was not verified", "run `cocoon check` without skipping the KVM probe");
  const script = o.kvmProbe ? undefined : findProbe(env, o.guestDir);
  const probe = o.kvmProbe ?? (script ? scriptProbe(env, script, vm) : undefined);
  if (!probe) return warn(name, "/dev/kvm opens; a KVM guest boot was not verified (guest/kvm-probe.sh not found)", "");
  const r = await probe();
  if (r.ok) return ok(name, r.detail);
  return noKvm(r.detail, needKvm ? 'set vm.accel = "auto" or "tcg", or fix KVM on this host' : "fix KVM on this host (nested virtualisation?) for fast VMs");
}

function checkAssets(env: CheckEnv, vm: VmConfig): CheckResult {
  const assets = [vm.kernel, vm.initrd, vm.rootfs].filter((p) => p);
  const missing = assets.filter((p) => !env.exists(p));
  if (missing.length) return fail("guest assets", `missing ${missing.join(", ")}`, "run `cocoon install` (copies guest/out/), or build them with guest/build.sh");
  return ok("guest assets", assets.join(", "));
}

/** Whether pod VMs start from VM templates, and which are ready (src/runtime/vm/template.ts). */
function checkTemplates(env: CheckEnv, vm: VmConfig): CheckResult {
  const dir = join(vm.stateDir, "templates");
  if (!vm.template) return ok("vm templates", "off (template = false): every pod VM boots");
  if (!vm.rootfs || env.listDir(vm.rootfs) !== undefined) {
    return warn("vm templates", `on, but vm.rootfs "${vm.rootfs}" is not an image (QEMU cannot snapshot a VM with a 9p root): every pod VM boots`, "use the EROFS image (rootfs.erofs) as vm.rootfs");
  }
  const entries = env.listDir(dir) ?? [];
  const ready = entries.filter((n) => isTemplateKey(n) && env.exists(join(dir, n, "ready")));
  const failed = entries.filter((n) => n.endsWith(".failed")).map((n) => n.slice(0, -".failed".length));
  const what = ready.length ? `${ready.length} ready in ${dir} (${ready.join(", ")})` : `none built yet in ${dir}; the next pod VM builds one`;
  if (failed.length) return warn("vm templates", `on; ${what}; recently failed: ${failed.join(", ")} (those pods boot for 10 minutes)`, "see `restoring the VM template failed` or `VM template build failed` in containerd's log");
  return ok("vm templates", `on; ${what}`);
}

/** "v2" (unified), "hybrid" (v1 controllers + a v2 mount) or "v1", from /proc/self/mounts. */
export function cgroupVersion(mounts: string): "v1" | "v2" | "hybrid" | "none" {
  const lines = mounts.split("\n").map((l) => l.split(" "));
  const v2 = lines.find((f) => f[2] === "cgroup2");
  const v1 = lines.some((f) => f[2] === "cgroup");
  if (v2 && !v1 && v2[1] === "/sys/fs/cgroup") return "v2";
  if (v1 && v2) return "hybrid";
  if (v1) return "v1";
  if (v2) return "v2";
  return "none";
}

/**
 * Kernel samepage merging lets VM pods share the identical pages of their guests (guest kernel text
 * with vm.kernel_params = "nokaslr", zeroed pages); Kata recommends it for density. Advice only.
 */
function checkKsm(env: CheckEnv): CheckResult {
  const run = env.readFile("/sys/kernel/mm/ksm/run")?.trim();
  if (run === undefined) return warn("ksm", "this kernel has no KSM (/sys/kernel/mm/ksm)", "a kernel with CONFIG_KSM lets VM pods share identical guest pages");
  if (run === "1") return ok("ksm", "on: identical guest pages of VM pods are merged");
  return warn("ksm", "off: VM pods do not share identical guest pages (measured: ~67 MB more host memory per VM pod with 3 pods, ~82 MB with 10)",
    'echo 1 > /sys/kernel/mm/ksm/run (and vm.kernel_params = "nokaslr" so guests\' kernel text is identical)');
}

function checkCgroups(env: CheckEnv): CheckResult {
  const v = cgroupVersion(env.readFile("/proc/self/mounts") ?? "");
  if (v === "none") return fail("cgroups", "no cgroup filesystem mounted", "mount cgroup2 at /sys/fs/cgroup");
  const what = { v1: "cgroup v1", v2: "cgroup v2 (unified)", hybrid: "cgroup v1 with a v2 hierarchy (hybrid)" }[v];
  return ok("cgroups", what);
}

function checkCni(env: CheckEnv, doc: Record<string, unknown> | undefined): CheckResult[] {
  const cni = (doc?.["plugins"] as Record<string, any> | undefined)?.[CRI_PLUGIN]?.["cni"] as Record<string, unknown> | undefined;
  const binDir = typeof cni?.["bin_dir"] === "string" ? (cni["bin_dir"] as string) : "/opt/cni/bin";
  const confDir = typeof cni?.["conf_dir"] === "string" ? (cni["conf_dir"] as string) : "/etc/cni/net.d";
  const out: CheckResult[] = [];
  const present = CNI_PLUGINS.filter((p) => env.exists(join(binDir, p)));
  if (present.length === CNI_PLUGINS.length) out.push(ok("cni plugins", `${binDir}: ${present.join(", ")}`));
  else {
    const debian = CNI_PLUGINS.every((p) => env.exists(join("/usr/lib/cni", p)));
    const missing = CNI_PLUGINS.filter((p) => !present.includes(p));
    out.push(
      fail(
        "cni plugins",
        `${binDir} lacks ${missing.join(", ")}`,
        debian && binDir !== "/usr/lib/cni"
          ? `they are in /usr/lib/cni: set bin_dir = "/usr/lib/cni" under [plugins."${CRI_PLUGIN}".cni], or link them into ${binDir}`
          : `install the CNI plugins (apt-get install containernetworking-plugins) into ${binDir}`,
      ),
    );
  }
  const confs = (env.listDir(confDir) ?? []).filter((f) => /\.(conflist|conf|json)$/.test(f)).sort();
  if (confs.length) out.push(ok("cni config", `${confDir}: ${confs.join(", ")}`));
  else out.push(warn("cni config", `no network config in ${confDir}`, `install a CNI network (a Kubernetes network add-on, or a bridge .conflist in ${confDir}); host-network pods work without one`));
  return out;
}

async function checkKoffi(env: CheckEnv): Promise<CheckResult> {
  try {
    return ok("koffi", await env.loadKoffi());
  } catch (err) {
    return fail("koffi", `cannot load koffi: ${firstLine((err as Error).message)}`, "reinstall (cocoon install copies node_modules/koffi next to the shim)");
  }
}

/** Runs every check; never throws for a failed prerequisite (that is a FAIL result). */
export async function runChecks(opts: CheckOptions = {}): Promise<CheckResult[]> {
  const env = opts.env ?? realEnv;
  const configPath = opts.containerdConfig ?? "/etc/containerd/config.toml";
  const ctrd = await checkContainerd(env);
  const effective = await loadContainerdConfig(env, configPath, ctrd.present);
  const handlers = checkHandlers(effective);
  const configs = checkCocoonConfigs(env, handlers.runtimes);
  const [runc, crun, qemu, kvm, koffi] = await Promise.all([
    checkOciRuntime(env, "runc", configs.runc.binary),
    checkOciRuntime(env, "crun", configs.runc.binary),
    checkQemu(env, configs.vm),
    checkKvm(env, configs.vm, opts),
    checkKoffi(env),
  ]);
  return [
    ctrd.result,
    handlers.result,
    ...configs.results,
    checkShimBinary(env),
    runc,
    crun,
    qemu,
    kvm,
    checkAssets(env, configs.vm),
    checkTemplates(env, configs.vm),
    checkKsm(env),
    checkCgroups(env),
    ...checkCni(env, effective.doc),
    koffi,
  ];
}

const LABEL: Record<CheckLevel, string> = { ok: "OK", warn: "WARN", fail: "FAIL" };

/** One line per check, then an indented fix line for WARN/FAIL, then a summary. */
export function formatResults(results: CheckResult[]): string {
  const width = Math.max(...results.map((r) => r.name.length));
  const lines: string[] = [];
  for (const r of results) {
    lines.push(`${LABEL[r.level].padEnd(5)} ${r.name.padEnd(width)}  ${r.detail}`);
    if (r.level !== "ok" && r.fix) lines.push(`${" ".repeat(width + 8)}fix: ${r.fix}`);
  }
  const count = (l: CheckLevel) => results.filter((r) => r.level === l).length;
  lines.push(`${count("ok")} ok, ${count("warn")} warning(s), ${count("fail")} failure(s)`);
  return lines.join("\n") + "\n";
}

/** 0 when nothing failed, 1 otherwise. */
export function checkExitCode(results: CheckResult[]): number {
  return results.some((r) => !r.ok) ? 1 : 0;
}

export function checkCommand(): Command {
  return new Command("check")
    .description("check that this node has what Cocoon needs (containerd, runtimes, QEMU/KVM, guest assets, cgroups, CNI)")
    .option("--containerd-config <file>", "containerd's config", "/etc/containerd/config.toml")
    .option("--skip-kvm-probe", "do not boot a test VM to verify KVM (only open /dev/kvm)")
    .option("--json", "print the results as JSON")
    .action(async (f: { containerdConfig: string; skipKvmProbe?: boolean; json?: boolean }) => {
      const results = await runChecks({ containerdConfig: f.containerdConfig, ...(f.skipKvmProbe ? { kvmProbe: "skip" as const } : {}) });
      process.stdout.write(f.json ? JSON.stringify(results, null, 2) + "\n" : formatResults(results));
      process.exitCode = checkExitCode(results);
    });
}
