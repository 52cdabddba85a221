// runc mode, as registered with the shim (src/runtime/modes.ts).
import type { RuntimeMode } from "../../shim/runtime.js";
import { parseRuncSettings, type RuncSettings } from "./settings.js";

export const runcMode: RuntimeMode<RuncSettings> = {
  name: "runc",
  handler: "cocoon-runc",
  configFile: "cocoon-runc.toml",
  summary: "plain Linux containers made by the OCI runtime CLI (runc or crun)",
  stateKeys: ["root"],
  privilegedWithoutHostDevices: false,
  parseSettings: parseRuncSettings,
  async create(ctx, host) {
    const { RuncRuntime } = await import("./runtime.js");
    return new RuncRuntime(ctx, host.sys, host.reaper);
  },
  async cleanupBundle(sys, id, bundle, state) {
    const { cleanupRuncBundle } = await import("./cleanup.js");
    return cleanupRuncBundle(sys, id, bundle, state);
  },
};
