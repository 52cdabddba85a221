// gVisor mode, as registered with the shim (src/runtime/modes.ts): each pod is one runsc sandbox
// (a user-space kernel, the Sentry), its containers run in it.
import type { RuntimeMode } from "../../shim/runtime.js";
import { parseGvisorSettings, type GvisorSettings } from "./settings.js";

export const gvisorMode: RuntimeMode<GvisorSettings> = {
  name: "gvisor",
  handler: "cocoon-gvisor",
  configFile: "cocoon-gvisor.toml",
  summary: "one gVisor (runsc) sandbox per pod: a user-space kernel between the pod and the host",
  stateKeys: ["root", "state_dir"],
  // The sandbox has no host devices to give a privileged pod.
  privilegedWithoutHostDevices: true,
  parseSettings: parseGvisorSettings,
  async create(ctx, host) {
    const { createGvisorRuntime } = await import("./runtime.js");
    return createGvisorRuntime(ctx, host);
  },
  async checkNode(settings, node, o) {
    const { checkGvisorNode } = await import("./node-check.js");
    return checkGvisorNode(settings, node, o);
  },
  async cleanupBundle(sys, id, bundle, state) {
    // The bundle state names runsc and its --root: runsc's own force-delete tears the sandbox down.
    const { cleanupRuncBundle } = await import("../runc/cleanup.js");
    return cleanupRuncBundle(sys, id, bundle, state);
  },
};
