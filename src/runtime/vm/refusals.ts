// What a pod cannot ask for in vm mode, because it would need the host's own namespaces or mount
// tree, which a container inside a VM cannot reach. Checked before a VM boots, so that the pod fails
// with a clear InvalidArgument naming the handler that can run it (README: "What vm mode refuses").
import { invalidArgument } from "../../core/errors.js";
import type { OciSpec } from "../../shim/runtime.js";

const RUNC_HANDLER = "cocoon-runc";

interface Namespace {
  type: string;
  path?: string;
}

interface OciMount {
  destination?: string;
  source?: string;
  options?: string[];
}

/** Propagation options that would carry mounts made in the container back to the host. */
const TO_HOST = new Set(["shared", "rshared"]);

/**
 * Throws InvalidArgument for a container that vm mode cannot run: a sandbox on the host network, a
 * container without its own IPC or PID namespace (the CRI plugin leaves them out for hostIPC and
 * hostPID), and a mount with bidirectional (rshared) propagation.
 */
export function refuseHostOnly(spec: OciSpec, isSandbox: boolean): void {
  const namespaces = (spec.linux?.["namespaces"] ?? []) as Namespace[];
  const has = (type: string) => namespaces.some((n) => n.type === type);
  if (isSandbox && !has("network")) {
    throw invalidArgument(`host networking cannot be used in vm mode: the pod's network is carried into its VM (use the ${RUNC_HANDLER} handler for hostNetwork pods)`);
  }
  if (!has("ipc")) {
    throw invalidArgument(`host IPC cannot be used in vm mode: a VM shares no IPC namespace with the host (use the ${RUNC_HANDLER} handler for hostIPC pods)`);
  }
  if (!has("pid")) {
    throw invalidArgument(`host PID cannot be used in vm mode: the host's processes are not visible inside a VM (use the ${RUNC_HANDLER} handler for hostPID pods)`);
  }
  for (const m of (spec["mounts"] ?? []) as OciMount[]) {
    if ((m.options ?? []).some((o) => TO_HOST.has(o))) {
      throw invalidArgument(`mount ${m.source ?? ""} on ${m.destination ?? ""} asks for bidirectional (rshared) propagation, which cannot reach the host from inside a VM (use the ${RUNC_HANDLER} handler for pods with Bidirectional mount propagation)`);
    }
  }
}
