// Reported by Health; bump with the agent API.
export const AGENT_VERSION = "0.1.0";
