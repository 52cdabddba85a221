// What sets one runc-compatible CLI apart from runc when this runtime drives it: extra global flags,
// where a container's stdio goes, how its init's exit and its stats are learnt. runc mode uses the
// defaults; another mode (gVisor's runsc) passes its own flavor to RuncRuntime.
import type { OciCli } from "../../core/oci-cli.js";
import type { Exit } from "../../sys/reaper.js";
import type { OciSpec, Stats } from "../../shim/runtime.js";

/** A container as the flavor's hooks see it. */
export interface FlavorContainer {
  id: string;
  namespace: string;
  bundle: string;
  spec: OciSpec;
  /** The pid the runtime wrote to its pid file on create. */
  pid: number;
  /** The client the runtime drives this container with (binary, --root and global flags). */
  cli: OciCli;
}

export interface OciFlavor {
  /** `mode` written to the bundle state, which picks the cleanup `delete` runs when the daemon is gone. */
  stateMode: string;
  /** Flags put before the verb on every call, after --root and --log. */
  globalArgs: readonly string[];
  /**
   * Whether `start` rather than `create` gets the init's stdio (runsc: a container joining a sandbox
   * that another container's `create` made; its process only comes to exist on `start`).
   */
  stdioAtStart(spec: OciSpec): boolean;
  /**
   * Follows the init's exit from `start` on for containers whose pid file names no process of their
   * own (runsc: a container joining a sandbox gets the sandbox's pid). Other inits are reaped by pid.
   */
  followInit?: {
    applies(spec: OciSpec): boolean;
    /** Returns how to stop following. */
    follow(c: FlavorContainer, onExit: (e: Exit) => void): () => void;
  };
  /**
   * Whether exec processes are signalled through the runtime (`kill --pid <pid in the container>`)
   * because the host pid it reports is only a process waiting for the real one.
   */
  execKillThroughRuntime: boolean;
  /** Stats from the runtime instead of the container's cgroup. */
  stats?(c: FlavorContainer): Promise<Stats>;
  /** OOM notifications from somewhere else than the container's cgroup; returns how to stop. */
  watchOom?(c: FlavorContainer, onOom: () => void): () => void;
  /** Task methods the CLI lacks, each with the message the Unimplemented error carries. */
  unsupported: Partial<Record<"update" | "checkpoint", string>>;
}

export const RUNC_FLAVOR: OciFlavor = {
  stateMode: "runc",
  globalArgs: [],
  stdioAtStart: () => false,
  execKillThroughRuntime: false,
  unsupported: {},
};
