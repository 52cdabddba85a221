// `cocoon pod ls`: pods, newest first, and with -c each pod's containers with their exit codes.
import type { Command } from "commander";
import type { CriClient } from "../cri/client.js";
import { ContainerState, type Container } from "../../gen/cri/runtime/v1/api_pb.js";
import { criCommand, withCri } from "./command.js";
import { callMsOf, processIO, type CommonOptions, type PodIO } from "./common.js";
import { age, containerState, isoTime, json, podState, renderTable, shortId } from "./output.js";
import { listPods } from "./resolve.js";

export interface LsOptions extends CommonOptions {
  containers?: boolean;
}

export async function podLs(cri: CriClient, o: LsOptions, io: PodIO = processIO): Promise<number> {
  const callMs = callMsOf(o);
  const pods = (await listPods(cri, callMs)).sort((a, b) => (b.createdAt > a.createdAt ? 1 : b.createdAt < a.createdAt ? -1 : 0));
  const byPod = new Map<string, { c: Container; exitCode: number | null }[]>();
  if (o.containers) {
    const { containers } = await cri.listContainers({}, { timeoutMs: callMs });
    // Only ContainerStatus has the exit code; ask for exited containers only.
    const rows = await Promise.all(
      containers.map(async (c) => {
        if (c.state !== ContainerState.CONTAINER_EXITED) return { c, exitCode: null };
        const st = await cri.containerStatus({ containerId: c.id }, { timeoutMs: callMs }).catch(() => undefined);
        return { c, exitCode: st?.status?.exitCode ?? null };
      }),
    );
    rows.sort((a, b) => (a.c.createdAt < b.c.createdAt ? -1 : a.c.createdAt > b.c.createdAt ? 1 : 0));
    for (const r of rows) byPod.set(r.c.podSandboxId, [...(byPod.get(r.c.podSandboxId) ?? []), r]);
  }
  if (o.json) {
    json(
      io,
      pods.map((p) => ({
        id: p.id,
        name: p.metadata?.name ?? "",
        namespace: p.metadata?.namespace ?? "",
        uid: p.metadata?.uid ?? "",
        state: podState(p.state),
        handler: p.runtimeHandler,
        createdAt: isoTime(p.createdAt),
        ...(o.containers
          ? {
              containers: (byPod.get(p.id) ?? []).map(({ c, exitCode }) => ({
                id: c.id,
                name: c.metadata?.name ?? "",
                state: containerState(c.state),
                exitCode,
                image: c.image?.image ?? "",
                createdAt: isoTime(c.createdAt),
              })),
            }
          : {}),
      })),
    );
    return 0;
  }
  if (pods.length === 0) {
    io.out("no pods\n");
    return 0;
  }
  const podLines = renderTable(
    ["POD ID", "NAME", "NAMESPACE", "STATE", "HANDLER", "CREATED"],
    pods.map((p) => [shortId(p.id), p.metadata?.name ?? "", p.metadata?.namespace ?? "", podState(p.state), p.runtimeHandler || "(default)", age(p.createdAt)]),
  );
  if (!o.containers) {
    io.out(podLines.map((l) => `${l}\n`).join(""));
    return 0;
  }
  // One container table for all pods, so that the columns line up under every pod.
  const ctrRows = pods.flatMap((p) => (byPod.get(p.id) ?? []).map(({ c, exitCode }) => [shortId(c.id), c.metadata?.name ?? "", containerState(c.state), exitCode === null ? "-" : String(exitCode)]));
  const [ctrHeader, ...ctrLines] = renderTable(["CONTAINER ID", "NAME", "STATE", "EXIT CODE"], ctrRows, "    ");
  let out = `${podLines[0]}\n`;
  let k = 0;
  pods.forEach((p, i) => {
    out += `${podLines[i + 1]}\n`;
    const n = byPod.get(p.id)?.length ?? 0;
    if (n === 0) out += "    (no containers)\n";
    else out += `${ctrHeader}\n${ctrLines.slice(k, k + n).map((l) => `${l}\n`).join("")}`;
    k += n;
  });
  io.out(out);
  return 0;
}

export function lsCommand(): Command {
  return criCommand("ls", "list pods (newest first), with -c their containers too")
    .alias("list")
    .option("-c, --containers", "show each pod's containers")
    .option("--json", "print JSON (full ids, timestamps)")
    .action(withCri((cri, _o: unknown, cmd: Command) => podLs(cri, cmd.opts<LsOptions>())));
}
