// How the sandbox reaches the pod's network. "sandbox" (runsc's default) is gVisor's own netstack on
// the interface CNI put in the pod's network namespace; "host" passes the Sentry's socket calls to the
// host kernel, still inside that namespace (same pod IP and routes, less isolation).
//
// runsc releases before 20240807 tell the host's root network namespace apart by the existence of
// /proc/sys/net/core/rmem_default, which Linux made per namespace in 6.x: on such a kernel they
// refuse "sandbox" in every pod ("cannot run with network enabled in root network namespace";
// gVisor issue #10704). "auto" therefore checks both facts and falls back to "host" only then.
import { statSync } from "node:fs";
import path from "node:path";
import type { Logger } from "../../core/log.js";
import { probeOnce } from "../../shim/statefs.js";
import { runChild } from "../../sys/children.js";

export type Network = "sandbox" | "host";
export type NetworkSetting = "auto" | Network;

/** The first runsc release that tells the root network namespace apart correctly on new kernels. */
export const FIXED_RELEASE = 20240807;

/** The release date in `runsc --version` ("runsc version release-20221219.0", Debian "0.0~20221219.0"). */
export function runscRelease(versionText: string): number | undefined {
  const m = /runsc version\s+\S*?(20\d{6})/.exec(versionText);
  return m ? Number(m[1]) : undefined;
}

export interface NetworkChoice {
  network: Network;
  reason: string;
}

export async function probeNetwork(runsc: string): Promise<NetworkChoice> {
  const v = await runChild(runsc, ["--version"], { timeoutMs: 5000 }).catch(() => undefined);
  const release = v ? runscRelease(v.stdout) : undefined;
  if (release === undefined || release >= FIXED_RELEASE) return { network: "sandbox", reason: `runsc release ${release ?? "unknown"}` };
  const inNewNs = await runChild("unshare", ["--net", "test", "-e", "/proc/sys/net/core/rmem_default"], { timeoutMs: 5000 }).catch(() => undefined);
  if (inNewNs?.code === 0) {
    return {
      network: "host",
      reason: `runsc ${release} refuses --network=sandbox on this kernel (/proc/sys/net/core/rmem_default exists in every network namespace; fixed in runsc ${FIXED_RELEASE})`,
    };
  }
  return { network: "sandbox", reason: `runsc ${release} on a kernel without namespaced rmem_default` };
}

/** The network to pass as --network: the setting, or the probe's answer cached per runsc binary (path and mtime). */
export async function chooseNetwork(setting: NetworkSetting, runsc: string, stateDir: string, log: Logger): Promise<Network> {
  if (setting !== "auto") return setting;
  let key = runsc;
  try {
    key = `${runsc}@${statSync(runsc).mtimeMs}`;
  } catch {}
  const valid = (c: NetworkChoice & { key?: string }) => c.key === key && (c.network === "sandbox" || c.network === "host");
  const choice = await probeOnce(path.join(stateDir, "network-probe.json"), valid, async () => {
    const c = await probeNetwork(runsc);
    if (c.network === "host") log.warn("gVisor network: host (runsc's netstack is unavailable here)", { reason: c.reason });
    else log.info("gVisor network: sandbox", { reason: c.reason });
    return { ...c, key };
  });
  return choice.network;
}
