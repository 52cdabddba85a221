// gVisor pods through the CRI, side by side with the same pod on containerd-shim-runc-v2 (`runc`) and
// in a Cocoon VM (`cocoon`), in one private containerd: cold pod start latency, then host memory per
// pod with several pods of each handler running at once (the shim daemon plus everything under it:
// runc's pause and container; the runsc sandbox and gofers; QEMU).
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import path from "node:path";
import { listProcesses, withDescendants, type ProcInfo } from "../test/helpers/procfs.js";
import { sleep } from "../test/helpers/util.js";
import { findShims, readMemory, type ShimProcess } from "./procmem.js";
import { round1, summarize } from "./stats.js";
import { onePodStart, removeAndSettle, startTimedPod, type PodStartSample } from "./vm.js";
import { GVISOR_HANDLER, RUNC_HANDLER, VM_HANDLER, type VmRig } from "./vmrig.js";

export const GVISOR_SETTLE_SEC = 5;

export interface HandlerMemory {
  handler: string;
  pods: number;
  /** KiB per pod, averaged: the pod's shim daemon (its share, if it serves several) and its descendants. */
  pss: number;
  uss: number;
  /** What was counted for the first pod, e.g. "containerd-shim-runc-v2, pause, sleep". */
  processes: string[];
}

export interface GvisorResult {
  /** From the shim's `gVisor platform probe` log line ("" if the answer was cached). */
  platform: string;
  handlers: string[];
  starts: Record<string, PodStartSample[]>;
  memory: HandlerMemory[];
  errors: string[];
}

const isShim = (p: ProcInfo) => /containerd-shim/.test(p.args.join(" "));

/** Inodes of the listening unix sockets bound at `path` (/proc/net/unix). */
function listeningInodes(path: string): Set<string> {
  const out = new Set<string>();
  for (const line of readFileSync("/proc/net/unix", "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    // Num RefCount Protocol Flags Type St Inode Path; flag 00010000 = __SO_ACCEPTCON (listening).
    if (f[7] === path && f[3] === "00010000") out.add(f[6]!);
  }
  return out;
}

/**
 * The shim daemon serving a pod: the one named after its sandbox id, else (a spare daemon that took the
 * pod keeps its own arguments; a vm-mode task pid is the guest's) the shim that listens on the socket
 * containerd wrote into the pod's bundle.
 */
function shimOf(rig: VmRig, id: string, shims: ShimProcess[]): ShimProcess | undefined {
  const named = shims.find((s) => s.args.includes(id));
  if (named) return named;
  let address = "";
  try {
    address = readFileSync(path.join(rig.ctrd.state, "io.containerd.runtime.v2.task", "k8s.io", id, "address"), "utf8").trim();
  } catch {
    return undefined;
  }
  const inodes = listeningInodes(address.replace(/^unix:\/\//, ""));
  return shims.find((s) => {
    try {
      return readdirSync(`/proc/${s.pid}/fd`).some((fd) => {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${s.pid}/fd/${fd}`));
        return !!m && inodes.has(m[1]!);
      });
    } catch {
      return false;
    }
  });
}

async function podMemory(rig: VmRig, podIds: string[]): Promise<{ pss: number; uss: number; processes: string[] }> {
  const all = listProcesses();
  const shims = findShims(rig.ctrd.address, all, { spares: true });
  const podsPerShim = new Map<number, number>();
  const units = podIds.map((id) => shimOf(rig, id, shims));
  for (const u of units) if (u) podsPerShim.set(u.pid, (podsPerShim.get(u.pid) ?? 0) + 1);
  let pss = 0;
  let uss = 0;
  let processes: string[] = [];
  for (const u of units) {
    if (!u) continue;
    const shimProc = all.find((p) => p.pid === u.pid)!;
    const share = 1 / (podsPerShim.get(u.pid) ?? 1);
    const shimMem = readMemory(u.pid);
    pss += (shimMem?.pss ?? 0) * share;
    uss += (shimMem?.uss ?? 0) * share;
    const below = withDescendants([shimProc], all.filter((p) => p.pid === u.pid || !isShim(p))).filter((p) => p.pid !== u.pid);
    for (const p of below) {
      const m = readMemory(p.pid);
      pss += m?.pss ?? 0;
      uss += m?.uss ?? 0;
    }
    if (!processes.length) processes = [shimProc, ...below].map((p) => (p.args[0] ?? "").split("/").pop()!);
  }
  const n = units.filter(Boolean).length || NaN;
  return { pss: pss / n, uss: uss / n, processes };
}

async function handlerMemory(rig: VmRig, handler: string, pods: number, progress: (m: string) => void): Promise<HandlerMemory> {
  const ids: string[] = [];
  try {
    for (let i = 0; i < pods; i++) ids.push((await startTimedPod(rig, handler, "gvmem")).podId);
    progress(`gvisor memory: ${pods} ${handler} pods running; ${GVISOR_SETTLE_SEC} s to settle`);
    await sleep(GVISOR_SETTLE_SEC * 1000);
    return { handler, pods: ids.length, ...(await podMemory(rig, ids)) };
  } finally {
    for (const id of ids) await removeAndSettle(rig, id).catch(() => {});
  }
}

export async function benchGvisor(rig: VmRig, runs: number, pods: number, withVm: boolean, progress: (m: string) => void): Promise<GvisorResult> {
  const handlers = [GVISOR_HANDLER, RUNC_HANDLER, ...(withVm ? [VM_HANDLER] : [])];
  const res: GvisorResult = { platform: "", handlers, starts: Object.fromEntries(handlers.map((h) => [h, []])), memory: [], errors: [] };
  const attempt = async (handler: string, name: string) => {
    try {
      return await onePodStart(rig, handler, name);
    } catch (e) {
      res.errors.push(`${handler} ${name}: ${(e as Error).message.split("\n")[0]}`);
      return undefined;
    }
  };
  for (const h of handlers) await attempt(h, "warmup");
  for (let i = 0; i < runs; i++) {
    // Rotate the order so no handler always follows another's teardown.
    const order = handlers.map((_, k) => handlers[(k + i) % handlers.length]!);
    for (const h of order) {
      const r = await attempt(h, `lat${i}`);
      if (r) res.starts[h]!.push(r.sample);
    }
    progress(`gvisor: ${i + 1}/${runs} rounds`);
  }
  res.platform = /gVisor platform probe.*?platform=(\w+)/.exec(rig.ctrd.log())?.[1] ?? "";
  for (const h of handlers) {
    try {
      res.memory.push(await handlerMemory(rig, h, pods, progress));
    } catch (e) {
      res.errors.push(`memory ${h}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  return res;
}

export function gvisorTable(r: GvisorResult): string {
  const rows = r.handlers.map((h) => {
    const s = summarize((r.starts[h] ?? []).map((x) => x.totalMs));
    const m = r.memory.find((x) => x.handler === h);
    return [h, String(s.n), round1(s.median).toFixed(1), round1(s.min).toFixed(1), round1(s.max).toFixed(1),
      m ? ((m.pss * 1024) / 1e6).toFixed(1) : "-", m ? ((m.uss * 1024) / 1e6).toFixed(1) : "-", m ? m.processes.join(", ") : ""];
  });
  const head = ["handler", "n", "start median ms", "min", "max", "MB PSS/pod", "MB USS/pod", "processes per pod"];
  const widths = head.map((x, i) => Math.max(x.length, ...rows.map((row) => row[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => (i === 0 || i === 7 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join("  ");
  return [
    line(head), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line),
    `(gVisor platform: ${r.platform || "cached probe answer"}; pod = one container, sleep 1000; memory with ${r.memory[0]?.pods ?? 0} pods of a handler at once)`,
    ...r.errors.map((e) => `error: ${e}`),
  ].join("\n");
}
