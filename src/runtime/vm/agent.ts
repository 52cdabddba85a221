// The host's client of the guest agent: TTRPC over QEMU's virtio-serial socket.
import { Agent } from "../../gen/cocoon/agent/v1/agent_pb.js";
import { TtrpcClient, type TypedClient } from "../../ttrpc/index.js";

export const AGENT_SERVICE = "cocoon.agent.v1.Agent";
export type AgentApi = TypedClient<typeof Agent>;

export function agentApi(client: TtrpcClient): AgentApi {
  return client.makeClient(Agent, AGENT_SERVICE);
}
