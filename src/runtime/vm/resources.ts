// What a pod VM holds in the pod's network namespace on the host: the tap device wired to the CNI
// interface (network.ts) and the port-forward listener (portforward.ts). Behind one interface so the
// sandbox can be given another (tests run it without root or a namespace).
import type { Logger } from "../../core/log.js";
import type { Sys } from "../../sys/types.js";
import type { AgentApi } from "./agent.js";
import { inspectPodNetwork, setupTap, teardownTap, type PodNetwork } from "./network.js";
import { startPortForwarder, type PortForwarder } from "./portforward.js";

export interface PodNetworking {
  /** The pod's interface and routes in `netns`; undefined when it has none to carry into the VM. */
  inspect(netns: string): Promise<PodNetwork | undefined>;
  setupTap(net: PodNetwork): Promise<void>;
  teardownTap(netns: string, ifaceName: string): Promise<void>;
  startPortForwarder(netns: string, agent: AgentApi, sys: Sys, log: Logger): Promise<PortForwarder>;
}

export const hostNetworking: PodNetworking = { inspect: inspectPodNetwork, setupTap, teardownTap, startPortForwarder };
