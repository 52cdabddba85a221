// Getting a pod VM's agent on the line, and making a template VM: boot it, wait for its agent, and
// snapshot it once the agent is idle again.
import { readFileSync } from "node:fs";
import path from "node:path";
import { TtrpcClient } from "../../ttrpc/index.js";
import { agentLink, type AgentLink, type ConnectAgent } from "./agent.js";
import type { Hypervisor, VmHandle, VmSpec } from "./hypervisor.js";
import { AGENT_LOG_HOST_CONNECTED, AGENT_LOG_HOST_DISCONNECTED } from "../../core/guest-abi.js";

/** Connects to the agent's socket as soon as QEMU has made it; fails if QEMU exits or time runs out. */
export async function connectAgent(vm: VmHandle, timeoutMs: number): Promise<TtrpcClient> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void vm.exited.then(() => (exited = true));
  for (;;) {
    if (exited) throw new Error("QEMU exited during boot");
    try {
      return await TtrpcClient.connect(vm.agentSocket, { timeoutMs: 1000 });
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`agent socket ${vm.agentSocket} not reachable: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** The agent of a QEMU VM: its virtio-serial socket, as soon as QEMU has made it. */
export const connectQemuAgent: ConnectAgent = async (vm, timeoutMs): Promise<AgentLink> => agentLink(await connectAgent(vm, timeoutMs));

/** The last `lines` lines of a log file (console, QEMU's stderr); undefined when it cannot be read. */
export function lastLines(file: string, lines: number): string | undefined {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return undefined;
  }
}

/** The last lines QEMU wrote to its stderr log in `runDir`, on one line. */
export function qemuSaid(runDir: string): string {
  return (lastLines(path.join(runDir, "qemu.stderr"), 3) ?? "").trim().split("\n").join(" / ");
}

/** The agent logs each host session on the console; the last word must be a disconnect. */
function agentSawHangUp(consoleLog: string): boolean {
  let text = "";
  try {
    text = readFileSync(consoleLog, "utf8");
  } catch {}
  return text.lastIndexOf(`msg="${AGENT_LOG_HOST_DISCONNECTED}"`) > text.lastIndexOf(`msg="${AGENT_LOG_HOST_CONNECTED}"`);
}

/**
 * Boots `spec` (a template build), checks its agent answers, hangs up, and snapshots the VM once the
 * agent has seen the hang-up, so that every clone starts with an agent waiting for a new host.
 * QEMU is gone when this returns or throws.
 */
export async function buildTemplate(h: Hypervisor, connect: ConnectAgent, spec: VmSpec, deadline: number): Promise<void> {
  const vm = await h.start(spec);
  try {
    const link = await connect(vm, deadline - Date.now());
    try {
      await link.agent.health({}, { timeoutMs: Math.max(1000, deadline - Date.now()) });
    } finally {
      link.close();
    }
    while (!agentSawHangUp(vm.consoleLog)) {
      if (Date.now() > deadline) throw new Error("the template's agent did not see the host hang up");
      await new Promise((r) => setTimeout(r, 10));
    }
    await h.saveTemplate(vm, spec);
  } catch (err) {
    const said = qemuSaid(spec.runDir);
    throw new Error(`${(err as Error).message}${said ? ` (QEMU said: ${said})` : ""}`);
  } finally {
    vm.kill();
    await vm.exited;
  }
}
