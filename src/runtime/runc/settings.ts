// runc mode's `[runc]` table, and the per-container overrides containerd's runc options carry.
import { absolutePath, checkKeys, pick, type Table } from "../../shim/config-fields.js";
import { decodeOptions } from "../../shim/options.js";
import type { IoOwner, RuntimeOptionsAny } from "../../shim/runtime.js";

export interface RuncSettings {
  /** OCI runtime CLI: "runc", "crun" or an absolute path. */
  binary: string;
  /** Base of the OCI runtime's --root; the namespace is appended. */
  root: string;
  systemdCgroup: boolean;
  noPivotRoot: boolean;
  noNewKeyring: boolean;
  criuPath: string;
}

const KEYS = ["binary", "root", "systemd_cgroup", "no_pivot_root", "no_new_keyring", "criu_path"];

export function parseRuncSettings(t: Table, where: string): RuncSettings {
  checkKeys(t, KEYS, where, "runc.");
  const s: RuncSettings = {
    binary: pick(t, "binary", "string", where, "runc", "runc."),
    root: pick(t, "root", "string", where, "/run/containerd/cocoon", "runc."),
    systemdCgroup: pick(t, "systemd_cgroup", "boolean", where, false, "runc."),
    noPivotRoot: pick(t, "no_pivot_root", "boolean", where, false, "runc."),
    noNewKeyring: pick(t, "no_new_keyring", "boolean", where, false, "runc."),
    criuPath: pick(t, "criu_path", "string", where, "", "runc."),
  };
  absolutePath(s.root, "runc.root", where);
  return s;
}

/**
 * The settings for one container: containerd's runc options (a runtime configured like runc-v2, or
 * `ctr run --runc-binary`) override the file's, and may give the stdio an owner (IoUid/IoGid).
 */
export function containerSettings(base: RuncSettings, options: RuntimeOptionsAny | undefined): { runc: RuncSettings; ioOwner?: IoOwner } {
  if (!options?.typeUrl) return { runc: base };
  const o = decodeOptions(options.typeUrl, options.value);
  if (o.kind !== "runc") return { runc: base };
  const w = o.runc;
  const runc: RuncSettings = {
    binary: w.binaryName || base.binary,
    root: w.root || base.root,
    systemdCgroup: w.systemdCgroup || base.systemdCgroup,
    noPivotRoot: w.noPivotRoot || base.noPivotRoot,
    noNewKeyring: w.noNewKeyring || base.noNewKeyring,
    criuPath: w.criuPath || base.criuPath,
  };
  return { runc, ...(w.ioUid || w.ioGid ? { ioOwner: { uid: w.ioUid, gid: w.ioGid } } : {}) };
}
