// Stand-ins for QEMU and the guest agent, for unit tests of the sandbox and container logic without
// root, KVM or a guest: the test decides when a VM exits and how the agent answers each call.
import path from "node:path";
import { Code, TtrpcError } from "../../ttrpc/index.js";
import type { AgentApi, AgentLink, ConnectAgent } from "./agent.js";
import type { Hypervisor, VmHandle, VmSpec } from "./hypervisor.js";

type Exit = { code: number | null; signal: string | null };

export class FakeVm implements VmHandle {
  readonly agentSocket: string;
  readonly consoleLog: string;
  readonly exited: Promise<Exit>;
  /** How many times kill() was called. */
  kills = 0;
  private settle!: (e: Exit) => void;
  private hasExited = false;

  constructor(readonly pid: number, readonly spec: VmSpec) {
    this.agentSocket = path.join(spec.runDir, "agent.sock");
    this.consoleLog = path.join(spec.runDir, "console.log");
    this.exited = new Promise((resolve) => (this.settle = resolve));
  }

  get running(): boolean {
    return !this.hasExited;
  }

  /** The VMM exits (as if the guest powered off or QEMU crashed). */
  exit(e: Exit = { code: 0, signal: null }) {
    this.hasExited = true;
    this.settle(e);
  }

  kill() {
    this.kills++;
    this.exit({ code: null, signal: "SIGKILL" });
  }
}

export class FakeHypervisor implements Hypervisor {
  readonly vms: FakeVm[] = [];
  readonly saved: FakeVm[] = [];
  /** Runs first in every start; throw from it to make the start fail. */
  beforeStart: (spec: VmSpec) => void | Promise<void> = () => {};
  private nextPid = 4000;

  async start(spec: VmSpec): Promise<FakeVm> {
    await this.beforeStart(spec);
    const vm = new FakeVm(this.nextPid++, spec);
    this.vms.push(vm);
    return vm;
  }

  async saveTemplate(vm: VmHandle): Promise<void> {
    this.saved.push(vm as FakeVm);
    vm.kill();
  }
}

type Handler = (req: any) => unknown;

/** Never settles: the agent's long polls (WaitProcess, NextOomEvent) until the connection closes. */
export const pending = () => new Promise<never>(() => {});

/**
 * A guest agent on the other end of one connection. Each method answers from `answers` (a value or a
 * promise; throw to fail), else from a default; every call is recorded. Closing the connection (either
 * side) rejects the calls in flight, as the ttrpc client does.
 */
export class FakeAgent {
  readonly calls: Array<{ method: string; req: any }> = [];
  readonly answers: Partial<Record<keyof AgentApi, Handler>> = {};
  readonly api: AgentApi;
  readonly link: AgentLink;
  private closed = false;
  private readonly inFlight = new Set<(err: Error) => void>();
  private readonly closeListeners: Array<() => void> = [];
  private nextPid = 100;

  private readonly defaults: Partial<Record<keyof AgentApi, Handler>> = {
    health: () => ({ uptimeMs: 1234n, kernelRelease: "6.1.0-fake" }),
    createContainer: () => ({ pid: this.nextPid++ }),
    startProcess: () => ({ pid: this.nextPid++ }),
    waitProcess: pending,
    nextOomEvent: pending,
    readOutput: () => ({ data: new Uint8Array(), eof: true }),
    pids: () => ({ processes: [] }),
  };

  constructor() {
    // Every name is an RPC, except "then": the API must not look like a promise to `await`.
    this.api = new Proxy({} as AgentApi, {
      get: (_t, method) => (typeof method !== "string" || method === "then" ? undefined : (req: unknown) => this.call(method as keyof AgentApi, req)),
    });
    this.link = {
      agent: this.api,
      close: () => this.hangUp(),
      onClose: (listener) => {
        if (this.closed) queueMicrotask(listener);
        else this.closeListeners.push(listener);
      },
    };
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Calls of `method`, in order. */
  callsOf(method: keyof AgentApi): any[] {
    return this.calls.filter((c) => c.method === method).map((c) => c.req);
  }

  /** The connection goes away (the agent hung up, or the host closed it). */
  hangUp() {
    if (this.closed) return;
    this.closed = true;
    const err = new TtrpcError(Code.UNAVAILABLE, "ttrpc: closed");
    for (const reject of [...this.inFlight]) reject(err);
    this.inFlight.clear();
    for (const l of this.closeListeners.splice(0)) l();
  }

  private call(method: keyof AgentApi, req: unknown): Promise<unknown> {
    this.calls.push({ method, req });
    if (this.closed) return Promise.reject(new TtrpcError(Code.UNAVAILABLE, "ttrpc: closed"));
    return new Promise((resolve, reject) => {
      const fail = (err: Error) => reject(err);
      this.inFlight.add(fail);
      const answer = this.answers[method] ?? this.defaults[method] ?? (() => ({}));
      Promise.resolve()
        .then(() => answer(req))
        .then(
          (v) => {
            this.inFlight.delete(fail);
            resolve(v);
          },
          (err) => {
            this.inFlight.delete(fail);
            reject(err);
          },
        );
    });
  }
}

/** A ConnectAgent that hands out a new FakeAgent per VM (set up by `prepare`), kept in `agents`. */
export function fakeConnector(prepare: (agent: FakeAgent, vm: VmHandle) => void = () => {}): { connect: ConnectAgent; agents: FakeAgent[] } {
  const agents: FakeAgent[] = [];
  const connect: ConnectAgent = async (vm) => {
    const agent = new FakeAgent();
    prepare(agent, vm);
    agents.push(agent);
    return agent.link;
  };
  return { connect, agents };
}
