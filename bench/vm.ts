// VM pods through the CRI: cold start latency of a one-container pod on the `cocoon` handler (a new
// QEMU VM per pod) next to the same pod on the `runc` handler, the VM boot broken down from the shim's
// `VM booted` log line, and the host memory each VM pod costs (its shim daemon plus its QEMU).
import { statSync } from "node:fs";
import { ContainerState } from "../src/gen/cri/runtime/v1/api_pb.js";
import { removePod } from "../src/cli/lab/pod.js";
import { isAlive, listProcesses, withDescendants, type ProcInfo } from "../test/helpers/procfs.js";
import { awaitKsmScans, enableKsm, ksmStats, type KsmStats } from "./ksm.js";
import { sleep } from "../test/helpers/util.js";
import { findShims, readMappings, readMemory, type ProcMemory } from "./procmem.js";
import { agentReadyLine, kvmProbeLine, vmBootLines, type VmBootLine } from "./vmlog.js";
import { RUNC_HANDLER, VM_HANDLER, type VmRig } from "./vmrig.js";

/** Wall-clock ms with sub-ms precision, comparable with the shim's log timestamps. */
const now = () => performance.timeOrigin + performance.now();

export interface PodStartSample {
  handler: string;
  /** RunPodSandbox call until ContainerStatus says RUNNING. */
  totalMs: number;
  runPodSandboxMs: number;
  createContainerMs: number;
  startContainerMs: number;
  /** StartContainer's return until ContainerStatus reported RUNNING. */
  statusMs: number;
}

/** Where the time of one VM pod start went (ms). */
export interface VmBreakdown {
  /** RunPodSandbox call until the shim spawned QEMU: CRI, CNI, shim start (and the KVM probe if any). */
  beforeVmm: number;
  vmmSpawn: number;
  /** QEMU spawned until its agent socket accepted a connection. */
  socketUp: number;
  /** Socket connected until the agent answered Health. */
  agentAnswer: number;
  /** QEMU spawned until the agent answered (the shim's `ms`). */
  boot: number;
  /** Guest time since its kernel started when the agent answered: kernel + init + agent. */
  guest: number;
  /** From the guest console's `cocoon-agent ready` line: guest uptime when node started (kernel + /init). */
  kernelInit?: number;
  /** node's own start plus the agent bundle's initialisation, until it opened its port. */
  agentInit?: number;
  /** Port opened until the agent answered the shim's Health call (connection, polling, first call). */
  agentFirstAnswer?: number;
  /** boot − guest: QEMU start-up and firmware/PVH entry before the guest kernel's clock starts. */
  vmmFirmware: number;
  /** `VM booted` until RunPodSandbox returned: guest network, pause container, CRI bookkeeping. */
  bootToSandboxReady: number;
  /** total − time to `VM booted`: everything after the boot, including the container's create and start. */
  containerStart: number;
  /** RunPodSandbox's return until RUNNING: CreateContainer + StartContainer (+ the status call). */
  createAndStart: number;
}

export interface VmRun {
  sample: PodStartSample;
  breakdown?: VmBreakdown;
  boot?: VmBootLine;
}

export interface VmPodMemory {
  podId: string;
  shimPid: number;
  qemuPid: number;
  shim: ProcMemory;
  qemu: ProcMemory;
  qemuParts: QemuParts;
  /** Other descendants of the shim (none expected: the containers run in the guest). */
  others: { pid: number; cmd: string; mem: ProcMemory }[];
  /** KiB: shim + QEMU + others. */
  pss: number;
  uss: number;
}

/** Where QEMU's memory is (KiB), from its mappings. */
export interface QemuParts {
  /** The guest RAM block: resident = guest pages the guest has touched since boot. */
  guestRam: { size: number; rss: number; pss: number };
  /** TCG's translated-code buffer (anonymous and executable); empty under KVM. */
  tcgCode: { size: number; rss: number; pss: number };
  /** The rest of QEMU's anonymous memory: heap, device state, thread stacks. */
  otherAnonPss: number;
  /** Files: the QEMU binary, its libraries, and the guest kernel it keeps mapped. */
  filePss: number;
  /** The files with the most PSS, KiB. */
  topFiles: { name: string; rss: number; pss: number }[];
  /**
   * A VM restored from a template maps the template's RAM file private: `guestRam` is then that
   * mapping, `copied` the pages it wrote (its own copies), `shared` its PSS share of the file's pages.
   */
  template?: { file: string; copied: number; sharedRss: number; sharedPss: number };
}

export interface VmMemoryResult {
  pods: number;
  settleSec: number;
  guestMemoryMiB: number;
  perPod: VmPodMemory[];
  /** KiB per pod, averaged. */
  mean: {
    pss: number; uss: number; shimPss: number; shimUss: number; qemuPss: number; qemuUss: number; qemuRss: number; qemuPssAnon: number; qemuPssFile: number;
    guestRamRss: number; tcgCodeRss: number; qemuOtherAnonPss: number;
  };
  /** The guest's own view (first pod's /proc/meminfo), KiB. */
  guestMeminfo?: Record<string, number>;
  /** Set when the host merged identical pages (--vm-ksm): what KSM had merged when memory was read. */
  ksm?: KsmStats & { waitedSec: number };
  /**
   * VM templates: the template's RAM file lives in host memory once for all pods (tmpfs), whether a
   * clone maps a page of it or not. `perPod` (KiB) charges each pod an equal share of the whole file
   * instead of the PSS of the pages it maps: the pods' PSS minus their template PSS, plus file/pods.
   */
  template?: { file: string; residentKiB: number; perPod: number };
}

export interface VmResult {
  accel: string;
  kvmProbe?: { kvm: string; reason: string; ms: number };
  guestKernel: string;
  guestMemoryMiB: number;
  /** Untimed first starts (page cache, KVM probe), one per handler. */
  warmup: VmRun[];
  /** The VM pods' grouping and extra guest kernel parameters. */
  grouping: "pod" | "node";
  kernelParams: string;
  vm: VmRun[];
  runc: PodStartSample[];
  errors: string[];
  memory?: VmMemoryResult;
}

export const VM_SETTLE_SEC = 5;
/** The comparison point given for the memory section: Kata Containers with QEMU is ~123 MB per pod. */
export const VM_PSS_TARGET_MB = 100;

async function waitRunning(rig: VmRig, containerId: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let pause = 5; ; pause = Math.min(pause * 2, 100)) {
    const { status } = await rig.cri.containerStatus({ containerId }, { timeoutMs: 10_000 });
    if (status?.state === ContainerState.CONTAINER_RUNNING) return;
    if (status?.state === ContainerState.CONTAINER_EXITED) throw new Error(`container ${containerId} exited (${status.reason}: ${status.message})`);
    if (Date.now() > deadline) throw new Error(`container ${containerId} not running after ${timeoutMs} ms`);
    await sleep(pause);
  }
}

/** containerd copies shim logs asynchronously: wait (bounded) for this sandbox's `VM booted` line. */
async function bootLineOf(rig: VmRig, podId: string, from: number): Promise<VmBootLine | undefined> {
  const deadline = Date.now() + 3_000;
  for (;;) {
    const lines = vmBootLines(rig.ctrd.log().slice(from));
    const line = lines.find((l) => l.sandbox === podId) ?? (lines.length === 1 ? lines[0] : undefined);
    if (line || Date.now() > deadline) return line;
    await sleep(50);
  }
}

/** Runs a one-container pod and times each CRI call; returns the pod id (caller removes the pod). */
export async function startTimedPod(rig: VmRig, handler: string, name: string): Promise<{ podId: string; sample: PodStartSample; t0: number; tSandbox: number; tRunning: number }> {
  const pod = rig.pod(handler, name);
  const call = { timeoutMs: 180_000 };
  const t0 = now();
  const { podSandboxId: podId } = await rig.cri.runPodSandbox({ config: pod.sandbox, runtimeHandler: handler }, call);
  const tSandbox = now();
  try {
    const { containerId } = await rig.cri.createContainer({ podSandboxId: podId, config: pod.containers[0]!, sandboxConfig: pod.sandbox }, call);
    const tCreate = now();
    await rig.cri.startContainer({ containerId }, call);
    const tStart = now();
    await waitRunning(rig, containerId);
    const tRunning = now();
    return {
      podId, t0, tSandbox, tRunning,
      sample: {
        handler, totalMs: tRunning - t0, runPodSandboxMs: tSandbox - t0, createContainerMs: tCreate - tSandbox,
        startContainerMs: tStart - tCreate, statusMs: tRunning - tStart,
      },
    };
  } catch (e) {
    await removePod(rig.cri, podId).catch(() => {});
    throw e;
  }
}

function breakdownOf(b: VmBootLine, t0: number, tSandbox: number, tRunning: number, console: string): VmBreakdown {
  const spawnedAt = b.at - b.ms;
  // A clone restored from a VM template did not boot: its guest uptime is the template's.
  const booted = b.start === "boot";
  const ready = booted ? agentReadyLine(console) : undefined;
  return {
    ...(ready ? {
      kernelInit: ready.guestUptimeMs - ready.processUptimeMs,
      agentInit: ready.processUptimeMs,
      agentFirstAnswer: b.guestUptimeMs - ready.guestUptimeMs,
    } : {}),
    beforeVmm: spawnedAt - t0,
    vmmSpawn: b.vmmSpawnMs,
    socketUp: b.socketMs - b.vmmSpawnMs,
    agentAnswer: b.agentReadyMs - b.socketMs,
    boot: b.agentReadyMs,
    guest: booted ? b.guestUptimeMs : NaN,
    vmmFirmware: booted ? b.agentReadyMs - b.guestUptimeMs : NaN,
    bootToSandboxReady: tSandbox - b.at,
    containerStart: tRunning - b.at,
    createAndStart: tRunning - tSandbox,
  };
}

/** Removes a pod and waits (bounded) until its shim and QEMU are gone, so runs do not overlap. */
export async function removeAndSettle(rig: VmRig, podId: string, qemuPid?: number): Promise<void> {
  await removePod(rig.cri, podId, 60_000);
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && ((qemuPid && isAlive(qemuPid)) || findShims(rig.ctrd.address).length > 0)) await sleep(50);
}

export async function onePodStart(rig: VmRig, handler: string, name: string): Promise<VmRun> {
  const from = rig.ctrd.log().length;
  const r = await startTimedPod(rig, handler, name);
  let boot: VmBootLine | undefined;
  let console = "";
  try {
    if (handler === VM_HANDLER) {
      boot = await bootLineOf(rig, r.podId, from);
      if (boot) rig.noteQemu(boot.qemuPid);
      console = rig.console(r.podId);
    }
  } finally {
    await removeAndSettle(rig, r.podId, boot?.qemuPid);
  }
  return { sample: r.sample, ...(boot ? { boot, breakdown: breakdownOf(boot, r.t0, r.tSandbox, r.tRunning, console) } : {}) };
}

/** The shim daemon running `podId`'s VM and its QEMU: by the logged qemuPid, whose parent is the shim. */
function podProcesses(all: ProcInfo[], address: string, boot: VmBootLine | undefined, podId: string): { shim?: ProcInfo; qemu?: ProcInfo } {
  const byPid = new Map(all.map((p) => [p.pid, p]));
  const shims = findShims(address, all).filter((s) => s.kind === "cocoon");
  let qemu = boot ? byPid.get(boot.qemuPid) : undefined;
  let shim = qemu ? byPid.get(qemu.ppid) : undefined;
  if (!shim || !shims.some((s) => s.pid === shim!.pid)) {
    const s = shims.find((x) => x.args.includes(podId));
    shim = s && byPid.get(s.pid);
    qemu = shim && all.find((p) => p.ppid === shim!.pid && /qemu-system/.test(p.args[0] ?? ""));
  }
  return { shim, qemu };
}

async function guestMeminfo(rig: VmRig, podId: string): Promise<Record<string, number> | undefined> {
  try {
    const { containers } = await rig.cri.listContainers({ filter: { podSandboxId: podId } }, { timeoutMs: 10_000 });
    const id = containers[0]?.id;
    if (!id) return undefined;
    const r = await rig.cri.execSync({ containerId: id, cmd: ["cat", "/proc/meminfo"], timeout: 20n }, { timeoutMs: 30_000 });
    const out: Record<string, number> = {};
    for (const m of Buffer.from(r.stdout).toString("utf8").matchAll(/^(\w+(?:\(\w+\))?):\s+(\d+) kB$/gm)) out[m[1]!] = Number(m[2]);
    return Object.keys(out).length ? out : undefined;
  } catch {
    return undefined;
  }
}

function qemuParts(pid: number, memoryMiB: number, rollup: ProcMemory): QemuParts {
  const maps = readMappings(pid);
  const anon = maps.filter((m) => m.name === "" || m.name.startsWith("[anon"));
  const ramSize = memoryMiB * 1024;
  // The RAM block is mapped exactly its size; fall back to the largest writable anonymous mapping.
  const tplRam = maps.find((m) => m.size === ramSize && m.perms.startsWith("rw") && /\/templates\/[0-9a-f]{16}\/memory$/.test(m.name));
  const ram = tplRam ?? anon.find((m) => m.size === ramSize && m.perms.startsWith("rw")) ??
    anon.filter((m) => m.perms.startsWith("rw") && !m.perms.includes("x") && m.size >= ramSize).sort((a, b) => b.rss - a.rss)[0];
  const code = anon.filter((m) => m.perms.includes("x"));
  const add = (ms: typeof maps) => ({ size: ms.reduce((a, m) => a + m.size, 0), rss: ms.reduce((a, m) => a + m.rss, 0), pss: ms.reduce((a, m) => a + m.pss, 0) });
  const guestRam = add(ram ? [ram] : []);
  const tcgCode = add(code);
  const files = new Map<string, { name: string; rss: number; pss: number }>();
  for (const m of maps) {
    if (!m.name.startsWith("/")) continue;
    const f = files.get(m.name) ?? { name: m.name, rss: 0, pss: 0 };
    f.rss += m.rss;
    f.pss += m.pss;
    files.set(m.name, f);
  }
  const topFiles = [...files.values()].filter((f) => f.name !== tplRam?.name).sort((a, b) => b.pss - a.pss).slice(0, 4);
  if (tplRam) {
    // The copied pages are anonymous (PSS = size, as no one else maps them); the rest is the file's.
    const template = { file: tplRam.name, copied: tplRam.anon, sharedRss: tplRam.rss - tplRam.anon, sharedPss: tplRam.pss - tplRam.anon };
    return { guestRam, tcgCode, otherAnonPss: rollup.pssAnon - tplRam.anon - tcgCode.pss, filePss: rollup.pssFile, topFiles, template };
  }
  return { guestRam, tcgCode, otherAnonPss: rollup.pssAnon - guestRam.pss - tcgCode.pss, filePss: rollup.pssFile, topFiles };
}

const ZERO: ProcMemory = { rss: 0, pss: 0, uss: 0, pssAnon: 0, pssFile: 0 };

function scaleMemory(m: ProcMemory, f: number): ProcMemory {
  return { rss: m.rss * f, pss: m.pss * f, uss: m.uss * f, pssAnon: m.pssAnon * f, pssFile: m.pssFile * f };
}

/**
 * Processes a shim started for its pods, other than VMMs (counted per pod) and other shim processes
 * (a spare daemon it started, which may since serve a pod of its own, with its own VMM).
 */
function helpersOf(shim: ProcInfo, all: ProcInfo[]): ProcInfo[] {
  const ownUnit = (p: ProcInfo) => /(^|\/)qemu-system/.test(p.args[0] ?? "") || p.args.some((a) => a.includes("containerd-shim-cocoon-v2"));
  return withDescendants([shim], all.filter((p) => p.pid === shim.pid || !ownUnit(p))).filter((p) => p.pid !== shim.pid);
}

async function vmMemory(rig: VmRig, pods: number, progress: (msg: string) => void, ksm: boolean): Promise<VmMemoryResult> {
  const started: { podId: string; boot?: VmBootLine }[] = [];
  const restoreKsm = ksm ? enableKsm() : undefined;
  let ksmState: VmMemoryResult["ksm"];
  try {
    for (let i = 0; i < pods; i++) {
      const from = rig.ctrd.log().length;
      const r = await startTimedPod(rig, VM_HANDLER, "vmmem");
      const boot = await bootLineOf(rig, r.podId, from);
      if (boot) rig.noteQemu(boot.qemuPid);
      started.push({ podId: r.podId, boot });
      progress(`vm memory: pod ${i + 1}/${pods} running (${(r.sample.totalMs / 1000).toFixed(1)} s)`);
    }
    await sleep(VM_SETTLE_SEC * 1000);
    if (ksm) {
      progress("vm memory: waiting for KSM to scan every VM twice");
      const waitedSec = await awaitKsmScans(2, 180_000);
      ksmState = { ...ksmStats(), waitedSec };
    }
    const all = listProcesses();
    const units = started.map(({ podId, boot }) => ({ podId, ...podProcesses(all, rig.ctrd.address, boot, podId) }));
    // With node grouping one shim serves several of these pods: each pod carries its share.
    const podsPerShim = new Map<number, number>();
    for (const u of units) if (u.shim) podsPerShim.set(u.shim.pid, (podsPerShim.get(u.shim.pid) ?? 0) + 1);
    const perPod: VmPodMemory[] = [];
    for (const { podId, shim, qemu } of units) {
      if (!shim) continue;
      const shimMem = scaleMemory(readMemory(shim.pid) ?? ZERO, 1 / (podsPerShim.get(shim.pid) ?? 1));
      const qemuMem = (qemu && readMemory(qemu.pid)) || ZERO;
      const others = helpersOf(shim, all)
        .filter((p) => p.pid !== qemu?.pid)
        .map((p) => ({ pid: p.pid, cmd: p.args.join(" ").slice(0, 200), mem: readMemory(p.pid) ?? ZERO }));
      const sum = (k: keyof ProcMemory) => shimMem[k] + qemuMem[k] + others.reduce((a, o) => a + o.mem[k], 0);
      const parts = qemu ? qemuParts(qemu.pid, rig.memoryMiB, qemuMem) : { guestRam: { size: 0, rss: 0, pss: 0 }, tcgCode: { size: 0, rss: 0, pss: 0 }, otherAnonPss: 0, filePss: 0, topFiles: [] };
      perPod.push({ podId, shimPid: shim.pid, qemuPid: qemu?.pid ?? 0, shim: shimMem, qemu: qemuMem, qemuParts: parts, others, pss: sum("pss"), uss: sum("uss") });
    }
    const avg = (f: (p: VmPodMemory) => number) => (perPod.length ? perPod.reduce((a, p) => a + f(p), 0) / perPod.length : NaN);
    const meminfo = started[0] ? await guestMeminfo(rig, started[0].podId) : undefined;
    const tplFile = perPod.find((p) => p.qemuParts.template)?.qemuParts.template?.file;
    let template: VmMemoryResult["template"];
    if (tplFile) {
      const residentKiB = (statSync(tplFile).blocks * 512) / 1024;
      template = { file: tplFile, residentKiB, perPod: avg((p) => p.pss - (p.qemuParts.template?.sharedPss ?? 0)) + residentKiB / perPod.length };
    }
    return {
      pods, settleSec: VM_SETTLE_SEC, guestMemoryMiB: rig.memoryMiB, perPod,
      mean: {
        pss: avg((p) => p.pss), uss: avg((p) => p.uss), shimPss: avg((p) => p.shim.pss), shimUss: avg((p) => p.shim.uss),
        qemuPss: avg((p) => p.qemu.pss), qemuUss: avg((p) => p.qemu.uss), qemuRss: avg((p) => p.qemu.rss),
        qemuPssAnon: avg((p) => p.qemu.pssAnon), qemuPssFile: avg((p) => p.qemu.pssFile),
        guestRamRss: avg((p) => p.qemuParts.guestRam.rss), tcgCodeRss: avg((p) => p.qemuParts.tcgCode.rss), qemuOtherAnonPss: avg((p) => p.qemuParts.otherAnonPss),
      },
      ...(meminfo ? { guestMeminfo: meminfo } : {}),
      ...(ksmState ? { ksm: ksmState } : {}),
      ...(template ? { template } : {}),
    };
  } finally {
    await Promise.all(started.map((s) => removeAndSettle(rig, s.podId, s.boot?.qemuPid).catch(() => {})));
    restoreKsm?.();
  }
}

export interface VmBenchOptions {
  /** Measure memory with the host's KSM merging identical pages (restored afterwards). */
  ksm?: boolean;
  /** What the rig's Cocoon config says, for the report. */
  grouping?: "pod" | "node";
  kernelParams?: string;
}

export async function benchVm(rig: VmRig, runs: number, pods: number, progress: (msg: string) => void, o: VmBenchOptions = {}): Promise<VmResult> {
  const res: VmResult = {
    accel: "", guestKernel: rig.guestKernel, guestMemoryMiB: rig.memoryMiB, grouping: o.grouping ?? "pod", kernelParams: o.kernelParams ?? "",
    warmup: [], vm: [], runc: [], errors: [],
  };
  const attempt = async (handler: string, name: string): Promise<VmRun | undefined> => {
    try {
      return await onePodStart(rig, handler, name);
    } catch (e) {
      res.errors.push(`${handler} ${name}: ${(e as Error).message.split("\n")[0]}`);
      progress(`vm: ${handler} pod failed: ${(e as Error).message.split("\n")[0]}`);
      return undefined;
    }
  };
  // One untimed start per handler: the first VM start may probe KVM (accel = "auto") and reads the
  // guest kernel and initrd from disk.
  for (const handler of [VM_HANDLER, RUNC_HANDLER]) {
    const w = await attempt(handler, "warmup");
    if (w) res.warmup.push(w);
  }
  progress(`vm: warm-up done (${res.warmup.map((w) => `${w.sample.handler} ${(w.sample.totalMs / 1000).toFixed(1)} s`).join(", ")})`);
  for (let i = 0; i < runs; i++) {
    // Alternate which handler goes first, so neither always follows the other's teardown.
    const order = i % 2 === 0 ? [VM_HANDLER, RUNC_HANDLER] : [RUNC_HANDLER, VM_HANDLER];
    for (const handler of order) {
      const r = await attempt(handler, `lat${i}`);
      if (!r) continue;
      if (handler === VM_HANDLER) res.vm.push(r);
      else res.runc.push(r.sample);
    }
    const last = res.vm[res.vm.length - 1];
    progress(`vm: ${i + 1}/${runs} rounds${last ? ` (last VM pod ${(last.sample.totalMs / 1000).toFixed(1)} s)` : ""}`);
  }
  const log = rig.ctrd.log();
  const accels = [...new Set(vmBootLines(log).map((b) => b.accel))];
  res.accel = accels.join(",") || "unknown";
  const probe = kvmProbeLine(log);
  if (probe) res.kvmProbe = probe;
  progress(`vm memory: ${pods} VM pods at once, then ${VM_SETTLE_SEC} s to settle`);
  try {
    res.memory = await vmMemory(rig, pods, progress, o.ksm === true);
  } catch (e) {
    res.errors.push(`memory: ${(e as Error).message.split("\n")[0]}`);
  }
  return res;
}
