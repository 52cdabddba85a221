// vm mode, as registered with the shim (src/runtime/modes.ts). The agent API and the VMM driver load
// only in vm-mode daemons.
import type { RuntimeMode } from "../../shim/runtime.js";
import { parseVmSettings, type VmConfig } from "./settings.js";

export const vmMode: RuntimeMode<VmConfig> = {
  name: "vm",
  handler: "cocoon",
  configFile: "cocoon-vm.toml",
  summary: "one QEMU VM per pod with its own guest kernel",
  stateKeys: ["state_dir"],
  privilegedWithoutHostDevices: true,
  parseSettings: parseVmSettings,
  async create(ctx, host) {
    const [{ VmRuntime }, { Qemu }] = await Promise.all([import("./runtime.js"), import("./qemu.js")]);
    return new VmRuntime(ctx, host.sys, new Qemu(ctx.settings.qemu), ctx.settings.stateDir);
  },
  async cleanupBundle(sys, id, bundle, state) {
    const { cleanupVmBundle } = await import("./cleanup.js");
    return cleanupVmBundle(sys, id, bundle, state);
  },
};
