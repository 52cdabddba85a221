// The last rewrite of an OCI spec, done where only the guest knows the answers. The host already
// pointed root.path and bind-mount sources into the shared directory; here the pod-level
// namespaces (given by host paths) become the VM's own, and what the guest kernel or this guest
// cannot honour is taken out.
import { existsSync } from "node:fs";
import { invalidArgument } from "./errors.js";

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

export function guestSpec(specJson: Uint8Array | string, containerId: string, terminal: boolean): GuestSpecResult {
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
  if (Array.isArray(linux["namespaces"])) {
    const kept = (linux["namespaces"] as unknown[]).filter((ns) => {
      if (!isObject(ns)) return false;
      // A path names a namespace of the host; the pod's shared namespaces are the VM's own here.
      if (typeof ns["path"] === "string" && ns["path"]) {
        notes.push(`joined ${String(ns["type"])} namespace of the VM instead of ${ns["path"]}`);
        return false;
      }
      // Every container of the pod uses the VM's network, which SetupNetwork configured.
      if (ns["type"] === "network") {
        notes.push("network namespace dropped (the VM's network is the pod's)");
        return false;
      }
      return true;
    });
    // The guest is cgroup v2: like containerd on v2 hosts, give each container its own cgroup
    // namespace so /sys/fs/cgroup shows its own limits (memory.max …), not the VM's root.
    if (!kept.some((ns) => isObject(ns) && ns["type"] === "cgroup")) kept.push({ type: "cgroup" });
    linux["namespaces"] = kept;
  }
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
