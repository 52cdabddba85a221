// gVisor mode's `[gvisor]` table.
import { absolutePath, checkKeys, oneOf, pick, type Table } from "../../shim/config-fields.js";
import type { NetworkSetting } from "./network.js";
import type { PlatformSetting } from "./platform.js";

export interface GvisorSettings {
  /** runsc: a name on PATH or an absolute path. */
  binary: string;
  /** Base of runsc's --root; the containerd namespace is appended. All containers of a pod share it. */
  root: string;
  /** "auto": KVM if a bounded probe sandbox runs under it, else ptrace (platform.ts). */
  platform: PlatformSetting;
  /** "auto": runsc's netstack ("sandbox") unless this runsc cannot use it on this kernel, then "host" (network.ts). */
  network: NetworkSetting;
  /** Where the platform probe runs and its answer is cached. */
  stateDir: string;
  systemdCgroup: boolean;
  /** A directory for runsc's debug logs (--debug --debug-log=<dir>/), "" for none. */
  debugLog: string;
}

const KEYS = ["binary", "root", "platform", "network", "state_dir", "systemd_cgroup", "debug_log"];

export function parseGvisorSettings(t: Table, where: string): GvisorSettings {
  checkKeys(t, KEYS, where, "gvisor.");
  const s: GvisorSettings = {
    binary: pick(t, "binary", "string", where, "runsc", "gvisor."),
    root: pick(t, "root", "string", where, "/run/containerd/runsc-cocoon", "gvisor."),
    platform: oneOf(pick(t, "platform", "string", where, "auto", "gvisor."), ["auto", "kvm", "ptrace"] as const, "gvisor.platform", where),
    network: oneOf(pick(t, "network", "string", where, "auto", "gvisor."), ["auto", "sandbox", "host"] as const, "gvisor.network", where),
    stateDir: pick(t, "state_dir", "string", where, "/run/cocoon/gvisor", "gvisor."),
    systemdCgroup: pick(t, "systemd_cgroup", "boolean", where, false, "gvisor."),
    debugLog: pick(t, "debug_log", "string", where, "", "gvisor."),
  };
  absolutePath(s.root, "gvisor.root", where);
  absolutePath(s.stateDir, "gvisor.state_dir", where);
  absolutePath(s.debugLog, "gvisor.debug_log", where, true);
  return s;
}
