// The host's client of the guest agent: TTRPC over QEMU's virtio-serial socket.
import { Agent } from "../../gen/cocoon/agent/v1/agent_pb.js";
import { TtrpcClient, type TypedClient } from "../../ttrpc/index.js";
import type { VmHandle } from "./hypervisor.js";
import { AGENT_SERVICE } from "../../core/guest-abi.js";

export type AgentApi = TypedClient<typeof Agent>;

export function agentApi(client: TtrpcClient): AgentApi {
  return client.makeClient(Agent, AGENT_SERVICE);
}

/** A live connection to a pod VM's agent: the typed API, hanging up, and hearing the agent hang up. */
export interface AgentLink {
  readonly agent: AgentApi;
  /** Hangs up; calls in flight reject. */
  close(): void;
  /** Runs `listener` once when the connection is gone, whoever closed it. */
  onClose(listener: () => void): void;
}

/** Gets the agent of `vm` on the line (the sandbox is given one, so tests can run without QEMU). */
export type ConnectAgent = (vm: VmHandle, timeoutMs: number) => Promise<AgentLink>;

export function agentLink(client: TtrpcClient): AgentLink {
  return { agent: agentApi(client), close: () => client.close(), onClose: (listener) => void client.onClose(() => listener()) };
}
