// gVisor mode: the runc runtime driving runsc (flavor.ts says how runsc differs), on the platform the
// probe picked, with the pod's network left to runsc: its netstack in the spec's network namespace,
// the one CRI and CNI set up.
import { RuncRuntime } from "../runc/runtime.js";
import { resolveBinary } from "../../core/oci-cli.js";
import type { RuncSettings } from "../runc/settings.js";
import { failedPrecondition } from "../../core/errors.js";
import type { Runtime, RuntimeContext, RuntimeHost } from "../../shim/runtime.js";
import { gvisorFlavor } from "./flavor.js";
import { chooseNetwork } from "./network.js";
import { choosePlatform } from "./platform.js";
import type { GvisorSettings } from "./settings.js";

/** The flags every runsc call of this daemon gets after --root and --log. */
export function runscGlobalArgs(s: GvisorSettings, platform: string, network: string): string[] {
  const a = [`--platform=${platform}`, `--network=${network}`];
  if (s.debugLog) a.push("--debug", `--debug-log=${s.debugLog.replace(/\/?$/, "/")}`);
  return a;
}

export function findRunsc(binary: string): string {
  try {
    return resolveBinary(binary);
  } catch {
    throw failedPrecondition(`gVisor mode needs runsc, and "${binary}" was not found${binary.includes("/") ? "" : " in PATH"} (apt-get install runsc)`);
  }
}

export async function createGvisorRuntime(ctx: RuntimeContext<GvisorSettings>, host: RuntimeHost): Promise<Runtime> {
  const s = ctx.settings;
  const binary = findRunsc(s.binary);
  const [platform, network] = await Promise.all([
    choosePlatform(s.platform, binary, s.stateDir, ctx.log),
    chooseNetwork(s.network, binary, s.stateDir, ctx.log),
  ]);
  const globalArgs = runscGlobalArgs(s, platform, network);
  const runc: RuncSettings = { binary, root: s.root, systemdCgroup: s.systemdCgroup, noPivotRoot: false, noNewKeyring: false, criuPath: "" };
  const flavor = gvisorFlavor({ sys: host.sys, log: ctx.log, globalArgs });
  return new RuncRuntime({ ...ctx, settings: runc }, host.sys, host.reaper, flavor);
}
