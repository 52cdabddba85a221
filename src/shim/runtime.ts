// The contract between the shim SDK and a concrete runtime mode (runc, vm, ...). Requests arrive here
// already converted from wire messages: runtimes never see TTRPC or protobuf task types.
import type { CocoonConfig } from "./config.js";
import type { Table } from "./config-fields.js";
import type { BundleState } from "./delete.js";
import type { Logger } from "./log.js";
import type { Reaper } from "../sys/reaper.js";
import type { Sys } from "../sys/types.js";

export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface Stdio {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

export interface CreateRequest {
  id: string;
  namespace: string;
  bundle: string;
  rootfs: Mount[];
  stdio: Stdio;
  checkpoint: string;
  /** Parsed OCI runtime spec (config.json of the bundle). */
  spec: OciSpec;
  /**
   * The runtime options containerd sent with this container (a protobuf Any), undecoded: each mode
   * reads the kinds it understands (runc mode: containerd's runc options). See shim/options.ts.
   */
  options?: RuntimeOptionsAny;
}

export interface RuntimeOptionsAny {
  typeUrl: string;
  value: Uint8Array;
}

/**
 * With a user namespace the container's root is an unprivileged host uid, which cannot reopen its own
 * stdio (`echo > /dev/stdout` opens /proc/self/fd/1) while the pipe or FIFO behind it is root's.
 */
export interface IoOwner {
  uid: number;
  gid: number;
}

export interface ExecRequest {
  containerId: string;
  execId: string;
  stdio: Stdio;
  /** OCI Process object (JSON) for the exec. */
  process: Record<string, unknown>;
}

export interface ExitInfo {
  status: number;
  at: Date;
}

export interface ProcessRef {
  containerId: string;
  /** "" for the container's init process. */
  execId: string;
}

export interface PidInfo {
  pid: number;
  execId: string;
}

export interface Stats {
  typeUrl: string;
  value: Uint8Array;
}

export type OciSpec = {
  ociVersion?: string;
  process?: Record<string, unknown> & { terminal?: boolean; args?: string[] };
  root?: { path?: string; readonly?: boolean };
  annotations?: Record<string, string>;
  linux?: Record<string, unknown> & { cgroupsPath?: string; resources?: Record<string, unknown> };
  [k: string]: unknown;
};

/** What a runtime reports back to the SDK. */
export interface RuntimeEvents {
  /** A process has exited; the SDK orders this after the process's start event. */
  exited(ref: ProcessRef, pid: number, exit: ExitInfo): void;
  /** The kernel OOM-killed something in the container. */
  oom(containerId: string): void;
}

export interface RuntimeContext<S = unknown> {
  /** The generic part of the config (mode, grouping, ...). */
  config: CocoonConfig;
  /** The active mode's own settings: its config table as its parseSettings returned it. */
  settings: S;
  log: Logger;
  events: RuntimeEvents;
}

/** What the daemon lends a runtime: the system calls and the reaper of its children. */
export interface RuntimeHost {
  sys: Sys;
  reaper: Reaper;
}

export interface Runtime {
  /** Creates the container with its init process not yet started; returns the init pid. */
  create(req: CreateRequest): Promise<{ pid: number }>;
  /** Starts the init process (execId "") or a created exec; returns its pid. */
  start(ref: ProcessRef): Promise<{ pid: number }>;
  /** Creates (but does not start) an exec process. */
  exec(req: ExecRequest): Promise<void>;
  kill(ref: ProcessRef, signal: number, all: boolean): Promise<void>;
  /** Removes an exec's resources, or the whole container (init: tear down, unmount rootfs). */
  delete(ref: ProcessRef): Promise<void>;
  pids(containerId: string): Promise<PidInfo[]>;
  pause(containerId: string): Promise<void>;
  resume(containerId: string): Promise<void>;
  /** Applies OCI LinuxResources (JSON object). */
  update(containerId: string, resources: Record<string, unknown>): Promise<void>;
  stats(containerId: string): Promise<Stats>;
  resizePty(ref: ProcessRef, width: number, height: number): Promise<void>;
  closeStdin(ref: ProcessRef): Promise<void>;
  checkpoint(containerId: string, path: string, options: Record<string, unknown>): Promise<void>;
  /** Called when the daemon is about to exit: release everything still held. */
  shutdown(): Promise<void>;
}

/**
 * A runtime mode, registered as one object (src/runtime/modes.ts): everything the SDK, `delete`, and
 * the CLI's install/check/lab need to know about it. Heavy code stays behind `create`/`cleanupBundle`,
 * so that `start` (which only parses config) does not load it.
 */
export interface RuntimeMode<S = unknown> {
  /** The config's `mode` value, the name of the mode's own table, and the `mode` in bundle state files. */
  name: string;
  /** The RuntimeClass handler `cocoon install` registers for it with the CRI plugin. */
  handler: string;
  /** Its shipped config file, in deploy/config/ and /etc/cocoon/. */
  configFile: string;
  /** One line for humans: what a pod is in this mode. */
  summary: string;
  /** Keys of its table holding host state directories (the lab points them into its private dir). */
  stateKeys: readonly string[];
  /** CRI plugin runtime setting: privileged pods get no host devices (the sandbox has its own). */
  privilegedWithoutHostDevices: boolean;
  /** Parses the mode's config table ({} when absent); throws InvalidArgument naming `where`. */
  parseSettings(section: Table, where: string): S;
  /** Builds the runtime a daemon serves. */
  create(ctx: RuntimeContext<S>, host: RuntimeHost): Promise<Runtime>;
  /** `delete` after the daemon is gone: release what the bundle state names. Idempotent. */
  cleanupBundle(sys: Sys, id: string, bundle: string, state: BundleState): Promise<{ pid: number }>;
}
