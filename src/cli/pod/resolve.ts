// Which pod or container the user means: by id, id prefix, name, namespace/name or <pod>/<container>.
import type { CriClient } from "../cri/client.js";
import type { Container, PodSandbox } from "../../gen/cri/runtime/v1/api_pb.js";
import { PodCliError } from "./common.js";
import { containerState, podLabel, podState, shortId } from "./output.js";

export interface RefCandidate<T> {
  item: T;
  id: string;
  /** Names the user may use instead of the id. */
  names: string[];
  /** How to show it when the reference is ambiguous. */
  describe: string;
}

/**
 * Finds the one item `ref` means: a full id first; else a unique match among id prefixes and names
 * together, so that a name that is also some other item's id prefix is an ambiguity, not a guess.
 */
export function resolveRef<T>(ref: string, kind: string, candidates: RefCandidate<T>[], hint = ""): T {
  if (ref === "") throw new PodCliError(`empty ${kind} reference`);
  const exact = candidates.find((c) => c.id === ref);
  if (exact) return exact.item;
  const matches = candidates.filter((c) => c.id.startsWith(ref) || c.names.includes(ref));
  if (matches.length === 1) return matches[0]!.item;
  if (matches.length === 0) throw new PodCliError(`no ${kind} matches "${ref}"`);
  const shown = matches.slice(0, 10).map((c) => `\n  ${c.describe}`).join("");
  const more = matches.length > 10 ? `\n  … and ${matches.length - 10} more` : "";
  throw new PodCliError(`"${ref}" is ambiguous: it matches ${matches.length} ${kind}s:${shown}${more}${hint ? `\n${hint}` : ""}`);
}

const POD_HINT = "give more of the id, or namespace/name";

export function podCandidates(pods: PodSandbox[]): RefCandidate<PodSandbox>[] {
  return pods.map((p) => ({
    item: p,
    id: p.id,
    names: p.metadata ? [p.metadata.name, `${p.metadata.namespace}/${p.metadata.name}`] : [],
    describe: `${shortId(p.id)}  ${podLabel(p)}  ${podState(p.state)}  ${p.runtimeHandler || "(default handler)"}`,
  }));
}

/** One pod among `candidates` (from `podCandidates`). */
export function pickPod(ref: string, candidates: RefCandidate<PodSandbox>[]): PodSandbox {
  return resolveRef(ref, "pod", candidates, POD_HINT);
}

export async function listPods(cri: CriClient, callMs: number): Promise<PodSandbox[]> {
  return (await cri.listPodSandbox({}, { timeoutMs: callMs })).items;
}

export async function resolvePod(cri: CriClient, ref: string, callMs: number): Promise<PodSandbox> {
  return pickPod(ref, podCandidates(await listPods(cri, callMs)));
}

/**
 * A container by id (prefix) or name, or as `<pod>/<container>` where the pod part is anything `resolvePod`
 * accepts (so `default/web/nginx` works too).
 */
export async function resolveContainer(cri: CriClient, ref: string, callMs: number): Promise<{ container: Container; pod: PodSandbox | undefined }> {
  const [{ containers }, pods] = await Promise.all([cri.listContainers({}, { timeoutMs: callMs }), listPods(cri, callMs)]);
  const podById = new Map(pods.map((p) => [p.id, p]));
  let pool = containers;
  let name = ref;
  const slash = ref.lastIndexOf("/");
  if (slash > 0) {
    const pod = pickPod(ref.slice(0, slash), podCandidates(pods));
    pool = containers.filter((c) => c.podSandboxId === pod.id);
    name = ref.slice(slash + 1);
  }
  const container = resolveRef(
    name,
    "container",
    pool.map((c) => {
      const pod = podById.get(c.podSandboxId);
      return {
        item: c,
        id: c.id,
        names: c.metadata ? [c.metadata.name] : [],
        describe: `${shortId(c.id)}  ${c.metadata?.name ?? "?"}  ${containerState(c.state)}  in pod ${pod ? `${podLabel(pod)} ` : ""}(${shortId(c.podSandboxId)})`,
      };
    }),
    "give more of the id, or <pod>/<container>",
  );
  return { container, pod: podById.get(container.podSandboxId) };
}
