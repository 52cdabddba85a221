// The harness's pod network: a private bridge per harness instance (src/cli/lab/cni.ts), its config in the
// harness's CNI conf dir and host-local's state under the harness dir, the host's CNI plugins as binaries.
import { join } from "node:path";
import { CNI_PLUGIN_DIR, missingCniPlugins, planCniNetwork, removeCniNetwork, writeCniConfig, type CniNetwork } from "../../src/cli/lab/cni.js";

export { bridgeConflist, CNI_PLUGIN_DIR, cidrsOverlap, type CniNetwork } from "../../src/cli/lab/cni.js";

/** Where containerd finds the plugins when a harness is started with `cni`. */
export const HARNESS_CNI_BIN_DIR = CNI_PLUGIN_DIR;

/** Plans a free bridge and subnet and writes the conflist into `<dir>/cni/conf`. */
export async function setupHarnessCni(dir: string): Promise<CniNetwork> {
  const missing = missingCniPlugins(HARNESS_CNI_BIN_DIR);
  if (missing.length) throw new Error(`CNI plugins missing from ${HARNESS_CNI_BIN_DIR}: ${missing.join(", ")} (apt-get install containernetworking-plugins)`);
  const net = await planCniNetwork({ confDir: join(dir, "cni", "conf"), ipamDir: join(dir, "cni", "ipam") });
  writeCniConfig(net);
  return net;
}

/**
 * Deletes the bridge and the IPAM state. Returns leftovers worth reporting: IP leases that no CNI DEL
 * released (the bridge itself is expected to be there once any pod ran).
 */
export async function teardownHarnessCni(net: CniNetwork): Promise<string[]> {
  const removed = await removeCniNetwork(net);
  return removed.filter((r) => !r.startsWith(`bridge ${net.bridge}`) || r.includes("failed"));
}
