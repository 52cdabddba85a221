// runc mode's lines in `cocoon check`: the OCI runtime CLIs (the configured one is required).
import { fail, firstLine, versionCheck, warn, type CheckResult, type NodeView } from "../../shim/node-check.js";
import type { RuncSettings } from "./settings.js";

function ociRuntime(node: NodeView, bin: "runc" | "crun", configured: string): Promise<CheckResult> {
  const isConfigured = configured === bin || configured.endsWith(`/${bin}`);
  const exe = isConfigured ? configured : bin;
  const fix = `apt-get install ${bin}`;
  return versionCheck(node, bin, [exe, "--version"],
    () => (isConfigured ? fail(bin, `${exe} not found, but the cocoon-runc config uses it`, fix) : warn(bin, `${bin} not found (optional; the cocoon-runc config uses ${configured})`, fix)),
    (out) => `${firstLine(out).replace(/^.*?version\s+/, "")}${isConfigured ? " (used by cocoon-runc)" : ""}`);
}

export async function checkRuncNode(s: RuncSettings, node: NodeView): Promise<CheckResult[]> {
  return Promise.all([ociRuntime(node, "runc", s.binary), ociRuntime(node, "crun", s.binary)]);
}
