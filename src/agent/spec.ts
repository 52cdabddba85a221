// The last rewrite of an OCI spec, done where only the guest knows the answers. The host already
// pointed root.path and bind-mount sources into the shared directory; here the namespaces a
// container shares with another of the pod (given as /proc/<pid>/ns/... paths) are resolved to that
// container's in the guest, and what the guest kernel or this guest cannot honour is taken out.
import { existsSync } from "node:fs";
import { invalidArgument } from "../core/errors.js";

type Json = Record<string, unknown>;

/** Where the agent puts each container's cgroup (cgroup v2, relative to /sys/fs/cgroup). */
export const cgroupPathOf = (containerId: string) => `/cocoon/${containerId}`;

export interface GuestSpecResult {
  spec: Json;
  /** net.* sysctls: they belong to the VM's network namespace, which the agent sets itself. */
  netSysctls: Record<string, string>;
  /** What was changed, for the log. */
  notes: string[];
}

const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

export function parseJsonObject(bytes: Uint8Array | string, what: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(typeof bytes === "string" ? bytes : Buffer.from(bytes).toString("utf8"));
  } catch (err) {
    throw invalidArgument(`${what} is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(v)) throw invalidArgument(`${what} must be a JSON object`);
  return v;
}

/** Process fields that name host security modules the guest does not have. */
export function guestProcess(proc: Json, terminal: boolean): Json {
  const out: Json = { ...proc, terminal };
  delete out["apparmorProfile"];
  delete out["selinuxLabel"];
  return out;
}

/**
 * The containers of the pod whose namespaces another may join: the pid of each one's running init
 * (as the agent reported it, which is the pid the host hands containerd) -> its container id.
 */
export type NamespaceOwners = ReadonlyMap<number, string>;

/** The file under /proc/<pid>/ns/ for each OCI namespace type. */
const NS_FILES: Readonly<Record<string, string>> = {
  pid: "pid", ipc: "ipc", uts: "uts", mount: "mnt", network: "net", user: "user", cgroup: "cgroup", time: "time",
};

const PROC_NS_PATH = /^\/proc\/([1-9][0-9]*)\/ns\/[a-z_]+$/;

/**
 * The namespaces a container gets in the guest. A namespace without a path is a new one; one with a
 * path is shared with another container of the pod (containerd's CRI plugin points app containers
 * at the sandbox's ipc, uts and, with a shared process namespace, pid) and must name one that this
 * agent started: any other path (a host netns file, /proc/1/...) is refused, never followed. Every
 * container of the pod keeps the VM's network. A container always has a PID namespace of the pod's
 * own, so that it never sees the agent or anything else of the VM.
 */
export function guestNamespaces(namespaces: unknown, owners: NamespaceOwners, notes: string[] = []): Json[] {
  const out: Json[] = [];
  for (const ns of Array.isArray(namespaces) ? namespaces : []) {
    if (!isObject(ns)) continue;
    const type = ns["type"];
    if (typeof type !== "string" || !(type in NS_FILES)) throw invalidArgument(`unknown namespace type ${JSON.stringify(type)}`);
    // Every container of the pod uses the VM's network, which SetupNetwork configured.
    if (type === "network") {
      notes.push(`network namespace ${typeof ns["path"] === "string" ? ns["path"] : "(new)"} dropped (the VM's network is the pod's)`);
      continue;
    }
    const p = ns["path"];
    if (p === undefined || p === "") {
      out.push({ type });
      continue;
    }
    const m = typeof p === "string" ? PROC_NS_PATH.exec(p) : null;
    const pid = m ? Number(m[1]) : 0;
    const owner = owners.get(pid);
    if (!owner) {
      throw invalidArgument(`${type} namespace ${JSON.stringify(p)} does not belong to a container of this pod: in vm mode a container can only share namespaces with the containers of its own VM`);
    }
    // Rebuilt from the type rather than taken from the path, so a path cannot name a namespace of another kind.
    out.push({ type, path: `/proc/${pid}/ns/${NS_FILES[type]}` });
    notes.push(`joins the ${type} namespace of container ${owner}`);
  }
  if (!out.some((ns) => ns["type"] === "pid")) {
    throw invalidArgument("the spec has no PID namespace: the container would see the guest agent and every process of the VM (hostPID cannot be used in vm mode; use the cocoon-runc handler)");
  }
  // The guest is cgroup v2: like containerd on v2 hosts, give each container its own cgroup
  // namespace so /sys/fs/cgroup shows its own limits (memory.max …), not the VM's root.
  if (!out.some((ns) => ns["type"] === "cgroup")) out.push({ type: "cgroup" });
  return out;
}

export function guestSpec(specJson: Uint8Array | string, containerId: string, terminal: boolean, owners: NamespaceOwners = new Map()): GuestSpecResult {
  const spec = parseJsonObject(specJson, "spec_json");
  const notes: string[] = [];
  const root = spec["root"];
  if (!isObject(root) || typeof root["path"] !== "string" || !root["path"]) {
    throw invalidArgument("spec_json has no root.path");
  }
  const proc = spec["process"];
  if (!isObject(proc)) throw invalidArgument("spec_json has no process");
  spec["process"] = guestProcess(proc, terminal);

  const linux: Json = isObject(spec["linux"]) ? spec["linux"] : {};
  spec["linux"] = linux;
  linux["cgroupsPath"] = cgroupPathOf(containerId);
  linux["namespaces"] = guestNamespaces(linux["namespaces"], owners, notes);
  delete linux["mountLabel"];

  const netSysctls: Record<string, string> = {};
  if (isObject(linux["sysctl"])) {
    const sysctl = linux["sysctl"];
    for (const key of Object.keys(sysctl)) {
      if (key.startsWith("net.")) {
        netSysctls[key] = String(sysctl[key]);
        delete sysctl[key];
      }
    }
  }

  // cgroup v1 knobs the guest's cgroup v2 has no file for (crun refuses them).
  const memory = isObject(linux["resources"]) ? (linux["resources"] as Json)["memory"] : undefined;
  if (isObject(memory)) {
    for (const key of ["kernel", "kernelTCP", "swappiness"]) {
      if (key in memory) {
        delete memory[key];
        notes.push(`linux.resources.memory.${key} dropped (cgroup v1 only)`);
      }
    }
  }

  // Hooks run on this side; a host binary that the guest does not have cannot run.
  if (isObject(spec["hooks"])) {
    const hooks = spec["hooks"];
    for (const [stage, list] of Object.entries(hooks)) {
      if (!Array.isArray(list)) continue;
      hooks[stage] = list.filter((h: unknown) => {
        const p = isObject(h) ? h["path"] : undefined;
        const ok = typeof p === "string" && existsSync(p);
        if (!ok) notes.push(`${stage} hook ${String(p)} dropped (not in the guest)`);
        return ok;
      });
    }
  }
  return { spec, netSysctls, notes };
}
