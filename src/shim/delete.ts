// `delete`: what containerd runs after every task and after a daemon died, plus the small state
// file runtimes leave in each bundle so that it can clean up without the daemon.
import { unlinkSync } from "node:fs";
import path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { DeleteResponseSchema } from "../gen/containerd/task/v2/shim_pb.js";
import type { ShimFlags } from "./flags.js";
import { canConnect } from "./address.js";
import { sweepSpares } from "./spare-pool.js";
import { forgetDaemon, runDirTrusted, sweepDeadDaemons, sweepStartInputs } from "./fast-start.js";
import { readStateFile, writeStateFile } from "./statefs.js";
import { registeredModes } from "./modes.js";
import type { Sys } from "../sys/types.js";

/** What a runtime leaves in the bundle so `delete` can clean up without the daemon. */
export interface BundleState {
  mode: string;
  [k: string]: unknown;
}

export const STATE_FILE = "cocoon-state.json";

export function writeBundleState(bundle: string, state: BundleState) {
  writeStateFile(path.join(bundle, STATE_FILE), JSON.stringify(state));
}

export function readBundleState(bundle: string): BundleState | undefined {
  try {
    const text = readStateFile(path.join(bundle, STATE_FILE));
    return text === undefined ? undefined : JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * `delete`: containerd runs this after every task and after a daemon died. It must be idempotent,
 * finish within containerd's 5 s, and print only the raw DeleteResponse on stdout.
 */
export async function deleteCommand(flags: ShimFlags, sys: Sys): Promise<Uint8Array> {
  const bundle = flags.bundle || process.cwd();
  const state = readBundleState(bundle);
  let pid = 0;
  const mode = state && registeredModes().find((m) => m.name === state.mode);
  if (state && mode) pid = (await mode.cleanupBundle(sys, flags.id, bundle, state)).pid;
  // The sweeps remove files by what they find in RUN_DIR: only if it is root's alone, or another
  // user could point them at files of their choosing.
  const trusted = runDirTrusted();
  await removeDeadSocket(bundle, trusted);
  if (trusted) {
    sweepSpares();
    sweepDeadDaemons();
    sweepStartInputs();
  }
  const res = create(DeleteResponseSchema, { pid, exitStatus: 128 + 9, exitedAt: timestampFromDate(new Date()) });
  return toBinary(DeleteResponseSchema, res);
}

/**
 * A daemon killed with SIGKILL leaves its socket file behind; remove it once nobody listens there,
 * and with it the daemon's record and every memo naming it, so no later `start` is sent there.
 */
async function removeDeadSocket(bundle: string, runDirTrusted: boolean) {
  let address = "";
  try {
    address = (readStateFile(path.join(bundle, "address")) ?? "").trim();
  } catch {
    return;
  }
  const sock = address.replace(/^unix:\/\//, "");
  if (!sock.startsWith("/") || (await canConnect(sock, 100))) return;
  try {
    if (runDirTrusted) forgetDaemon(sock);
  } catch {}
  try {
    unlinkSync(sock);
  } catch {}
}

