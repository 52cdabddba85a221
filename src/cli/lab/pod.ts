// Running a pod through the CRI the way kubelet does (RunPodSandbox, then CreateContainer/StartContainer per
// container), waiting for its containers and reading their logs back; and taking it down again.
import { readFileSync } from "node:fs";
import { CriError, type CriClient } from "../cri/client.js";
import { parseCriLog, type LogLine } from "../cri/logs.js";
import type { CriPod } from "../cri/pod-spec.js";
import { ContainerState, type ContainerStatus } from "../../gen/cri/runtime/v1/api_pb.js";

export interface RunningContainer {
  name: string;
  id: string;
  logPath: string;
}

export interface RunningPod {
  id: string;
  name: string;
  handler: string;
  /** The pod's address on the CNI network ("" with host networking). */
  ip: string;
  containers: RunningContainer[];
}

export interface PodCallOptions {
  signal?: AbortSignal;
  /** Per CRI call; default 60 s. */
  timeoutMs?: number;
}

const GRPC_NOT_FOUND = 5;

/** Waits `ms`, or rejects as soon as `signal` aborts. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Runs the sandbox and starts every container in order. When a step fails the pod is taken down again
 * before the error is thrown, so that the caller never has to clean up a half-started pod.
 */
export async function startPod(cri: CriClient, pod: CriPod, opts: PodCallOptions = {}): Promise<RunningPod> {
  const call = { timeoutMs: opts.timeoutMs ?? 60_000, ...(opts.signal ? { signal: opts.signal } : {}) };
  const { podSandboxId } = await cri.runPodSandbox({ config: pod.sandbox, runtimeHandler: pod.runtimeHandler }, call);
  try {
    const status = await cri.podSandboxStatus({ podSandboxId }, call);
    const running: RunningPod = {
      id: podSandboxId,
      name: pod.sandbox.metadata?.name ?? "",
      handler: status.status?.runtimeHandler || pod.runtimeHandler,
      ip: status.status?.network?.ip ?? "",
      containers: [],
    };
    for (const config of pod.containers) {
      const { containerId } = await cri.createContainer({ podSandboxId, config, sandboxConfig: pod.sandbox }, call);
      const name = config.metadata?.name ?? containerId;
      // The CRI plugin writes the log at <sandbox log_directory>/<container log_path>.
      running.containers.push({ name, id: containerId, logPath: `${pod.sandbox.logDirectory}/${config.logPath}` });
      await cri.startContainer({ containerId }, call);
    }
    return running;
  } catch (err) {
    await removePod(cri, podSandboxId).catch(() => {});
    throw err;
  }
}

/** waitForExit gave up; the container is still in `state`. */
export class ExitTimeoutError extends Error {
  override readonly name = "ExitTimeoutError";
  constructor(
    readonly containerId: string,
    readonly state: string,
    readonly timeoutMs: number,
  ) {
    super(`container ${containerId} still ${state} after ${timeoutMs} ms`);
  }
}

/** Polls ContainerStatus until the container has exited; rejects after `timeoutMs` or on abort. */
export async function waitForExit(cri: CriClient, containerId: string, timeoutMs: number, signal?: AbortSignal): Promise<ContainerStatus> {
  const deadline = Date.now() + timeoutMs;
  for (let pause = 50; ; pause = Math.min(pause * 2, 500)) {
    const { status } = await cri.containerStatus({ containerId }, { timeoutMs: 10_000, ...(signal ? { signal } : {}) });
    if (status && status.state === ContainerState.CONTAINER_EXITED) return status;
    if (Date.now() >= deadline) throw new ExitTimeoutError(containerId, status ? (ContainerState[status.state] ?? String(status.state)) : "unknown", timeoutMs);
    await delay(pause, signal);
  }
}

/** The log lines of a container so far ([] when it wrote nothing yet). */
export function readContainerLog(logPath: string): LogLine[] {
  let text: string;
  try {
    text = readFileSync(logPath, "utf8");
  } catch {
    return [];
  }
  return parseCriLog(text).lines;
}

/**
 * Stops (its containers are killed) and removes a pod; a pod that is already gone is fine. Stop runs the
 * CNI DEL and the shim's shutdown, remove deletes the sandbox and its containers' records.
 */
export async function removePod(cri: CriClient, podSandboxId: string, timeoutMs = 60_000): Promise<void> {
  const ignoreGone = (err: unknown) => {
    if (!(err instanceof CriError && err.code === GRPC_NOT_FOUND)) throw err;
  };
  await cri.stopPodSandbox({ podSandboxId }, { timeoutMs }).catch(ignoreGone);
  await cri.removePodSandbox({ podSandboxId }, { timeoutMs }).catch(ignoreGone);
}

/** Removes every pod the CRI knows of; returns the ids it removed and the errors it met. */
export async function removeAllPods(cri: CriClient, timeoutMs = 60_000): Promise<{ removed: string[]; errors: string[] }> {
  const { items } = await cri.listPodSandbox({}, { timeoutMs: 10_000 });
  const removed: string[] = [];
  const errors: string[] = [];
  await Promise.all(
    items.map(async (p) => {
      try {
        await removePod(cri, p.id, timeoutMs);
        removed.push(p.id);
      } catch (err) {
        errors.push(`pod ${p.metadata?.name ?? p.id}: ${(err as Error).message}`);
      }
    }),
  );
  return { removed, errors };
}
