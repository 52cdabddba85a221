// A small pod description for the CLI (YAML or JSON), validated and turned into the CRI messages that
// kubelet would send for an equivalent Kubernetes pod: one PodSandboxConfig and a ContainerConfig per
// container.
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { parse as parseYaml } from "yaml";
import {
  ContainerConfigSchema,
  MountPropagation,
  NamespaceMode,
  PodSandboxConfigSchema,
  type ContainerConfig,
  type LinuxContainerResourcesSchema,
  type PodSandboxConfig,
} from "../../gen/cri/runtime/v1/api_pb.js";

/** Kubernetes' mountPropagation values. */
export type MountPropagationMode = "None" | "HostToContainer" | "Bidirectional";
const PROPAGATIONS: Record<MountPropagationMode, MountPropagation> = {
  None: MountPropagation.PROPAGATION_PRIVATE,
  HostToContainer: MountPropagation.PROPAGATION_HOST_TO_CONTAINER,
  Bidirectional: MountPropagation.PROPAGATION_BIDIRECTIONAL,
};

export interface PodMount {
  hostPath: string;
  containerPath: string;
  readOnly: boolean;
  /** Default None (private). */
  mountPropagation?: MountPropagationMode;
}

export interface PodResources {
  memoryLimitBytes?: number;
  cpuQuota?: number;
  cpuPeriod?: number;
  cpuShares?: number;
}

export interface PodContainer {
  name: string;
  image: string;
  command: string[];
  args: string[];
  /** In declaration order. */
  env: { name: string; value: string }[];
  workingDir: string;
  mounts: PodMount[];
  tty: boolean;
  resources: PodResources;
  annotations: Record<string, string>;
  /** Kubernetes' securityContext.privileged: every capability, every device, no seccomp, writable /sys. */
  privileged: boolean;
  /** Capabilities added to or dropped from the runtime's default set, named as in Kubernetes (`NET_ADMIN`). */
  capabilities: { add: string[]; drop: string[] };
}

export interface PodSpec {
  name: string;
  namespace: string;
  /** A runtime name from containerd's CRI config (RuntimeClass handler); "" = containerd's default. */
  runtimeHandler: string;
  hostNetwork: boolean;
  hostIPC: boolean;
  hostPID: boolean;
  /** One PID namespace for every container of the pod (and its pause process). */
  shareProcessNamespace: boolean;
  /** Namespaced kernel parameters of the pod (Kubernetes' securityContext.sysctls). */
  sysctls: Record<string, string>;
  labels: Record<string, string>;
  /** Pod annotations; the `io.cocoon.*` ones reach the shim (containerd `pod_annotations`). */
  annotations: Record<string, string>;
  containers: PodContainer[];
}

/** Every problem found in a pod spec, each prefixed with its location (`containers[0].image: …`). */
export class PodSpecError extends Error {
  override readonly name = "PodSpecError";
  constructor(
    readonly problems: string[],
    source: string,
  ) {
    super(`invalid pod spec ${source}:\n  ${problems.join("\n  ")}`);
  }
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const ENV_NAME = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;
// Kubernetes spells them without the CAP_ prefix; containerd accepts both, and "ALL".
const CAPABILITY = /^(CAP_)?[A-Z][A-Z_]*$/;

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Collects problems instead of stopping at the first, so one run shows everything to fix. */
class Checker {
  readonly problems: string[] = [];

  fail(at: string, msg: string): void {
    this.problems.push(`${at}: ${msg}`);
  }

  keys(o: Obj, allowed: string[], at: string): void {
    for (const k of Object.keys(o)) {
      if (!allowed.includes(k)) this.fail(at ? `${at}.${k}` : k, `unknown field (allowed: ${allowed.join(", ")})`);
    }
  }

  str(o: Obj, key: string, at: string, required: boolean, fallback = ""): string {
    const v = o[key];
    if (v === undefined || v === null) {
      if (required) this.fail(at, "required");
      return fallback;
    }
    if (typeof v !== "string") {
      this.fail(at, `must be a string, got ${JSON.stringify(v)}`);
      return fallback;
    }
    if (required && v === "") this.fail(at, "must not be empty");
    return v;
  }

  bool(o: Obj, key: string, at: string): boolean {
    const v = o[key];
    if (v === undefined || v === null) return false;
    if (typeof v !== "boolean") {
      this.fail(at, `must be true or false, got ${JSON.stringify(v)}`);
      return false;
    }
    return v;
  }

  strList(o: Obj, key: string, at: string): string[] {
    const v = o[key];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || v.some((s) => typeof s !== "string")) {
      this.fail(at, "must be a list of strings");
      return [];
    }
    return v as string[];
  }

  strMap(o: Obj, key: string, at: string): Record<string, string> {
    const v = o[key];
    if (v === undefined || v === null) return {};
    if (!isObj(v)) {
      this.fail(at, "must be a map of strings");
      return {};
    }
    const out: Record<string, string> = {};
    for (const [k, val] of Object.entries(v)) {
      if (typeof val !== "string") this.fail(`${at}.${k}`, `must be a string, got ${JSON.stringify(val)}`);
      else out[k] = val;
    }
    return out;
  }

  int(o: Obj, key: string, at: string, min: number): number | undefined {
    const v = o[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
      this.fail(at, `must be an integer >= ${min}, got ${JSON.stringify(v)}`);
      return undefined;
    }
    return v;
  }
}

/** `env` is either a map (`{A: "1"}`) or a Kubernetes-style list (`[{name: A, value: "1"}]`). */
function checkEnv(c: Checker, v: unknown, at: string): { name: string; value: string }[] {
  if (v === undefined || v === null) return [];
  const out: { name: string; value: string }[] = [];
  if (Array.isArray(v)) {
    v.forEach((e, i) => {
      const here = `${at}[${i}]`;
      if (!isObj(e)) return c.fail(here, "must be {name, value}");
      c.keys(e, ["name", "value"], here);
      const name = c.str(e, "name", `${here}.name`, true);
      const value = c.str(e, "value", `${here}.value`, false);
      if (name && !ENV_NAME.test(name)) c.fail(`${here}.name`, `invalid variable name "${name}"`);
      out.push({ name, value });
    });
  } else if (isObj(v)) {
    for (const [name, value] of Object.entries(v)) {
      if (!ENV_NAME.test(name)) c.fail(`${at}.${name}`, `invalid variable name "${name}"`);
      // Numbers and booleans are accepted in the map form because YAML makes `PORT: 80` a number.
      if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") out.push({ name, value: String(value) });
      else c.fail(`${at}.${name}`, "must be a string");
    }
  } else {
    c.fail(at, "must be a map or a list of {name, value}");
  }
  return out;
}

function checkMounts(c: Checker, v: unknown, at: string): PodMount[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) {
    c.fail(at, "must be a list");
    return [];
  }
  return v.map((m, i) => {
    const here = `${at}[${i}]`;
    if (!isObj(m)) {
      c.fail(here, "must be {hostPath, containerPath, readOnly?, mountPropagation?}");
      return { hostPath: "", containerPath: "", readOnly: false };
    }
    c.keys(m, ["hostPath", "containerPath", "readOnly", "mountPropagation"], here);
    const hostPath = c.str(m, "hostPath", `${here}.hostPath`, true);
    const containerPath = c.str(m, "containerPath", `${here}.containerPath`, true);
    if (hostPath && !hostPath.startsWith("/")) c.fail(`${here}.hostPath`, "must be an absolute path");
    if (containerPath && !containerPath.startsWith("/")) c.fail(`${here}.containerPath`, "must be an absolute path");
    const out: PodMount = { hostPath, containerPath, readOnly: c.bool(m, "readOnly", `${here}.readOnly`) };
    const propagation = c.str(m, "mountPropagation", `${here}.mountPropagation`, false);
    if (propagation in PROPAGATIONS) out.mountPropagation = propagation as MountPropagationMode;
    else if (propagation) c.fail(`${here}.mountPropagation`, `must be one of ${Object.keys(PROPAGATIONS).join(", ")}`);
    return out;
  });
}

/** Sysctls as a map; numbers are accepted because YAML makes `fs.mqueue.msg_max: 100` a number. */
function checkSysctls(c: Checker, v: unknown, at: string): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (!isObj(v)) {
    c.fail(at, "must be a map of kernel parameter names to values");
    return {};
  }
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(v)) {
    if (!/^[a-z0-9_]+([./][a-z0-9_-]+)+$/i.test(name)) c.fail(`${at}.${name}`, `"${name}" is not a kernel parameter name`);
    else if (typeof value === "string" || typeof value === "number") out[name] = String(value);
    else c.fail(`${at}.${name}`, "must be a string or a number");
  }
  return out;
}

function checkResources(c: Checker, v: unknown, at: string): PodResources {
  if (v === undefined || v === null) return {};
  if (!isObj(v)) {
    c.fail(at, "must be a map");
    return {};
  }
  c.keys(v, ["memoryLimitBytes", "cpuQuota", "cpuPeriod", "cpuShares"], at);
  const r: PodResources = {};
  const mem = c.int(v, "memoryLimitBytes", `${at}.memoryLimitBytes`, 0);
  const quota = c.int(v, "cpuQuota", `${at}.cpuQuota`, 0);
  const period = c.int(v, "cpuPeriod", `${at}.cpuPeriod`, 0);
  const shares = c.int(v, "cpuShares", `${at}.cpuShares`, 0);
  if (mem !== undefined) r.memoryLimitBytes = mem;
  if (quota !== undefined) r.cpuQuota = quota;
  if (period !== undefined) r.cpuPeriod = period;
  if (shares !== undefined) r.cpuShares = shares;
  // The kernel rejects CFS periods outside 1 ms .. 1 s.
  if (period !== undefined && period !== 0 && (period < 1000 || period > 1_000_000)) c.fail(`${at}.cpuPeriod`, "must be between 1000 and 1000000 (µs)");
  if (quota !== undefined && quota > 0 && quota < 1000) c.fail(`${at}.cpuQuota`, "must be at least 1000 (µs)");
  return r;
}

function checkCapabilities(c: Checker, v: unknown, at: string): { add: string[]; drop: string[] } {
  if (v === undefined || v === null) return { add: [], drop: [] };
  if (!isObj(v)) {
    c.fail(at, "must be {add?, drop?}");
    return { add: [], drop: [] };
  }
  c.keys(v, ["add", "drop"], at);
  const list = (key: string) => {
    const names = c.strList(v, key, `${at}.${key}`);
    for (const n of names) if (!CAPABILITY.test(n)) c.fail(`${at}.${key}`, `"${n}" is not a capability name (e.g. NET_ADMIN)`);
    return names;
  };
  return { add: list("add"), drop: list("drop") };
}

function checkContainer(c: Checker, v: unknown, at: string): PodContainer | undefined {
  if (!isObj(v)) {
    c.fail(at, "must be a map");
    return undefined;
  }
  c.keys(v, ["name", "image", "command", "args", "env", "workingDir", "mounts", "tty", "resources", "annotations", "privileged", "capabilities"], at);
  const name = c.str(v, "name", `${at}.name`, true);
  if (name && !DNS_LABEL.test(name)) c.fail(`${at}.name`, `"${name}" is not a DNS label (lower-case letters, digits and '-', at most 63)`);
  if (name.length > 63) c.fail(`${at}.name`, "longer than 63 characters");
  const workingDir = c.str(v, "workingDir", `${at}.workingDir`, false);
  if (workingDir && !workingDir.startsWith("/")) c.fail(`${at}.workingDir`, "must be an absolute path");
  return {
    name,
    image: c.str(v, "image", `${at}.image`, true),
    command: c.strList(v, "command", `${at}.command`),
    args: c.strList(v, "args", `${at}.args`),
    env: checkEnv(c, v["env"], `${at}.env`),
    workingDir,
    mounts: checkMounts(c, v["mounts"], `${at}.mounts`),
    tty: c.bool(v, "tty", `${at}.tty`),
    resources: checkResources(c, v["resources"], `${at}.resources`),
    annotations: c.strMap(v, "annotations", `${at}.annotations`),
    privileged: c.bool(v, "privileged", `${at}.privileged`),
    capabilities: checkCapabilities(c, v["capabilities"], `${at}.capabilities`),
  };
}

/** Validates a parsed document; throws PodSpecError listing every problem. */
export function validatePodSpec(doc: unknown, source = "<input>"): PodSpec {
  const c = new Checker();
  if (!isObj(doc)) throw new PodSpecError(["the document must be a map with name and containers"], source);
  c.keys(doc, ["name", "namespace", "runtimeHandler", "hostNetwork", "hostIPC", "hostPID", "shareProcessNamespace", "sysctls", "labels", "annotations", "containers"], "");
  const name = c.str(doc, "name", "name", true);
  if (name && (!DNS_SUBDOMAIN.test(name) || name.length > 253)) c.fail("name", `"${name}" is not a DNS subdomain name (lower-case letters, digits, '-' and '.')`);
  const namespace = c.str(doc, "namespace", "namespace", false, "default") || "default";
  if (!DNS_LABEL.test(namespace)) c.fail("namespace", `"${namespace}" is not a DNS label`);
  const runtimeHandler = c.str(doc, "runtimeHandler", "runtimeHandler", false);
  if (runtimeHandler && !DNS_LABEL.test(runtimeHandler)) c.fail("runtimeHandler", `"${runtimeHandler}" is not a DNS label`);
  const spec: PodSpec = {
    name,
    namespace,
    runtimeHandler,
    hostNetwork: c.bool(doc, "hostNetwork", "hostNetwork"),
    hostIPC: c.bool(doc, "hostIPC", "hostIPC"),
    hostPID: c.bool(doc, "hostPID", "hostPID"),
    shareProcessNamespace: c.bool(doc, "shareProcessNamespace", "shareProcessNamespace"),
    sysctls: checkSysctls(c, doc["sysctls"], "sysctls"),
    labels: c.strMap(doc, "labels", "labels"),
    annotations: c.strMap(doc, "annotations", "annotations"),
    containers: [],
  };
  if (spec.hostPID && spec.shareProcessNamespace) c.fail("shareProcessNamespace", "cannot be true together with hostPID");
  const list = doc["containers"];
  if (!Array.isArray(list) || list.length === 0) {
    c.fail("containers", "must be a non-empty list");
  } else {
    const seen = new Set<string>();
    list.forEach((v, i) => {
      const ctr = checkContainer(c, v, `containers[${i}]`);
      if (!ctr) return;
      if (ctr.name && seen.has(ctr.name)) c.fail(`containers[${i}].name`, `duplicate container name "${ctr.name}"`);
      seen.add(ctr.name);
      spec.containers.push(ctr);
    });
  }
  if (c.problems.length) throw new PodSpecError(c.problems, source);
  return spec;
}

/** Parses YAML or JSON text (JSON is YAML) and validates it. */
export function parsePodSpec(text: string, source = "<input>"): PodSpec {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new PodSpecError([`not valid YAML/JSON: ${(err as Error).message.split("\n")[0]}`], source);
  }
  return validatePodSpec(doc, source);
}

export interface CriPodOptions {
  /** Root of the pod log directories (kubelet: /var/log/pods). */
  logRoot: string;
  /** Pod uid; random by default. */
  uid?: string;
  /** cgroup parent of the pod; "" lets containerd choose. */
  cgroupParent?: string;
  /** Restart attempt (kubelet's attempt counter); 0 for a new pod. */
  attempt?: number;
}

export interface CriPod {
  runtimeHandler: string;
  sandbox: PodSandboxConfig;
  containers: ContainerConfig[];
}

// Label keys kubelet puts on sandboxes and containers; crictl and containerd's CRI logs show them.
const POD_NAME = "io.kubernetes.pod.name";
const POD_NAMESPACE = "io.kubernetes.pod.namespace";
const POD_UID = "io.kubernetes.pod.uid";
const CONTAINER_NAME = "io.kubernetes.container.name";

function resourcesOf(r: PodResources): MessageInitShape<typeof LinuxContainerResourcesSchema> {
  const out: MessageInitShape<typeof LinuxContainerResourcesSchema> = {};
  if (r.memoryLimitBytes !== undefined) out.memoryLimitInBytes = BigInt(r.memoryLimitBytes);
  if (r.cpuQuota !== undefined) out.cpuQuota = BigInt(r.cpuQuota);
  if (r.cpuPeriod !== undefined) out.cpuPeriod = BigInt(r.cpuPeriod);
  if (r.cpuShares !== undefined) out.cpuShares = BigInt(r.cpuShares);
  return out;
}

/** The CRI configs kubelet would send for this pod: logs in `<logRoot>/<ns>_<name>_<uid>/<ctr>/<attempt>.log`. */
export function toCriConfigs(spec: PodSpec, opts: CriPodOptions): CriPod {
  const uid = opts.uid ?? randomUUID();
  const attempt = opts.attempt ?? 0;
  const podLabels = { ...spec.labels, [POD_NAME]: spec.name, [POD_NAMESPACE]: spec.namespace, [POD_UID]: uid };
  // As kubelet maps them: containers share the pod's network and IPC namespaces (or the node's), and
  // each gets its own PID namespace unless the pod shares one (or uses the node's).
  const namespaceOptions = {
    network: spec.hostNetwork ? NamespaceMode.NODE : NamespaceMode.POD,
    pid: spec.hostPID ? NamespaceMode.NODE : spec.shareProcessNamespace ? NamespaceMode.POD : NamespaceMode.CONTAINER,
    ipc: spec.hostIPC ? NamespaceMode.NODE : NamespaceMode.POD,
  };
  const sandbox = create(PodSandboxConfigSchema, {
    metadata: { name: spec.name, uid, namespace: spec.namespace, attempt },
    // With host networking kubelet leaves the hostname empty so the pod sees the node's.
    hostname: spec.hostNetwork ? "" : spec.name.split(".")[0]!.slice(0, 63),
    logDirectory: join(opts.logRoot, `${spec.namespace}_${spec.name}_${uid}`),
    labels: podLabels,
    annotations: { ...spec.annotations },
    linux: {
      cgroupParent: opts.cgroupParent ?? "",
      sysctls: { ...spec.sysctls },
      // The CRI refuses a privileged container in a sandbox that is not; kubelet marks the sandbox
      // privileged when any of its containers is.
      securityContext: { namespaceOptions, privileged: spec.containers.some((c) => c.privileged) },
    },
  });
  const containers = spec.containers.map((ctr) =>
    create(ContainerConfigSchema, {
      metadata: { name: ctr.name, attempt },
      image: { image: ctr.image },
      command: ctr.command,
      args: ctr.args,
      workingDir: ctr.workingDir,
      envs: ctr.env.map((e) => ({ key: e.name, value: e.value })),
      mounts: ctr.mounts.map((m) => ({
        containerPath: m.containerPath,
        hostPath: m.hostPath,
        readonly: m.readOnly,
        propagation: PROPAGATIONS[m.mountPropagation ?? "None"],
      })),
      labels: { ...podLabels, [CONTAINER_NAME]: ctr.name },
      annotations: { ...ctr.annotations },
      logPath: join(ctr.name, `${attempt}.log`),
      tty: ctr.tty,
      linux: {
        resources: resourcesOf(ctr.resources),
        securityContext: {
          namespaceOptions,
          privileged: ctr.privileged,
          ...(ctr.capabilities.add.length || ctr.capabilities.drop.length
            ? { capabilities: { addCapabilities: ctr.capabilities.add, dropCapabilities: ctr.capabilities.drop } }
            : {}),
        },
      },
    }),
  );
  return { runtimeHandler: spec.runtimeHandler, sandbox, containers };
}
