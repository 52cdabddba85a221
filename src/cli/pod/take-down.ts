// `cocoon pod stop` and `cocoon pod rm`: one verb is the other without the removal, so they share all of
// their logic here (which pods, the kubelet order of stopping, the report).
import * as grpc from "@grpc/grpc-js";
import type { Command } from "commander";
import { CriError, type CriClient } from "../cri/client.js";
import { ContainerState, type PodSandbox } from "../../gen/cri/runtime/v1/api_pb.js";
import { criCommand, seconds, withCri } from "./command.js";
import { callMsOf, COCOON_HANDLERS, DEFAULT_GRACE_SECONDS, describeError, PodCliError, processIO, type CommonOptions, type PodIO } from "./common.js";
import { json, podLabel, shortId } from "./output.js";
import { listPods, pickPod, podCandidates } from "./resolve.js";

export interface TakeDownOptions extends CommonOptions {
  all?: boolean;
  forceAll?: boolean;
  force?: boolean;
  grace?: number;
}

const ignoreNotFound = (err: unknown) => {
  if (!(err instanceof CriError && err.code === grpc.status.NOT_FOUND)) throw err;
};

/** The pods named, or with --all every pod on a Cocoon handler (--force-all: every pod at all). */
async function selectPods(cri: CriClient, refs: string[], o: TakeDownOptions, verb: string, callMs: number): Promise<{ pods: PodSandbox[]; skipped: PodSandbox[] }> {
  const all = !!(o.all || o.forceAll);
  if (all && refs.length) throw new PodCliError(`give pods or --all, not both`);
  if (!all && refs.length === 0) throw new PodCliError(`which pod? give ids or names, or --all for every pod on a Cocoon handler`);
  const listed = await listPods(cri, callMs);
  const ours = (p: PodSandbox) => COCOON_HANDLERS.includes(p.runtimeHandler);
  if (all) return { pods: o.forceAll ? listed : listed.filter(ours), skipped: o.forceAll ? [] : listed.filter((p) => !ours(p)) };
  const candidates = podCandidates(listed);
  const pods = [...new Map(refs.map((r) => pickPod(r, candidates)).map((p) => [p.id, p])).values()];
  const foreign = pods.filter((p) => !ours(p));
  if (foreign.length && !o.force) {
    const which = foreign.map((p) => `${shortId(p.id)} (${podLabel(p)}, handler ${p.runtimeHandler || "(default)"})`).join(", ");
    throw new PodCliError(`not ${verb === "stop" ? "stopping" : "removing"} ${which}: not a Cocoon handler's pod (pass --force if you mean it)`);
  }
  return { pods, skipped: [] };
}

/** Stops the containers gracefully (kubelet's order), then the sandbox; with `remove`, removes them all. */
async function takeDown(cri: CriClient, pod: PodSandbox, remove: boolean, graceS: number, callMs: number): Promise<number> {
  const { containers } = await cri.listContainers({ filter: { podSandboxId: pod.id } }, { timeoutMs: callMs });
  await Promise.all(
    containers
      .filter((c) => c.state === ContainerState.CONTAINER_RUNNING || c.state === ContainerState.CONTAINER_UNKNOWN)
      .map((c) => cri.stopContainer({ containerId: c.id, timeout: BigInt(graceS) }, { timeoutMs: graceS * 1000 + callMs }).catch(ignoreNotFound)),
  );
  await cri.stopPodSandbox({ podSandboxId: pod.id }, { timeoutMs: callMs }).catch(ignoreNotFound);
  if (!remove) return containers.length;
  for (const c of containers) await cri.removeContainer({ containerId: c.id }, { timeoutMs: callMs }).catch(ignoreNotFound);
  await cri.removePodSandbox({ podSandboxId: pod.id }, { timeoutMs: callMs }).catch(ignoreNotFound);
  return containers.length;
}

export async function podTakeDown(cri: CriClient, refs: string[], remove: boolean, o: TakeDownOptions, io: PodIO = processIO): Promise<number> {
  const callMs = callMsOf(o);
  const verb = remove ? "rm" : "stop";
  const { pods, skipped } = await selectPods(cri, refs, o, verb, callMs);
  const grace = o.grace ?? DEFAULT_GRACE_SECONDS;
  const results = await Promise.all(
    pods.map(async (p) => {
      try {
        const n = await takeDown(cri, p, remove, grace, callMs);
        return { pod: p, containers: n, error: "" };
      } catch (err) {
        return { pod: p, containers: 0, error: describeError(err) };
      }
    }),
  );
  let code = 0;
  for (const r of results) {
    const what = `pod ${shortId(r.pod.id)} (${podLabel(r.pod)})`;
    if (r.error) {
      io.err(`cannot ${verb === "rm" ? "remove" : "stop"} ${what}: ${r.error}\n`);
      code = 1;
    } else if (!o.json) {
      io.out(`${remove ? "removed" : "stopped"} ${what}${remove ? ` and its ${r.containers} container${r.containers === 1 ? "" : "s"}` : ""}\n`);
    }
  }
  if (o.json) {
    json(io, {
      [remove ? "removed" : "stopped"]: results.filter((r) => !r.error).map((r) => r.pod.id),
      failed: results.filter((r) => r.error).map((r) => ({ id: r.pod.id, error: r.error })),
      skipped: skipped.map((p) => p.id),
    });
  } else {
    if (pods.length === 0) io.out(`no pods on ${COCOON_HANDLERS.join(" or ")}\n`);
    if (skipped.length) {
      const handlers = [...new Set(skipped.map((p) => p.runtimeHandler || "(default)"))].join(", ");
      io.out(`left ${skipped.length} pod${skipped.length === 1 ? "" : "s"} of other handlers alone (${handlers}); --force-all includes them\n`);
    }
  }
  return code;
}


function takeDownCommand(name: "stop" | "rm", remove: boolean, what: string): Command {
  return criCommand(name, what)
    .argument("[pods...]", "pod ids (prefixes), names or namespace/names")
    .option("--all", `every pod on a Cocoon handler (${COCOON_HANDLERS.join(", ")})`)
    .option("--force-all", "like --all, but every pod of every handler")
    .option("--force", "act on named pods even when another handler runs them")
    .option("--grace <seconds>", `how long containers get to exit after SIGTERM before SIGKILL (default ${DEFAULT_GRACE_SECONDS})`, seconds(true))
    .option("--json", "print the result as JSON")
    .action(withCri((cri, refs: string[], _o: unknown, cmd: Command) => podTakeDown(cri, refs, remove, cmd.opts<TakeDownOptions>())));
}

export const stopCommand = (): Command =>
  takeDownCommand("stop", false, "stop pods: their containers get SIGTERM, then SIGKILL after --grace; the network is torn down");

export const rmCommand = (): Command => takeDownCommand("rm", true, "stop and remove pods: containers first, then the sandbox").alias("remove");
