// `cocoon pod run`: create a pod from a spec file and start its containers, pulling images as needed.
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Command, Option } from "commander";
import type { CriClient } from "../cri/client.js";
import { parsePodSpec, toCriConfigs } from "../cri/pod-spec.js";
import { startPod } from "../lab/pod.js";
import { criCommand, withCri } from "./command.js";
import { callMsOf, COCOON_HANDLERS, DEFAULT_LOG_ROOT, interruptible, PodCliError, processIO, type CommonOptions, type PodIO } from "./common.js";
import { json, podState, renderTable, shortId } from "./output.js";
import { listPods } from "./resolve.js";

// Pulls move whole images; the per-call --timeout is meant for quick calls.
const MIN_PULL_MS = 5 * 60_000;

export interface RunOptions extends CommonOptions {
  handler?: string;
  logRoot?: string;
  pull?: boolean;
}

async function ensureImages(cri: CriClient, images: string[], pull: boolean, callMs: number, io: PodIO, quiet: boolean, signal: AbortSignal): Promise<void> {
  for (const image of [...new Set(images)]) {
    const { image: found } = await cri.imageStatus({ image: { image } }, { timeoutMs: callMs, signal });
    if (found) continue;
    if (!pull) throw new PodCliError(`image ${image} is not on the node (and --no-pull was given)`);
    if (!quiet) io.err(`pulling ${image}…\n`);
    await cri.pullImage({ image: { image } }, { timeoutMs: Math.max(callMs, MIN_PULL_MS), signal });
  }
}

export async function podRun(cri: CriClient, file: string, o: RunOptions, io: PodIO = processIO): Promise<number> {
  const callMs = callMsOf(o);
  const text = file === "-" ? readFileSync(0, "utf8") : readFileSync(file, "utf8");
  const spec = parsePodSpec(text, file === "-" ? "<stdin>" : file);
  const handler = o.handler ?? (spec.runtimeHandler || "cocoon");
  if (!COCOON_HANDLERS.includes(handler)) {
    throw new PodCliError(`runtime handler "${handler}" is not one of Cocoon's (${COCOON_HANDLERS.join(", ")}); cocoon pod only runs pods on Cocoon`);
  }
  const logRoot = resolve(o.logRoot ?? DEFAULT_LOG_ROOT);
  // The CRI accepts a second pod of the same name (the uid differs), but then the name no longer picks a pod.
  const twin = (await listPods(cri, callMs)).find((p) => p.metadata?.name === spec.name && p.metadata?.namespace === spec.namespace);
  if (twin) {
    throw new PodCliError(`a pod ${spec.namespace}/${spec.name} already exists (${shortId(twin.id)}, ${podState(twin.state)}); remove it first: cocoon pod rm ${shortId(twin.id)}`);
  }
  const intr = interruptible();
  try {
    await ensureImages(cri, spec.containers.map((c) => c.image), o.pull !== false, callMs, io, !!o.json, intr.signal);
    const criPod = toCriConfigs(spec, { logRoot });
    criPod.runtimeHandler = handler;
    const pod = await startPod(cri, criPod, { timeoutMs: callMs, signal: intr.signal });
    const namespace = spec.namespace;
    if (o.json) {
      json(io, { id: pod.id, name: pod.name, namespace, handler: pod.handler, ip: pod.ip, logDirectory: criPod.sandbox.logDirectory, containers: pod.containers });
    } else {
      io.out(`pod ${pod.id}\n`);
      io.out(`  name ${namespace}/${pod.name}, handler ${pod.handler}, ${pod.ip ? `IP ${pod.ip}` : "host network"}\n`);
      const rows = pod.containers.map((c) => [`  container ${c.name}`, c.id]);
      for (const line of renderTable(["", ""], rows).slice(1)) io.out(`${line}\n`);
      io.out(`  logs under ${criPod.sandbox.logDirectory}\n`);
    }
    return 0;
  } catch (err) {
    if (intr.signal.aborted) throw intr.signal.reason;
    throw err;
  } finally {
    intr.done();
  }
}

export function runCommand(): Command {
  return criCommand("run", "create a pod from a spec file (YAML or JSON, see examples/pod.yaml; - reads stdin) and start its containers")
    .argument("<spec>", "pod spec file")
    .addOption(new Option("--handler <name>", "runtime handler (default: the spec's runtimeHandler, else cocoon)").choices(COCOON_HANDLERS))
    .option("--log-root <dir>", "where the pod's log directory goes", DEFAULT_LOG_ROOT)
    .option("--no-pull", "fail instead of pulling images that are not on the node")
    .option("--json", "print the ids as JSON")
    .action(withCri((cri, file: string, _o: unknown, cmd: Command) => podRun(cri, file, cmd.opts<RunOptions>())));
}
