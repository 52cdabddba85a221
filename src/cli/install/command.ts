// The `cocoon install` and `cocoon uninstall` commands (commander), for the lead's CLI to add with
// program.addCommand(installCommand()) / program.addCommand(uninstallCommand()).
import { Command, InvalidArgumentError } from "commander";
import { install, uninstall } from "./install.js";
import { findSourceRoot, makeLayout, type InstallLayout } from "./layout.js";

/** Accepts true/false/yes/no/1/0 so that `--restart-containerd=$(RESTART_CONTAINERD)` works in manifests. */
export function parseBool(v: string): boolean {
  const s = v.trim().toLowerCase();
  if (["true", "yes", "1", "on"].includes(s)) return true;
  if (["false", "no", "0", "off", ""].includes(s)) return false;
  throw new InvalidArgumentError(`expected true or false, got "${v}"`);
}

interface LayoutFlags {
  hostRoot?: string;
  prefix?: string;
  binDir?: string;
  configDir?: string;
  assetDir?: string;
  containerdConfig?: string;
}

function withLayoutFlags(cmd: Command): Command {
  return cmd
    .option("--host-root <dir>", "the node's root filesystem as seen by this process (/host in the installer DaemonSet)", "/")
    .option("--prefix <dir>", "node path for Cocoon's program files", "/opt/cocoon")
    .option("--bin-dir <dir>", "node path for the containerd-shim-cocoon-v2 and cocoon wrappers (must be on containerd's PATH)", "/usr/local/bin")
    .option("--config-dir <dir>", "node path for the Cocoon config files", "/etc/cocoon")
    .option("--asset-dir <dir>", "node path for the guest kernel and initramfs", "/usr/local/share/cocoon")
    .option("--containerd-config <file>", "node path of containerd's config", "/etc/containerd/config.toml")
    .option("--restart-containerd [bool]", "restart containerd (systemd) if its config changed; needs this explicit consent", parseBool, false)
    .option("--no-label-node", "do not label/unlabel the node even when running in a cluster")
    .option("--dry-run", "print what would be done without changing anything");
}

function layoutOf(f: LayoutFlags): InstallLayout {
  return makeLayout({
    hostRoot: f.hostRoot,
    prefix: f.prefix,
    binDir: f.binDir,
    configDir: f.configDir,
    assetDir: f.assetDir,
    containerdConfig: f.containerdConfig,
  });
}

export function installCommand(): Command {
  return withLayoutFlags(
    new Command("install")
      .description("install Cocoon on this node and register the cocoon and cocoon-runc runtimes with containerd's CRI plugin")
      .option("--source <dir>", "where the built Cocoon package is (default: the one running this command)")
      .option("--node-binary <path>", "Node.js binary to copy into <prefix>/bin (default: the running one)")
      .option("--no-node-binary", "do not copy a Node.js binary (the node's own must be on containerd's PATH)")
      .option("--overwrite-config", "replace Cocoon config files that were edited since the last install")
      .option("--verify <mode>", "check the merged containerd config with `containerd config dump`: auto, always or never", "auto"),
  ).action(async (f: LayoutFlags & Record<string, unknown>) => {
    const verify = String(f["verify"]);
    if (!["auto", "always", "never"].includes(verify)) throw new InvalidArgumentError(`--verify must be auto, always or never`);
    const nodeBinary = f["nodeBinary"] === false ? "" : typeof f["nodeBinary"] === "string" ? f["nodeBinary"] : undefined;
    const report = await install({
      layout: layoutOf(f),
      sourceRoot: typeof f["source"] === "string" ? f["source"] : findSourceRoot(),
      ...(nodeBinary !== undefined ? { nodeBinary } : {}),
      overwriteConfig: !!f["overwriteConfig"],
      verify: verify as "auto" | "always" | "never",
      dryRun: !!f["dryRun"],
      restartContainerd: !!f["restartContainerd"],
      labelNode: f["labelNode"] === false ? "never" : "auto",
    });
    process.stdout.write(`cocoon install: ${f["dryRun"] ? "dry run done" : "done"}${report.warnings.length ? ` with ${report.warnings.length} warning(s)` : ""}\n`);
  });
}

export function uninstallCommand(): Command {
  return withLayoutFlags(
    new Command("uninstall")
      .description("remove exactly what `cocoon install` added on this node")
      .option("--source <dir>", "the Cocoon package, to tell shipped configs from edited ones (default: the one running this command)")
      .option("--label-only", "only remove the node label (used by the installer's preStop hook)"),
  ).action(async (f: LayoutFlags & Record<string, unknown>) => {
    let sourceRoot: string | undefined;
    try {
      sourceRoot = typeof f["source"] === "string" ? f["source"] : findSourceRoot();
    } catch {
      sourceRoot = undefined;
    }
    const report = await uninstall({
      layout: layoutOf(f),
      ...(sourceRoot ? { sourceRoot } : {}),
      labelOnly: !!f["labelOnly"],
      dryRun: !!f["dryRun"],
      restartContainerd: !!f["restartContainerd"],
      labelNode: f["labelNode"] === false ? "never" : "auto",
    });
    process.stdout.write(`cocoon uninstall: ${f["dryRun"] ? "dry run done" : "done"}${report.warnings.length ? ` with ${report.warnings.length} warning(s)` : ""}\n`);
  });
}
