// `cocoon install` / `cocoon uninstall` on one node: files into place, the containerd config block, an
// optional containerd restart (only with consent) and the node label when running inside a cluster.
// Install puts files first and edits containerd's config last, so containerd never names a missing shim;
// uninstall goes the other way round.
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  rmdirSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { parse as parseToml } from "smol-toml";
import { parseConfig } from "../../shim/config.js";
import { DEFAULT_ASSET_DIR } from "../../runtime/vm/settings.js";
import { MODES } from "../../runtime/modes.js";
import { ContainerdConfigError, cocoonRuntimes, criRuntimes, mergeContainerdConfig, unmergeContainerdConfig, type RuntimeEntry } from "./containerd-config.js";
import { onNode, restartContainerd, runCommand, type RestartOutcome, type Runner } from "./host.js";
import { PREFIX_MARKER, WRAPPER_MARKER, onHost, type InstallLayout } from "./layout.js";
import { inClusterAccess, setNodeLabel, type ClusterAccess } from "./node-label.js";

export const BACKUP_SUFFIX = ".cocoon-backup";
const CONFIG_FILES = MODES.map((m) => m.configFile);
/**
 * guest/out entries the VM runtime uses: kernels, initramfs images (whatever their compression), the build
 * manifest, and the guest root: the EROFS image (virtio-pmem) and the directory of the 9p variant.
 * Build leftovers are not copied.
 */
export const GUEST_ASSET = /^(vmlinuz|vmlinux|manifest\.json|rootfs|rootfs\.erofs|initramfs[-\w]*\.cpio(\.\w+)?)$/;
/** What the build puts in dist/: the bundles, and the names the launcher sources (start-protocol.sh). */
const BUNDLES = ["containerd-shim-cocoon-v2.cjs", "containerd-shim-cocoon-v2-full.cjs", "cocoon.cjs", "cocoon-agent.cjs", "start-protocol.sh"];
const LAUNCHERS = ["containerd-shim-cocoon-v2", "cocoon"];

export interface CommonOptions {
  layout: InstallLayout;
  dryRun?: boolean;
  /** Consent to `systemctl restart containerd` when the config changed. */
  restartContainerd?: boolean;
  /** Label/unlabel the node: "auto" does it when running in a cluster. */
  labelNode?: "auto" | "never";
  /** Progress lines (default: stdout). */
  log?: (line: string) => void;
  // Injection points for tests.
  run?: Runner;
  restart?: (consent: boolean) => Promise<RestartOutcome>;
  cluster?: () => ClusterAccess | undefined;
}

export interface InstallOptions extends CommonOptions {
  /** Checkout/image with dist/, bin/, deploy/config/, node_modules/{koffi,@koromix/koffi-*} and guest/out/. */
  sourceRoot: string;
  /** Node.js binary copied to <prefix>/bin/node so the shim does not depend on the node's own; "" = skip. */
  nodeBinary?: string;
  /** Replace existing Cocoon config files that differ from the shipped ones (default: keep them). */
  overwriteConfig?: boolean;
  /** Check the merged containerd config with `containerd config dump`: "auto" when containerd is found. */
  verify?: "auto" | "always" | "never";
}

export interface UninstallOptions extends CommonOptions {
  /** Only remove the node label (the installer's preStop hook). */
  labelOnly?: boolean;
}

export interface Report {
  /** What was done (or, with dryRun, would be done). */
  actions: string[];
  warnings: string[];
  /** The containerd config changed. */
  containerdConfigChanged: boolean;
  restart?: RestartOutcome;
  labeled: boolean;
}

/** File operations that are logged, and skipped in dry-run mode. */
class Ops {
  readonly actions: string[] = [];
  constructor(
    private readonly dryRun: boolean,
    private readonly log: (line: string) => void,
  ) {}

  note(what: string): void {
    const line = this.dryRun ? `would ${what}` : what;
    this.actions.push(line);
    this.log(line);
  }

  mkdir(p: string): void {
    if (existsSync(p)) return;
    this.note(`create directory ${p}`);
    if (!this.dryRun) mkdirSync(p, { recursive: true });
  }

  /** Via a temporary name and rename, so a running executable is never written in place (ETXTBSY). */
  copyFile(src: string, dst: string, mode?: number): void {
    this.note(`copy ${src} -> ${dst}`);
    if (this.dryRun) return;
    const tmp = `${dst}.cocoon-tmp`;
    copyFileSync(src, tmp);
    chmodSync(tmp, mode ?? statSync(src).mode & 0o7777);
    renameSync(tmp, dst);
  }

  copyDir(src: string, dst: string): void {
    this.note(`copy directory ${src} -> ${dst}`);
    if (this.dryRun) return;
    rmSync(dst, { recursive: true, force: true });
    cpSync(src, dst, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
  }

  writeFile(p: string, text: string, mode: number, what = `write ${p}`): void {
    this.note(what);
    if (this.dryRun) return;
    const tmp = `${p}.cocoon-tmp`;
    writeFileSync(tmp, text, { mode });
    chmodSync(tmp, mode);
    renameSync(tmp, p);
  }

  remove(p: string, what = `remove ${p}`): void {
    if (!exists(p)) return;
    this.note(what);
    if (this.dryRun) return;
    try {
      rmSync(p, { recursive: true, force: true });
    } catch (err) {
      // A directory that is a mount point here (the installer DaemonSet mounts the prefix) can only be emptied.
      if ((err as NodeJS.ErrnoException).code !== "EBUSY") throw err;
      for (const e of readdirSync(p)) rmSync(join(p, e), { recursive: true, force: true });
    }
  }

  rmdirIfEmpty(p: string): void {
    try {
      if (readdirSync(p).length) return;
    } catch {
      return;
    }
    this.note(`remove empty directory ${p}`);
    if (!this.dryRun) rmdirSync(p);
  }
}

function exists(p: string): boolean {
  return lstatSync(p, { throwIfNoEntry: false }) !== undefined;
}

/** The installed @koromix/koffi-<platform> packages holding koffi's native module. */
function koffiNativePackages(src: string): string[] {
  return (listDir(join(src, "node_modules", "@koromix")) ?? []).filter((n) => n.startsWith("koffi-")).sort();
}

function listDir(p: string): string[] | undefined {
  try {
    return readdirSync(p);
  } catch {
    return undefined;
  }
}

function readIfExists(p: string): string | undefined {
  try {
    return readFileSync(p, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/** The wrapper containerd finds on its PATH: puts our node first on PATH and runs the launcher in the prefix. */
export function wrapperScript(prefix: string, launcher: string): string {
  return `#!/bin/sh\n${WRAPPER_MARKER}\nPATH=${prefix}/bin:$PATH\nexport PATH\nexec ${prefix}/bin/${launcher} "$@"\n`;
}

/**
 * A shipped Cocoon config as install writes it: guest asset paths moved to the asset dir, and the initrd
 * named as the guest build's manifest records it (the build chooses the compression).
 */
export function shippedConfig(sourceRoot: string, name: string, assetDir: string): string {
  let text = readFileSync(join(sourceRoot, "deploy", "config", name), "utf8");
  if (assetDir !== DEFAULT_ASSET_DIR) text = text.split(`"${DEFAULT_ASSET_DIR}/`).join(`"${assetDir}/`);
  const built = guestInitrd(sourceRoot);
  if (built) text = text.replace(/^initrd = "([^"]*)"$/m, (line, path: string) => (dirname(path) === assetDir ? `initrd = ${JSON.stringify(`${assetDir}/${built}`)}` : line));
  return text;
}

/** The full initramfs file name from guest/out/manifest.json, if there is a guest build. */
function guestInitrd(sourceRoot: string): string | undefined {
  try {
    const m = JSON.parse(readFileSync(join(sourceRoot, "guest", "out", "manifest.json"), "utf8")) as { initramfs?: { file?: unknown }; initramfs9p?: { file?: unknown } };
    // The small initramfs that mounts the shared rootfs/ boots faster; the all-in-one one is the fallback.
    const file = m.initramfs9p?.file ?? m.initramfs?.file;
    return typeof file === "string" && GUEST_ASSET.test(file) ? file : undefined;
  } catch {
    return undefined;
  }
}

async function maybeLabel(o: CommonOptions, add: boolean, warnings: string[], log: (l: string) => void): Promise<boolean> {
  if ((o.labelNode ?? "auto") === "never") return false;
  const access = (o.cluster ?? inClusterAccess)();
  if (!access) return false;
  const what = `${add ? "label" : "unlabel"} node ${access.nodeName} (cocoon.io/runtime${add ? "=true" : ""})`;
  if (o.dryRun) {
    log(`would ${what}`);
    return false;
  }
  try {
    await setNodeLabel(access, add);
    log(what);
    return true;
  } catch (err) {
    warnings.push((err as Error).message);
    return false;
  }
}

async function maybeRestart(o: CommonOptions, changed: boolean, log: (l: string) => void): Promise<RestartOutcome | undefined> {
  if (!changed) return undefined;
  const outcome = o.restart
    ? await o.restart(!!o.restartContainerd)
    : await restartContainerd({ layout: o.layout, consent: !!o.restartContainerd, dryRun: !!o.dryRun, ...(o.run ? { run: o.run } : {}) });
  log(outcome.message);
  return outcome;
}

/**
 * Checks a candidate config with the node's containerd (`config dump` parses it the way the daemon will,
 * without starting anything) and that our runtimes come out with their options. Returns an error text.
 */
export async function verifyWithContainerd(
  layout: InstallLayout,
  nodeConfigPath: string,
  runtimes: RuntimeEntry[],
  run: Runner = runCommand,
): Promise<string | undefined> {
  const res = await run(onNode(layout, ["containerd", "--config", nodeConfigPath, "config", "dump"]), 30_000);
  if (res.spawnError) return res.spawnError;
  if (res.code !== 0) return `containerd config dump failed: ${res.stderr.trim().split("\n").slice(-3).join(" | ")}`;
  let dumped: Record<string, unknown>;
  try {
    dumped = parseToml(res.stdout) as Record<string, unknown>;
  } catch (err) {
    return `cannot parse containerd config dump output: ${(err as Error).message.split("\n")[0]}`;
  }
  const got = criRuntimes(dumped);
  for (const r of runtimes) {
    const g = got.find((x) => x.name === r.name);
    if (!g || g.runtimeType !== "io.containerd.cocoon.v2" || g.configPath !== r.configPath) {
      return `containerd does not see runtime "${r.name}" with ConfigPath ${r.configPath} in the merged config`;
    }
  }
  return undefined;
}

async function hasContainerd(layout: InstallLayout, run: Runner): Promise<boolean> {
  const res = await run(onNode(layout, ["containerd", "--version"]), 10_000);
  return !res.spawnError && res.code === 0;
}

export async function install(o: InstallOptions): Promise<Report> {
  const log = o.log ?? ((l: string) => process.stdout.write(l + "\n"));
  const ops = new Ops(!!o.dryRun, log);
  const warnings: string[] = [];
  const l = o.layout;
  const src = o.sourceRoot;
  const h = (p: string) => onHost(l, p);

  // Check the inputs before touching anything.
  const missing = [...BUNDLES.map((b) => join(src, "dist", b)), ...LAUNCHERS.map((b) => join(src, "bin", b)), ...CONFIG_FILES.map((c) => join(src, "deploy", "config", c))].filter(
    (p) => !existsSync(p),
  );
  const koffi = join(src, "node_modules", "koffi");
  if (!existsSync(koffi)) missing.push(koffi);
  else if (!koffiNativePackages(src).length) missing.push(join(src, "node_modules", "@koromix", "koffi-<platform>"));
  if (missing.length) {
    const msg = `missing in ${src}: ${missing.join(", ")} (build first with \`npm run build\`)`;
    if (!o.dryRun) throw new Error(msg);
    warnings.push(msg);
  }
  const runtimes = cocoonRuntimes(l.configDir);
  const ctrdPath = h(l.containerdConfig);
  const original = readIfExists(ctrdPath);
  const merge = mergeContainerdConfig(original, runtimes); // throws ContainerdConfigError on refusal
  warnings.push(...merge.warnings);

  // 1. Program files under the prefix.
  const prefix = h(l.prefix);
  for (const d of ["", "bin", "dist", "node_modules"]) ops.mkdir(join(prefix, d));
  for (const b of BUNDLES) {
    if (existsSync(join(src, "dist", b))) ops.copyFile(join(src, "dist", b), join(prefix, "dist", b));
    if (existsSync(join(src, "dist", b + ".map"))) ops.copyFile(join(src, "dist", b + ".map"), join(prefix, "dist", b + ".map"));
  }
  for (const b of LAUNCHERS) if (existsSync(join(src, "bin", b))) ops.copyFile(join(src, "bin", b), join(prefix, "bin", b), 0o755);
  if (existsSync(koffi)) ops.copyDir(koffi, join(prefix, "node_modules", "koffi"));
  // koffi's prebuilt native module comes in a per-platform package next to it.
  const natives = koffiNativePackages(src);
  if (natives.length) ops.mkdir(join(prefix, "node_modules", "@koromix"));
  for (const n of natives) ops.copyDir(join(src, "node_modules", "@koromix", n), join(prefix, "node_modules", "@koromix", n));
  const nodeBinary = o.nodeBinary ?? process.execPath;
  if (nodeBinary) ops.copyFile(nodeBinary, join(prefix, "bin", "node"), 0o755);
  ops.writeFile(join(prefix, PREFIX_MARKER), JSON.stringify({ layout: l, installedAt: new Date().toISOString() }, null, 2) + "\n", 0o644);

  // 2. Wrappers on containerd's PATH.
  ops.mkdir(h(l.binDir));
  for (const b of LAUNCHERS) {
    const p = join(h(l.binDir), b);
    const existing = readIfExists(p);
    if (existing !== undefined && !existing.includes(WRAPPER_MARKER)) {
      warnings.push(`${p} exists and was not written by cocoon install; left alone`);
      continue;
    }
    ops.writeFile(p, wrapperScript(l.prefix, b), 0o755);
  }

  // 3. Cocoon configs (an operator's edits are kept unless asked otherwise).
  ops.mkdir(h(l.configDir));
  for (const c of CONFIG_FILES) {
    const want = shippedConfig(src, c, l.assetDir);
    parseConfig(want, c, MODES); // never install a config the shim would reject
    const p = join(h(l.configDir), c);
    const have = readIfExists(p);
    if (have === want) continue;
    if (have !== undefined && !o.overwriteConfig) {
      warnings.push(`${p} differs from the shipped config; kept (use --overwrite-config to replace it)`);
      continue;
    }
    ops.writeFile(p, want, 0o644);
  }

  // 4. Guest assets for VM mode.
  const guestOut = join(src, "guest", "out");
  if (existsSync(join(guestOut, "vmlinuz"))) {
    ops.mkdir(h(l.assetDir));
    for (const a of readdirSync(guestOut).filter((e) => GUEST_ASSET.test(e)).sort()) {
      const from = join(guestOut, a);
      if (statSync(from).isDirectory()) ops.copyDir(from, join(h(l.assetDir), a));
      else ops.copyFile(from, join(h(l.assetDir), a), 0o644);
    }
  } else {
    warnings.push(`no guest assets in ${guestOut} (run guest/build.sh); the "cocoon" VM runtime needs them`);
  }

  // 5. containerd's config, last.
  const changed = !merge.unchanged;
  if (changed) {
    const mode = original === undefined ? 0o644 : statSync(ctrdPath).mode & 0o7777;
    ops.mkdir(dirname(ctrdPath));
    const backup = ctrdPath + BACKUP_SUFFIX;
    if (original !== undefined && !existsSync(backup)) ops.writeFile(backup, original, mode, `back up ${ctrdPath} to ${backup}`);
    const verify = o.verify ?? "auto";
    const run = o.run ?? runCommand;
    if (o.dryRun) {
      ops.note("check the merged config with containerd config dump");
    } else if (verify === "always" || (verify === "auto" && (await hasContainerd(l, run)))) {
      // Next to the real file, so that relative `imports` resolve the same way.
      const candidate = `${ctrdPath}.cocoon-verify`;
      writeFileSync(candidate, merge.text, { mode: 0o600 });
      try {
        const problem = await verifyWithContainerd(l, `${l.containerdConfig}.cocoon-verify`, runtimes, run);
        if (problem) throw new ContainerdConfigError(`refusing to write ${ctrdPath}: ${problem}`);
        ops.note(`check the merged config with containerd config dump: ok`);
      } finally {
        unlinkSync(candidate);
      }
    }
    ops.writeFile(
      ctrdPath,
      merge.text,
      mode,
      merge.created ? `write ${ctrdPath} (new, with the cocoon runtimes)` : `add the cocoon runtimes to ${ctrdPath}${merge.addedDefaultRunc ? " (with the default runc runtime restated)" : ""}`,
    );
  } else {
    log(`${ctrdPath} already has the cocoon runtimes`);
  }

  const restart = await maybeRestart(o, changed, log);
  const labeled = await maybeLabel(o, true, warnings, log);
  for (const w of warnings) log(`warning: ${w}`);
  return { actions: ops.actions, warnings, containerdConfigChanged: changed, ...(restart ? { restart } : {}), labeled };
}

export async function uninstall(o: UninstallOptions & { sourceRoot?: string }): Promise<Report> {
  const log = o.log ?? ((l: string) => process.stdout.write(l + "\n"));
  const ops = new Ops(!!o.dryRun, log);
  const warnings: string[] = [];
  const l = o.layout;
  const h = (p: string) => onHost(l, p);

  // No new cocoon pods here from now on.
  const labeled = await maybeLabel(o, false, warnings, log);
  if (o.labelOnly) return { actions: ops.actions, warnings, containerdConfigChanged: false, labeled };

  // 1. containerd's config first, so containerd stops offering the runtimes before the shim goes away.
  const ctrdPath = h(l.containerdConfig);
  const current = readIfExists(ctrdPath);
  let changed = false;
  if (current !== undefined) {
    const un = unmergeContainerdConfig(current);
    if (un.removed) {
      changed = true;
      if (un.text === undefined) ops.remove(ctrdPath, `remove ${ctrdPath} (it was written by cocoon install)`);
      else ops.writeFile(ctrdPath, un.text, statSync(ctrdPath).mode & 0o7777, `remove the cocoon runtimes from ${ctrdPath}`);
    }
    const backup = ctrdPath + BACKUP_SUFFIX;
    const saved = readIfExists(backup);
    if (saved !== undefined) {
      if (saved === (un.text ?? "")) ops.remove(backup, `remove ${backup} (the restored config is identical)`);
      else warnings.push(`${backup} (the config as it was before the first cocoon install) differs from the restored ${ctrdPath}; kept for you to compare`);
    }
  }
  const restart = await maybeRestart(o, changed, log);

  // 2. Wrappers, only if they are ours.
  for (const b of LAUNCHERS) {
    const p = join(h(l.binDir), b);
    const text = readIfExists(p);
    if (text === undefined) continue;
    if (text.includes(WRAPPER_MARKER)) ops.remove(p);
    else warnings.push(`${p} was not written by cocoon install; left alone`);
  }

  // 3. Configs, unless the operator changed them.
  for (const c of CONFIG_FILES) {
    const p = join(h(l.configDir), c);
    const have = readIfExists(p);
    if (have === undefined) continue;
    let shipped: string | undefined;
    try {
      shipped = o.sourceRoot ? shippedConfig(o.sourceRoot, c, l.assetDir) : undefined;
    } catch {
      shipped = undefined;
    }
    if (have === shipped) ops.remove(p);
    else warnings.push(shipped === undefined ? `${p} kept: cannot compare it with the shipped config (no --source)` : `${p} was changed after install; kept`);
  }
  ops.rmdirIfEmpty(h(l.configDir));

  // 4. Guest assets and 5. the prefix.
  for (const a of (listDir(h(l.assetDir)) ?? []).filter((e) => GUEST_ASSET.test(e)).sort()) ops.remove(join(h(l.assetDir), a));
  ops.rmdirIfEmpty(h(l.assetDir));
  const prefix = h(l.prefix);
  if (existsSync(join(prefix, PREFIX_MARKER))) ops.remove(prefix);
  else if (existsSync(prefix)) warnings.push(`${prefix} has no ${PREFIX_MARKER} marker, so it was not installed by cocoon; left alone`);

  // 6. VM templates of the shipped config's state dir: their RAM files live in host memory (tmpfs)
  // until removed. Running clones keep their own mapping of a removed file.
  ops.remove(h(DEFAULT_TEMPLATE_DIR), `remove ${h(DEFAULT_TEMPLATE_DIR)} (VM template snapshots held in host memory)`);

  for (const w of warnings) log(`warning: ${w}`);
  return { actions: ops.actions, warnings, containerdConfigChanged: changed, ...(restart ? { restart } : {}), labeled };
}

/** Where the shipped vm-mode config (default state_dir) keeps its VM templates. */
const DEFAULT_TEMPLATE_DIR = "/run/cocoon/vm/templates";
