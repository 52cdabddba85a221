// `cocoon pod`: a small pod workflow over the CRI of a containerd that is already running (the node's own),
// so that a node can be checked without kubelet: run a pod from a spec file, list, exec, read logs and stats,
// stop and remove. It sends what kubelet would send; the pods it makes are ordinary CRI pods.
import { openSync, readFileSync, readSync, closeSync, fstatSync } from "node:fs";
import net from "node:net";
import { isAbsolute, resolve } from "node:path";
import { StringDecoder } from "node:string_decoder";
import * as grpc from "@grpc/grpc-js";
import { Command, InvalidArgumentError, Option } from "commander";
import { CriClient, CriError } from "./cri/client.js";
import { CriLogParser, type LogLine, type LogStream } from "./cri/logs.js";
import { openPortForward } from "./cri/portforward.js";
import { parsePodSpec, toCriConfigs } from "./cri/pod-spec.js";
import { HANDLERS } from "./lab/lab.js";
import { delay, startPod } from "./lab/pod.js";
import { ContainerState, PodSandboxState, type Container, type ContainerStats, type PodSandbox } from "../gen/cri/runtime/v1/api_pb.js";

export const DEFAULT_ENDPOINT = "/run/containerd/containerd.sock";
export const DEFAULT_LOG_ROOT = "/var/log/cocoon-pods";
/** The runtime handlers `cocoon install` registers; `rm --all` only touches their pods. */
export const COCOON_HANDLERS: readonly string[] = Object.keys(HANDLERS);

const DEFAULT_CALL_SECONDS = 30;
const DEFAULT_GRACE_SECONDS = 10;
// Pulls move whole images; the per-call --timeout is meant for quick calls.
const MIN_PULL_MS = 5 * 60_000;
const POD_NAME_LABEL = "io.kubernetes.pod.name";

/** An error meant for the user as is; `exitCode` is the process's exit code. */
export class PodCliError extends Error {
  override readonly name = "PodCliError";
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** Where the command's output goes (tests pass their own). */
export interface PodIO {
  out(text: string | Uint8Array): void;
  err(text: string | Uint8Array): void;
}

const processIO: PodIO = {
  out: (t) => void process.stdout.write(t),
  err: (t) => void process.stderr.write(t),
};

// ---------------------------------------------------------------------------------------------------------
// Endpoint, ids and names

/** The socket path of `--endpoint` / $CONTAINER_RUNTIME_ENDPOINT: a path, optionally as `unix://<path>`. */
export function endpointPath(value: string | undefined): string {
  const v = (value ?? "").trim() || DEFAULT_ENDPOINT;
  const bare = v.startsWith("unix://") ? v.slice("unix://".length) : v;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(bare)) throw new PodCliError(`unsupported CRI endpoint "${v}": only unix sockets (a path or unix:///path)`);
  if (bare === "") throw new PodCliError(`empty CRI endpoint "${v}"`);
  return isAbsolute(bare) ? bare : resolve(bare);
}

export const shortId = (id: string): string => id.slice(0, 12);

const podState = (s: PodSandboxState): string => (s === PodSandboxState.SANDBOX_READY ? "Ready" : "NotReady");

const CONTAINER_STATES: Record<ContainerState, string> = {
  [ContainerState.CONTAINER_CREATED]: "Created",
  [ContainerState.CONTAINER_RUNNING]: "Running",
  [ContainerState.CONTAINER_EXITED]: "Exited",
  [ContainerState.CONTAINER_UNKNOWN]: "Unknown",
};
const containerState = (s: ContainerState): string => CONTAINER_STATES[s] ?? String(s);

const podLabel = (p: PodSandbox): string => `${p.metadata?.namespace ?? "?"}/${p.metadata?.name ?? "?"}`;

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

function podCandidates(pods: PodSandbox[]): RefCandidate<PodSandbox>[] {
  return pods.map((p) => ({
    item: p,
    id: p.id,
    names: p.metadata ? [p.metadata.name, `${p.metadata.namespace}/${p.metadata.name}`] : [],
    describe: `${shortId(p.id)}  ${podLabel(p)}  ${podState(p.state)}  ${p.runtimeHandler || "(default handler)"}`,
  }));
}

async function listPods(cri: CriClient, callMs: number): Promise<PodSandbox[]> {
  return (await cri.listPodSandbox({}, { timeoutMs: callMs })).items;
}

export async function resolvePod(cri: CriClient, ref: string, callMs: number): Promise<PodSandbox> {
  return resolveRef(ref, "pod", podCandidates(await listPods(cri, callMs)), "give more of the id, or namespace/name");
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
    const pod = resolveRef(ref.slice(0, slash), "pod", podCandidates(pods), "give more of the id, or namespace/name");
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

// ---------------------------------------------------------------------------------------------------------
// Output helpers

/** Columns separated by two spaces; the last column is not padded. */
export function renderTable(header: string[], rows: string[][], indent = ""): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  return [header, ...rows].map((r) => (indent + r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")).trimEnd());
}

/** "3s ago", "5m ago", "2h ago", "4d ago" from a CRI timestamp (ns since the epoch). */
export function age(ns: bigint, nowMs = Date.now()): string {
  const s = Math.max(0, Math.floor((nowMs - Number(ns / 1_000_000n)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86_400)}d ago`;
}

const isoTime = (ns: bigint): string | null => (ns > 0n ? new Date(Number(ns / 1_000_000n)).toISOString() : null);

export function humanBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v}B` : `${v.toFixed(1)}${units[u]}`;
}

const json = (io: PodIO, v: unknown) => io.out(`${JSON.stringify(v, null, 2)}\n`);

// ---------------------------------------------------------------------------------------------------------
// Subcommands. Each returns the process exit code.

interface CommonOptions {
  endpoint?: string;
  timeout?: number;
  json?: boolean;
}

const callMsOf = (o: CommonOptions) => (o.timeout ?? DEFAULT_CALL_SECONDS) * 1000;

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

/** Aborts on Ctrl-C/SIGTERM, so that a half-started pod is taken down again instead of left behind. */
function interruptible(): { signal: AbortSignal; done(): void } {
  const ac = new AbortController();
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const on = (sig: NodeJS.Signals) => ac.abort(new PodCliError(`interrupted by ${sig}`, 130));
  for (const s of signals) process.on(s, on);
  return { signal: ac.signal, done: () => signals.forEach((s) => process.removeListener(s, on)) };
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

export interface ExecOptions extends CommonOptions {}

/** Exit code when the command could not be run at all (the CRI call failed), as `docker exec` uses it. */
export const EXEC_FAILED = 126;

export async function podExec(cri: CriClient, ref: string, cmd: string[], o: ExecOptions, io: PodIO = processIO): Promise<number> {
  if (cmd.length === 0) throw new PodCliError("no command given: cocoon pod exec <container> -- <command> [args…]");
  const { container } = await resolveContainer(cri, ref, DEFAULT_CALL_SECONDS * 1000);
  let r;
  try {
    // Without --timeout the command may run as long as it likes: no CRI timeout and no call deadline.
    const secs = o.timeout ?? 0;
    r = await cri.execSync({ containerId: container.id, cmd, timeout: BigInt(secs) }, { timeoutMs: secs > 0 ? secs * 1000 + 10_000 : 0 });
  } catch (err) {
    throw new PodCliError(`exec in ${container.metadata?.name ?? ""} (${shortId(container.id)}) failed: ${describeError(err)}`, EXEC_FAILED);
  }
  if (r.stdout.length) io.out(r.stdout);
  if (r.stderr.length) io.err(r.stderr);
  return r.exitCode;
}

export interface LogsOptions extends CommonOptions {
  stream?: LogStream;
  tail?: number;
  follow?: boolean;
  timestamps?: boolean;
}

/** Reads a growing file from `offset`; returns the new text and the new offset. */
function readFrom(path: string, offset: number, decoder: StringDecoder): { text: string; offset: number } {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    // A file that shrank was rotated or truncated: start over.
    if (size < offset) offset = 0;
    const buf = Buffer.alloc(Math.max(0, size - offset));
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    return { text: decoder.write(buf.subarray(0, got)), offset: offset + got };
  } finally {
    closeSync(fd);
  }
}

export async function podLogs(cri: CriClient, ref: string, o: LogsOptions, io: PodIO = processIO): Promise<number> {
  const callMs = callMsOf(o);
  const { container } = await resolveContainer(cri, ref, callMs);
  const { status } = await cri.containerStatus({ containerId: container.id }, { timeoutMs: callMs });
  const logPath = status?.logPath ?? "";
  const name = container.metadata?.name ?? shortId(container.id);
  if (!logPath) throw new PodCliError(`container ${name} has no log file (it was created without a log path)`);
  const emit = (lines: LogLine[]) => {
    let out = "";
    let err = "";
    for (const l of lines) {
      if (o.stream && l.stream !== o.stream) continue;
      const line = `${o.timestamps ? `${l.timestamp} ` : ""}${l.text}\n`;
      if (l.stream === "stderr") err += line;
      else out += line;
    }
    if (out) io.out(out);
    if (err) io.err(err);
  };
  const parser = new CriLogParser();
  const decoder = new StringDecoder("utf8");
  let pos: { text: string; offset: number };
  try {
    pos = readFrom(logPath, 0, decoder);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      if (!o.follow) throw new PodCliError(`the log file of container ${name} does not exist (yet): ${logPath}`);
      pos = { text: "", offset: 0 };
    } else if (code === "EACCES") {
      throw new PodCliError(`cannot read ${logPath}: permission denied (container logs are root's; run as root)`);
    } else {
      throw err;
    }
  }
  let first = parser.push(pos.text);
  if (!o.follow) first = [...first, ...parser.end()];
  if (o.tail !== undefined) {
    const wanted = first.filter((l) => !o.stream || l.stream === o.stream);
    first = o.tail === 0 ? [] : wanted.slice(-o.tail);
  }
  emit(first);
  if (!o.follow) return 0;
  // Following: poll the file until the container has exited and everything it wrote is printed.
  let offset = pos.offset;
  for (let lastCheck = 0; ; ) {
    await delay(250);
    let exited = false;
    if (Date.now() - lastCheck > 1000) {
      lastCheck = Date.now();
      const st = await cri.containerStatus({ containerId: container.id }, { timeoutMs: callMs }).catch((err) => {
        if (err instanceof CriError && err.code === grpc.status.NOT_FOUND) return undefined;
        throw err;
      });
      exited = !st?.status || st.status.state === ContainerState.CONTAINER_EXITED;
    }
    try {
      const next = readFrom(logPath, offset, decoder);
      offset = next.offset;
      emit(parser.push(next.text));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    if (exited) {
      emit(parser.end());
      return 0;
    }
  }
}

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
/** `[LOCAL:]REMOTE` port pairs; LOCAL 0 picks a free port. */
export function parsePortPairs(specs: string[]): Array<{ local: number; remote: number }> {
  if (specs.length === 0) throw new PodCliError("no port given: cocoon pod port-forward <pod> [LOCAL:]REMOTE…");
  return specs.map((spec) => {
    const m = /^(?:(\d+):)?(\d+)$/.exec(spec);
    const remote = Number(m?.[2]);
    const local = m?.[1] === undefined ? remote : Number(m[1]);
    if (!m || remote < 1 || remote > 65535 || local > 65535) throw new PodCliError(`"${spec}" is not [LOCAL:]REMOTE with TCP ports`);
    return { local, remote };
  });
}

/**
 * Listens on 127.0.0.1 and relays each connection through CRI PortForward (one WebSocket to the CRI
 * streaming server per connection) until interrupted, as `kubectl port-forward` does through kubelet.
 */
export async function podPortForward(cri: CriClient, ref: string, specs: string[], o: CommonOptions, io: PodIO = processIO): Promise<number> {
  const pairs = parsePortPairs(specs);
  const callMs = callMsOf(o);
  const pod = await resolvePod(cri, ref, callMs);
  const servers: net.Server[] = [];
  const stop = interruptible();
  try {
    for (const { local, remote } of pairs) {
      const server = net.createServer({ pauseOnConnect: true }, (sock) => {
        sock.on("error", () => {});
        void (async () => {
          try {
            const { url } = await cri.portForward({ podSandboxId: pod.id, port: [remote] }, { timeoutMs: callMs });
            const stream = await openPortForward(url, callMs);
            stream.on("error", () => sock.destroy());
            sock.pipe(stream).pipe(sock);
            sock.resume();
            sock.once("close", () => stream.destroy());
            const failure = await stream.failure;
            if (failure) io.err(`port ${remote}: ${failure}\n`);
          } catch (err) {
            io.err(`port ${remote}: ${describeError(err)}\n`);
            sock.destroy();
          }
        })();
      });
      await new Promise<void>((resolve, reject) => {
        server.once("error", (err) => reject(new PodCliError(`cannot listen on 127.0.0.1:${local}: ${err.message}`)));
        server.listen(local, "127.0.0.1", resolve);
      });
      servers.push(server);
      io.out(`Forwarding from 127.0.0.1:${(server.address() as net.AddressInfo).port} -> ${remote}\n`);
    }
    await new Promise((resolve) => stop.signal.addEventListener("abort", resolve, { once: true }));
    return 0;
  } finally {
    stop.done();
    for (const s of servers) s.close();
  }
}

async function selectPods(cri: CriClient, refs: string[], o: TakeDownOptions, verb: string, callMs: number): Promise<{ pods: PodSandbox[]; skipped: PodSandbox[] }> {
  const all = !!(o.all || o.forceAll);
  if (all && refs.length) throw new PodCliError(`give pods or --all, not both`);
  if (!all && refs.length === 0) throw new PodCliError(`which pod? give ids or names, or --all for every pod on a Cocoon handler`);
  const listed = await listPods(cri, callMs);
  const ours = (p: PodSandbox) => COCOON_HANDLERS.includes(p.runtimeHandler);
  if (all) return { pods: o.forceAll ? listed : listed.filter(ours), skipped: o.forceAll ? [] : listed.filter((p) => !ours(p)) };
  const candidates = podCandidates(listed);
  const pods = [...new Map(refs.map((r) => resolveRef(r, "pod", candidates, "give more of the id, or namespace/name")).map((p) => [p.id, p])).values()];
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

// ---------------------------------------------------------------------------------------------------------
// Command-line wiring

/** Error text with a hint for the failures a user can do something about. */
function describeError(err: unknown): string {
  if (err instanceof CriError) {
    if (err.code === grpc.status.UNIMPLEMENTED) return `${err.message} (is containerd's CRI plugin enabled? check disabled_plugins in its config)`;
    if (err.code === grpc.status.UNAVAILABLE) return `${err.message} (is containerd running?)`;
    if (err.code === grpc.status.DEADLINE_EXCEEDED) return `${err.message} (raise --timeout?)`;
    return err.message;
  }
  if ((err as NodeJS.ErrnoException).code === "ENOENT" && (err as NodeJS.ErrnoException).path) return `no such file: ${(err as NodeJS.ErrnoException).path}`;
  return (err as Error).message ?? String(err);
}

function seconds(allowZero: boolean) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || (!allowZero && n === 0)) throw new InvalidArgumentError(`expected a whole number of seconds${allowZero ? "" : " > 0"}, got "${v}"`);
    return n;
  };
}

function count(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected a whole number >= 0, got "${v}"`);
  return n;
}

/** A subcommand with --endpoint and --timeout; its action gets a connected client and returns the exit code. */
function criCommand(name: string, description: string, timeoutHelp = `deadline for each CRI call, in seconds (default ${DEFAULT_CALL_SECONDS})`): Command {
  return new Command(name)
    .description(description)
    .addOption(
      new Option("--endpoint <socket>", "the CRI endpoint: containerd's unix socket, as a path or unix:///path")
        .env("CONTAINER_RUNTIME_ENDPOINT")
        .default(DEFAULT_ENDPOINT),
    )
    .option("--timeout <seconds>", timeoutHelp, seconds(false));
}

function withCri<A extends unknown[]>(fn: (cri: CriClient, ...args: A) => Promise<number>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    // A closed stdout (`cocoon pod ls | head`) ends the output, not the command with a stack trace.
    process.stdout.on("error", () => {});
    const cmd = args[args.length - 1] as Command;
    const o = cmd.opts<CommonOptions>();
    let cri: CriClient | undefined;
    try {
      cri = await CriClient.connect(endpointPath(o.endpoint), { timeoutMs: 5_000, defaultTimeoutMs: callMsOf(o) });
      process.exitCode = await fn(cri, ...args);
    } catch (err) {
      process.stderr.write(`cocoon pod ${cmd.name()}: ${describeError(err)}\n`);
      process.exitCode = err instanceof PodCliError ? err.exitCode : 1;
    } finally {
      cri?.close();
    }
  };
}

export function podCommand(): Command {
  const pod = new Command("pod").description(
    "run and inspect pods through an existing containerd's CRI (as kubelet would), to check a node without kubelet",
  );

  pod.addCommand(
    criCommand("run", "create a pod from a spec file (YAML or JSON, see examples/pod.yaml; - reads stdin) and start its containers")
      .argument("<spec>", "pod spec file")
      .addOption(new Option("--handler <name>", "runtime handler (default: the spec's runtimeHandler, else cocoon)").choices(COCOON_HANDLERS))
      .option("--log-root <dir>", "where the pod's log directory goes", DEFAULT_LOG_ROOT)
      .option("--no-pull", "fail instead of pulling images that are not on the node")
      .option("--json", "print the ids as JSON")
      .action(withCri((cri, file: string, _o: unknown, cmd: Command) => podRun(cri, file, cmd.opts<RunOptions>()))),
  );

  pod.addCommand(
    criCommand("ls", "list pods (newest first), with -c their containers too")
      .alias("list")
      .option("-c, --containers", "show each pod's containers")
      .option("--json", "print JSON (full ids, timestamps)")
      .action(withCri((cri, _o: unknown, cmd: Command) => podLs(cri, cmd.opts<LsOptions>()))),
  );

  pod.addCommand(
    criCommand("exec", "run a command in a container (ExecSync) and exit with its exit code", "seconds the command may run (default: no limit)")
      .argument("<container>", "container id (prefix), name, or <pod>/<container>")
      .argument("[command...]", "the command, after --")
      .usage("[options] <container> -- <command> [args...]")
      .showHelpAfterError("(the command goes after --: cocoon pod exec <container> -- ls -l)")
      .addHelpText("after", `\nExit code: the command's; ${EXEC_FAILED} when it could not be run; 1 for other errors.`)
      .action(withCri((cri, ref: string, command: string[], _o: unknown, cmd: Command) => podExec(cri, ref, command, cmd.opts<ExecOptions>()))),
  );

  pod.addCommand(
    criCommand("logs", "print a container's log (from its CRI log file); stderr lines go to stderr")
      .argument("<container>", "container id (prefix), name, or <pod>/<container>")
      .addOption(new Option("--stream <stream>", "only this stream").choices(["stdout", "stderr"]))
      .option("--tail <lines>", "only the last lines", count)
      .option("-f, --follow", "keep printing new lines until the container exits")
      .option("-t, --timestamps", "prefix each line with its time")
      .action(withCri((cri, ref: string, _o: unknown, cmd: Command) => podLogs(cri, ref, cmd.opts<LogsOptions>()))),
  );

  pod.addCommand(
    criCommand("stats", "CPU (cores in use over one second, and CPU time) and memory working set per container")
      .argument("[container]", "only this container: id (prefix), name, or <pod>/<container>")
      .option("--pod <pod>", "only this pod's containers")
      .option("--no-sample", "one sample only: no cores figure, no one-second wait")
      .option("--json", "print JSON (bytes and ns)")
      .action(withCri((cri, ref: string | undefined, _o: unknown, cmd: Command) => podStats(cri, ref, cmd.opts<StatsOptions>()))),
  );

  pod.addCommand(
    criCommand("port-forward", "forward local ports on 127.0.0.1 to a pod's ports (CRI PortForward, as kubectl port-forward) until Ctrl-C")
      .argument("<pod>", "pod id (prefix), name or namespace/name")
      .argument("<ports...>", "[LOCAL:]REMOTE, e.g. 8080:80 (LOCAL 0: any free port)")
      .action(withCri((cri, ref: string, ports: string[], _o: unknown, cmd: Command) => podPortForward(cri, ref, ports, cmd.opts<CommonOptions>()))),
  );

  const takeDownCommand = (name: "stop" | "rm", remove: boolean, what: string) =>
    criCommand(name, what)
      .argument("[pods...]", "pod ids (prefixes), names or namespace/names")
      .option("--all", `every pod on a Cocoon handler (${COCOON_HANDLERS.join(", ")})`)
      .option("--force-all", "like --all, but every pod of every handler")
      .option("--force", "act on named pods even when another handler runs them")
      .option("--grace <seconds>", `how long containers get to exit after SIGTERM before SIGKILL (default ${DEFAULT_GRACE_SECONDS})`, seconds(true))
      .option("--json", "print the result as JSON")
      .action(withCri((cri, refs: string[], _o: unknown, cmd: Command) => podTakeDown(cri, refs, remove, cmd.opts<TakeDownOptions>())));
  pod.addCommand(takeDownCommand("stop", false, "stop pods: their containers get SIGTERM, then SIGKILL after --grace; the network is torn down"));
  pod.addCommand(takeDownCommand("rm", true, "stop and remove pods: containers first, then the sandbox").alias("remove"));

  return pod;
}
