// `cocoon pod stats`: CPU (cores over one second, and CPU time) and memory working set per container.
import type { Command } from "commander";
import type { CriClient } from "../cri/client.js";
import { delay } from "../lab/pod.js";
import type { ContainerStats } from "../../gen/cri/runtime/v1/api_pb.js";
import { criCommand, withCri } from "./command.js";
import { callMsOf, processIO, type CommonOptions, type PodIO } from "./common.js";
import { humanBytes, json, podLabel, renderTable, shortId } from "./output.js";
import { listPods, resolveContainer, resolvePod } from "./resolve.js";

const POD_NAME_LABEL = "io.kubernetes.pod.name";

export interface StatsOptions extends CommonOptions {
  pod?: string;
  /** false (--no-sample): one sample, cumulative CPU only. */
  sample?: boolean;
}

export interface StatsRow {
  id: string;
  name: string;
  podId: string;
  pod: string;
  /** Cores in use over the sampling second; null without a second sample. */
  cpuCores: number | null;
  /** CPU time used so far, ns. */
  cpuUsageNs: number | null;
  memoryWorkingSetBytes: number | null;
}

export async function podStats(cri: CriClient, ref: string | undefined, o: StatsOptions, io: PodIO = processIO): Promise<number> {
  const callMs = callMsOf(o);
  const filter: { id?: string; podSandboxId?: string } = {};
  if (ref !== undefined) filter.id = (await resolveContainer(cri, ref, callMs)).container.id;
  if (o.pod !== undefined) filter.podSandboxId = (await resolvePod(cri, o.pod, callMs)).id;
  const sample = async () => new Map((await cri.listContainerStats({ filter }, { timeoutMs: callMs })).stats.map((s) => [s.attributes?.id ?? "", s] as const));
  const first = await sample();
  let last = first;
  if (o.sample !== false) {
    await delay(1000);
    last = await sample();
  }
  const [{ containers }, pods] = await Promise.all([cri.listContainers({}, { timeoutMs: callMs }), listPods(cri, callMs)]);
  const podOf = new Map(containers.map((c) => [c.id, c.podSandboxId]));
  const podName = new Map(pods.map((p) => [p.id, podLabel(p)]));
  const cores = (a: ContainerStats | undefined, b: ContainerStats): number | null => {
    const u0 = a?.cpu?.usageCoreNanoSeconds?.value;
    const u1 = b.cpu?.usageCoreNanoSeconds?.value;
    const t0 = a?.cpu?.timestamp ?? 0n;
    const t1 = b.cpu?.timestamp ?? 0n;
    if (a === b || u0 === undefined || u1 === undefined || t1 <= t0) return null;
    return Math.max(0, Number(u1 - u0) / Number(t1 - t0));
  };
  const rows: StatsRow[] = [...last.values()]
    .map((s) => {
      const id = s.attributes?.id ?? "";
      const podId = podOf.get(id) ?? "";
      const usage = s.cpu?.usageCoreNanoSeconds?.value;
      const ws = s.memory?.workingSetBytes?.value;
      return {
        id,
        name: s.attributes?.metadata?.name ?? "",
        podId,
        pod: podName.get(podId) ?? s.attributes?.labels[POD_NAME_LABEL] ?? "",
        cpuCores: cores(first.get(id), s),
        cpuUsageNs: usage === undefined ? null : Number(usage),
        memoryWorkingSetBytes: ws === undefined ? null : Number(ws),
      };
    })
    .sort((a, b) => a.pod.localeCompare(b.pod) || a.name.localeCompare(b.name));
  if (o.json) {
    json(io, rows);
    return 0;
  }
  if (rows.length === 0) {
    io.out(ref !== undefined ? "no stats for this container (is it running?)\n" : "no container stats\n");
    return 0;
  }
  const lines = renderTable(
    ["CONTAINER ID", "NAME", "POD", "CPU (cores)", "CPU TIME", "MEMORY (working set)"],
    rows.map((r) => [
      shortId(r.id),
      r.name,
      r.pod,
      r.cpuCores === null ? "-" : r.cpuCores.toFixed(3),
      r.cpuUsageNs === null ? "-" : `${(r.cpuUsageNs / 1e9).toFixed(2)}s`,
      r.memoryWorkingSetBytes === null ? "-" : humanBytes(r.memoryWorkingSetBytes),
    ]),
  );
  io.out(lines.map((l) => `${l}\n`).join(""));
  return 0;
}

export function statsCommand(): Command {
  return criCommand("stats", "CPU (cores in use over one second, and CPU time) and memory working set per container")
    .argument("[container]", "only this container: id (prefix), name, or <pod>/<container>")
    .option("--pod <pod>", "only this pod's containers")
    .option("--no-sample", "one sample only: no cores figure, no one-second wait")
    .option("--json", "print JSON (bytes and ns)")
    .action(withCri((cri, ref: string | undefined, _o: unknown, cmd: Command) => podStats(cri, ref, cmd.opts<StatsOptions>())));
}
