// `npm run bench`: Cocoon's runc mode next to Debian's containerd-shim-runc-v2 in one private
// containerd. Measures and reports; never asserts. See `--help` for the flags.
import { join } from "node:path";
import { repoRoot } from "../test/helpers/util.js";
import { benchBootstrap } from "./bootstrap.js";
import { parseArgs, UsageError, type BenchOptions } from "./cli.js";
import { benchLatency, type LatencyRow } from "./latency.js";
import { machineFacts } from "./machine.js";
import { benchMemory, type MemoryConfig } from "./memory.js";
import { bootstrapTable, latencyTable, memoryTable, TARGETS, vmTables, writeResults, type BenchReport } from "./report.js";
import { startRig, type Rig } from "./rig.js";
import { summarize } from "./stats.js";
import { benchVm, VM_PSS_TARGET_MB } from "./vm.js";
import { startVmRig, vmUnavailable } from "./vmrig.js";
import { benchGvisor, gvisorTable } from "./gvisor.js";

const progress = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

function latencyRows(rig: Rig): LatencyRow[] {
  return [
    { label: "runc-v2", rt: rig.runcV2, grouping: "pod", note: "new per container" },
    { label: "cocoon", rt: rig.cocoon, grouping: "pod", spares: true, note: "new per container (a spare)" },
    { label: "cocoon spare_daemons=0", rt: rig.cocoon, grouping: "pod", config: rig.noSpareConfig, note: "new per container (Node)" },
    ...rig.variants.map((v): LatencyRow => ({ label: v.label, rt: v, grouping: "pod", note: "new per container" })),
    { label: "runc-v2 (warm)", rt: rig.runcV2, grouping: "pod", warmPod: "warm-runc", note: "pod's shim running" },
    { label: "cocoon node (warm)", rt: rig.cocoon, grouping: "node", warmPod: "warm-node", note: "node daemon running" },
    ...rig.variants.map((v): LatencyRow => ({ label: `${v.label} node (warm)`, rt: v, grouping: "node", warmPod: `warm-${v.label}`, note: "node daemon running" })),
  ];
}

function memoryConfigs(rig: Rig): MemoryConfig[] {
  return [
    { label: "runc-v2", rt: rig.runcV2, grouping: "pod" },
    { label: "cocoon", rt: rig.cocoon, grouping: "pod" },
    { label: "cocoon", rt: rig.cocoon, grouping: "node" },
    ...rig.variants.map((v): MemoryConfig => ({ label: v.label, rt: v, grouping: "node" })),
  ];
}

function verdict(rep: BenchReport): string[] {
  const lines: string[] = [];
  const rows = rep.latency?.rows ?? [];
  const med = (label: string) => summarize(rows.find((r) => r.label === label)?.samples.ctr ?? []).median;
  if (rows.length) {
    const ratio = med("cocoon") / med("runc-v2");
    lines.push(`start latency: cocoon/runc-v2 median ratio ${ratio.toFixed(2)} (target ≤ ${TARGETS.startRatio}; a spare daemon serves each new pod)`);
    const noSpare = med("cocoon spare_daemons=0") / med("runc-v2");
    if (Number.isFinite(noSpare)) lines.push(`start latency without spares (spare_daemons = 0): cocoon/runc-v2 median ratio ${noSpare.toFixed(2)}`);
    const warm = med("cocoon node (warm)") / med("runc-v2 (warm)");
    lines.push(`start latency, shim already running: cocoon node/runc-v2 ratio ${warm.toFixed(2)}`);
  }
  const mem = rep.memory ?? [];
  const runc = mem.find((m) => m.label === "runc-v2");
  const node = mem.find((m) => m.label === "cocoon" && m.grouping === "node");
  if (runc && node) {
    lines.push(`memory: cocoon node grouping ${(node.perPod.pss / 1024).toFixed(2)} MiB PSS/pod vs runc-v2 ${(runc.perPod.pss / 1024).toFixed(2)} ` +
      `(ratio ${(node.perPod.pss / runc.perPod.pss).toFixed(2)}, target ≤ ${TARGETS.memoryVsRuncV2}); ` +
      `if alone on the host ${(node.perPodIsolatedPss / 1024).toFixed(2)} vs ${(runc.perPodIsolatedPss / 1024).toFixed(2)} ` +
      `(ratio ${(node.perPodIsolatedPss / runc.perPodIsolatedPss).toFixed(2)})`);
  }
  const vm = rep.vm;
  if (vm && vm.vm.length && vm.runc.length) {
    const v = summarize(vm.vm.map((x) => x.sample.totalMs)).median;
    const r = summarize(vm.runc.map((x) => x.totalMs)).median;
    const guest = summarize(vm.vm.filter((x) => x.breakdown).map((x) => x.breakdown!.guest)).median;
    const cloned = vm.vm.filter((x) => x.boot && x.boot.start !== "boot").length;
    lines.push(`vm pod start (accel=${vm.accel}): cocoon VM median ${(v / 1000).toFixed(2)} s vs runc ${(r / 1000).toFixed(2)} s (×${(v / r).toFixed(1)}); ` +
      (cloned ? `${cloned} of ${vm.vm.length} VMs restored from a VM template` : `guest kernel+init+agent ${(guest / 1000).toFixed(2)} s of it`));
  }
  if (vm?.memory) {
    const m = vm.memory.mean;
    const t = vm.memory.template;
    lines.push(`vm memory: ${((m.pss * 1024) / 1e6).toFixed(1)} MB PSS per VM pod${t ? `, ${((t.perPod * 1024) / 1e6).toFixed(1)} MB with an equal share of the VM template (${((t.residentKiB * 1024) / 1e6).toFixed(1)} MB once per host)` : ""} (QEMU ${((m.qemuPss * 1024) / 1e6).toFixed(1)}, shim ${((m.shimPss * 1024) / 1e6).toFixed(1)}; ` +
      `target ≤ ${VM_PSS_TARGET_MB} MB, Kata+QEMU ~123 MB) with ${vm.memory.guestMemoryMiB} MiB guest RAM configured, ` +
      `${vm.memory.pods} pods, grouping ${vm.grouping}${vm.memory.ksm ? ", host KSM on" : ""}${vm.kernelParams ? `, kernel_params "${vm.kernelParams}"` : ""}`);
  }
  return lines;
}

/** The runc-mode sections, in one private containerd without the CRI plugin. */
async function benchRuncMode(opts: BenchOptions, rep: BenchReport, onStop: (stop: () => Promise<string[]>) => void): Promise<void> {
  const rig = await startRig(opts.variants);
  let stopping: Promise<string[]> | undefined;
  const stop = () => (stopping ??= rig.stop());
  onStop(stop);
  try {
    if (opts.sections.includes("latency")) {
      progress(`latency: ${opts.warmup} warm-up + ${opts.runs} timed starts per row, interleaved`);
      rep.latency = await benchLatency(rig, latencyRows(rig), opts.runs, opts.warmup, progress);
    }
    if (opts.sections.includes("bootstrap") && opts.bootstrapRuns > 0) {
      progress(`bootstrap: ${opts.bootstrapRuns} bare 'start' commands per shim`);
      // The environment containerd gives shims: the repo's launchers first on PATH, the default config.
      const env = { ...process.env, COCOON_CONFIG: rig.cocoon.configs!.pod, PATH: `${join(repoRoot, "bin")}:${process.env.PATH ?? "/usr/bin:/bin"}` };
      rep.bootstrap = await benchBootstrap([rig.runcV2, rig.cocoon, ...rig.variants], opts.bootstrapRuns, rig.dir, env);
    }
    if (opts.sections.includes("memory")) {
      progress(`memory: ${opts.pods} pods × ${opts.perPod} containers per configuration`);
      rep.memory = await benchMemory(rig, memoryConfigs(rig), opts.pods, opts.perPod, opts.settleSec, progress);
    }
  } finally {
    rep.leftovers.push(...(await stop()));
  }
}

/** The vm-mode section, in its own private containerd with the CRI plugin and a CNI bridge. */
async function benchVmMode(opts: BenchOptions, rep: BenchReport, onStop: (stop: () => Promise<string[]>) => void): Promise<void> {
  progress(`vm: starting a private containerd with the CRI plugin (cocoon handler in vm mode, accel = "${opts.vmAccel}")`);
  const rig = await startVmRig(opts.vmAccel, {
    grouping: opts.vmGrouping, kernelParams: opts.vmKernelParams, ...(opts.vmTcgCacheMiB !== undefined ? { tcgCacheMiB: opts.vmTcgCacheMiB } : {}),
  });
  let stopping: Promise<string[]> | undefined;
  const stop = () => (stopping ??= rig.stop());
  onStop(stop);
  try {
    progress(`vm: 1 warm-up + ${opts.vmRuns} timed pod starts per handler (cocoon VM, runc), interleaved`);
    rep.vm = await benchVm(rig, opts.vmRuns, opts.vmPods, progress, { ksm: opts.vmKsm, grouping: opts.vmGrouping, kernelParams: opts.vmKernelParams });
  } finally {
    rep.leftovers.push(...(await stop()));
  }
}

/** gVisor pods next to runc-v2 and (when the guest is built) VM pods, in one private containerd with the CRI plugin. */
async function benchGvisorMode(opts: BenchOptions, rep: BenchReport, onStop: (stop: () => Promise<string[]>) => void): Promise<void> {
  const withVm = vmUnavailable() === undefined;
  progress(`gvisor: starting a private containerd with the CRI plugin (cocoon-gvisor, runc${withVm ? ", cocoon VM" : ""} handlers)`);
  const rig = await startVmRig(opts.vmAccel, { gvisor: true });
  let stopping: Promise<string[]> | undefined;
  const stop = () => (stopping ??= rig.stop());
  onStop(stop);
  try {
    progress(`gvisor: 1 warm-up + ${opts.vmRuns} timed pod starts per handler, interleaved; then ${opts.vmPods} pods per handler for memory`);
    rep.gvisor = await benchGvisor(rig, opts.vmRuns, opts.vmPods, withVm, progress);
  } finally {
    rep.leftovers.push(...(await stop()));
  }
}

async function bench(opts: BenchOptions): Promise<BenchReport> {
  const t0 = Date.now();
  const startedAt = new Date().toISOString();
  const machine = await machineFacts();
  const rep: BenchReport = { startedAt, durationSec: 0, options: opts, machine, loadavgAfter: [], leftovers: [] };
  const runcSections = opts.sections.some((s) => s !== "vm" && s !== "gvisor");
  let vm = opts.sections.includes("vm");
  const why = vm ? vmUnavailable() : undefined;
  if (why) {
    rep.vmSkipped = why;
    progress(`vm: skipped: ${why}`);
    vm = false;
  }
  let stopCurrent: (() => Promise<string[]>) | undefined;
  const onSignal = () => {
    progress("interrupted; cleaning up");
    void (stopCurrent?.() ?? Promise.resolve([])).finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    if (runcSections) {
      progress(`starting a private containerd (${machine.containerd}); node ${machine.node}, ${machine.nproc} CPUs, load ${machine.loadavg.join(" ")}`);
      await benchRuncMode(opts, rep, (s) => (stopCurrent = s));
    }
    if (vm) await benchVmMode(opts, rep, (s) => (stopCurrent = s));
    if (opts.sections.includes("gvisor")) await benchGvisorMode(opts, rep, (s) => (stopCurrent = s));
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  rep.durationSec = Math.round((Date.now() - t0) / 100) / 10;
  rep.loadavgAfter = (await import("node:os")).loadavg().map((x) => Math.round(x * 100) / 100);
  return rep;
}

async function main(): Promise<number> {
  let opts: BenchOptions;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(e.message + "\n");
      return 2;
    }
    throw e;
  }
  const rep = await bench(opts);
  const m = rep.machine;
  const out: string[] = [
    `Cocoon bench ${rep.startedAt} (${rep.durationSec} s) on ${m.nproc}× ${m.cpuModel}, ${m.memTotalMiB} MiB, kernel ${m.kernel}, cgroup ${m.cgroup}`,
    `node ${m.node}; ${m.containerd}; ${m.runc}; commit ${m.commit}; launcher: ${m.launcher}`,
    `load average before ${m.loadavg.join(" ")}, after ${rep.loadavgAfter.join(" ")}`,
  ];
  if (rep.latency) {
    out.push("", "Container start latency (ms): ctr run -d … sleep 1000", latencyTable(rep.latency),
      "(cocoon: the pool's idle spare daemon serves each new pod; between starts the bench waits until the replacement spare is up, " +
      `as a start at most every ~2 s sees it${rep.latency.missedRefills ? `; ${rep.latency.missedRefills} time(s) it was not up within 5 s` : ""}. ` +
      "A faster burst of new pods finds the pool empty and goes through Node, like spare_daemons = 0.)");
  }
  if (rep.bootstrap) out.push("", "Shim bootstrap alone (ms): '<shim> … start' in a dummy bundle", bootstrapTable(rep.bootstrap));
  if (rep.memory) out.push("", "Shim daemon memory at density (sum over shim daemons / pods)", memoryTable(rep.memory));
  if (rep.vm) out.push("", "VM pod start through the CRI (ms): RunPodSandbox + CreateContainer + StartContainer until RUNNING, one container (sleep 1000), new pod each run", vmTables(rep.vm));
  if (rep.vmSkipped) out.push("", `VM section skipped: ${rep.vmSkipped}`);
  if (rep.gvisor) out.push("", "gVisor pod start through the CRI (ms, RunPodSandbox until RUNNING) and host memory per pod, next to runc-v2 and vm mode", gvisorTable(rep.gvisor));
  out.push("", ...verdict(rep));
  if (rep.leftovers.length) out.push("", "harness cleaned up leftovers:", ...rep.leftovers.map((l) => `  ${l}`));
  const paths = writeResults(opts.outDir ?? join(repoRoot, "bench", "results"), rep);
  out.push("", `results: ${paths.join(", ")}`);
  process.stdout.write(out.join("\n") + "\n");
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
