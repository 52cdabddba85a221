// The contract between the shim SDK and a concrete runtime (runc mode, vm mode). Requests arrive here
// already converted from wire messages: runtimes never see TTRPC or protobuf task types.
import type { CocoonConfig, RuncConfig } from "./config.js";
import type { Logger } from "../core/log.js";

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
  /** Per-container OCI runtime settings from containerd's runc options (BinaryName, Root, ...). */
  runcOverrides: Partial<RuncConfig>;
  /**
   * Host uid/gid to own the stdio the shim hands the container's processes (runc options IoUid/IoGid).
   * Only runc mode has any: in vm mode the processes' stdio are the agent's pipes inside the guest.
   */
  ioOwner?: IoOwner;
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

export interface RuntimeContext {
  config: CocoonConfig;
  log: Logger;
  events: RuntimeEvents;
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

export type RuntimeFactory = (ctx: RuntimeContext) => Runtime;
