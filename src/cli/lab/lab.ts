// A private, throw-away Kubernetes node runtime: containerd with the CRI plugin, its own root, state and
// sockets in one temp dir (never /run/containerd or /var/lib/containerd), a private CNI bridge, local
// busybox/pause images, and Cocoon's runtime handlers pointing at this checkout's shim. stop() takes it all
// down again, by force where a clean shutdown did not finish.
import { canConnect } from "../../shim/address.js";
import { sweepSpares } from "../../shim/spare-pool.js";
import { isPrivateDir } from "../../shim/statefs.js";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseToml, stringify as stringifyToml } from "smol-toml";
import { parseConfig } from "../../shim/config.js";
import { DEFAULT_ASSET_DIR } from "../../runtime/vm/settings.js";
import { MODES } from "../../runtime/modes.js";
import { CriClient } from "../cri/client.js";
import { runCommand, type CommandResult } from "../install/host.js";
import { shippedConfig } from "../install/install.js";
import { missingCniPlugins, planCniNetwork, readCniNetwork, removeCniNetwork, writeCniConfig, type CniNetwork } from "./cni.js";
import { cocoonRuntime } from "./containerd-config.js";
import { CONTAINERD_BIN, CTR_BIN, launchPrivateContainerd, listDir, privateContainerdPaths, taskShimSockets, type PrivateContainerd } from "./containerd.js";
import { isAlive, mountsUnder, processesUsing } from "./host-state.js";
import { buildImageTar, BUSYBOX_IMAGE, pauseImage, PAUSE_IMAGE } from "./image.js";
import { delay, removeAllPods } from "./pod.js";

export { CONTAINERD_BIN, CTR_BIN };
export const CRI_NAMESPACE = "k8s.io";
export const LAB_DIR_PREFIX = "cocoon-demo-";

/** The handlers, as `cocoon install` names them: one per registered mode, with its shipped config. */
export const HANDLERS: Readonly<Record<string, { mode: string; file: string; stateKeys: readonly string[] }>> = Object.fromEntries(
  MODES.map((m) => [m.handler, { mode: m.name, file: m.configFile, stateKeys: m.stateKeys }]),
);
export type HandlerName = string;

/** Where a handler's mode keeps host state (its `stateKeys`) inside a private instance. */
const privateStatePath = (dir: string, handler: string, key: string) => {
  const h = HANDLERS[handler]!;
  return join(dir, "cocoon", h.stateKeys.length === 1 ? `${handler}-${h.mode}-state` : `${handler}-${h.mode}-${key}`);
};

export interface LabOptions {
  /** The Cocoon checkout or package: `bin/containerd-shim-cocoon-v2` and `deploy/config/`. */
  sourceRoot: string;
  /** Handler for pods that name none; default cocoon-runc. */
  defaultHandler?: HandlerName;
  /** containerd and shim log level `debug`. */
  debug?: boolean;
  /** Progress messages. */
  log?: (msg: string) => void;
  /** Aborting makes start() give up (after cleaning up). */
  signal?: AbortSignal;
  /** How long containerd may take to come up; default 30 s. */
  startTimeoutMs?: number;
}

export interface Lab {
  readonly dir: string;
  /** containerd's gRPC socket, also the CRI endpoint. */
  readonly address: string;
  readonly logPath: string;
  readonly network: CniNetwork;
  /** Root of the pod log directories (kubelet's /var/log/pods). */
  readonly podLogRoot: string;
  /** Cocoon config file per handler. */
  readonly configs: Record<HandlerName, string>;
  readonly cri: CriClient;
  readonly containerdVersion: string;
  /** `ctr --address <ours> -n <namespace> …`. */
  ctr(args: string[], namespace?: string, timeoutMs?: number): Promise<CommandResult>;
  /** Builds and imports the busybox and pause images and waits until the CRI plugin lists them. */
  importImages(): Promise<string[]>;
  /** The last lines of containerd's log. */
  logTail(lines?: number): string;
  /** Removes every pod, stops containerd and removes everything; returns what had to be removed by force. */
  stop(): Promise<string[]>;
}

/**
 * Where the guest kernel and initramfs are: installed by `cocoon install`, else this checkout's guest build.
 * The shipped vm config names the installed location.
 */
export function guestAssetDir(sourceRoot: string): string {
  const built = join(sourceRoot, "guest", "out");
  if (existsSync(join(DEFAULT_ASSET_DIR, "vmlinux")) || existsSync(join(DEFAULT_ASSET_DIR, "vmlinuz"))) return DEFAULT_ASSET_DIR;
  return existsSync(join(built, "vmlinux")) || existsSync(join(built, "vmlinuz")) ? built : DEFAULT_ASSET_DIR;
}

/**
 * Writes the handler's shipped config as `cocoon install` would (guest assets located), with the runtime
 * state inside this private instance, after checking that the shim will accept it.
 */
export function writeCocoonConfig(sourceRoot: string, dir: string, handler: HandlerName, debug: boolean): string {
  const name = HANDLERS[handler]!.file;
  const doc = parseToml(shippedConfig(sourceRoot, name, guestAssetDir(sourceRoot))) as Record<string, unknown>;
  const section = (key: string) => (doc[key] ??= {}) as Record<string, unknown>;
  // The OCI runtime's and the VMs' state must not mix with a node install's /run/containerd/cocoon.
  for (const key of HANDLERS[handler]!.stateKeys) section(HANDLERS[handler]!.mode)[key] = privateStatePath(dir, handler, key);
  if (debug) doc["log_level"] = "debug";
  const file = join(dir, "cocoon", `${handler}.toml`);
  const text = `# deploy/config/${name} of ${sourceRoot}, with state paths inside this private instance.\n` + stringifyToml(doc) + "\n";
  parseConfig(text, file, MODES);
  writeFileSync(file, text);
  return file;
}

/** Shim sockets this instance's pods use (only those of killed shims are left to delete). */
const shimSocketsOf = (dir: string) => taskShimSockets(privateContainerdPaths(dir));

/**
 * Removes whatever of an instance is still there once its containerd is gone: processes that use its
 * directory (shim daemons, and containers below them), OCI runtime state, mounts, the CNI bridge, shim
 * sockets, the directory. Returns what it found; never throws. `patient` first gives shims a moment to exit.
 */
async function removeInstance(dir: string, network: CniNetwork | undefined, shimSockets: Iterable<string>, patient: boolean): Promise<string[]> {
  const forced: string[] = [];
  const deadline = Date.now() + (patient ? 5_000 : 0);
  let stray = processesUsing(dir);
  while (stray.length && Date.now() < deadline) {
    await delay(100);
    stray = processesUsing(dir);
  }
  // Containers whose shim died keep running in the OCI runtime's state.
  for (const h of Object.keys(HANDLERS)) {
    if (HANDLERS[h]!.mode !== "runc") continue;
    const root = privateStatePath(dir, h, "root");
    for (const ns of listDir(root)) {
      for (const id of listDir(join(root, ns))) {
        forced.push(`runc container ${ns}/${id}`);
        await runCommand(["runc", "--root", join(root, ns), "delete", "--force", id], 10_000);
      }
    }
  }
  stray = processesUsing(dir);
  for (const p of stray) {
    forced.push(`process ${p.pid} ${p.args.join(" ").slice(0, 120)}`);
    try {
      process.kill(p.pid, "SIGKILL");
    } catch {
      // gone meanwhile
    }
  }
  const killDeadline = Date.now() + 3_000;
  while (stray.some((p) => isAlive(p.pid)) && Date.now() < killDeadline) await delay(50);
  // Spare daemons killed above (idle, or still booting) leave their pool entries in /run/cocoon.
  sweepSpares();
  for (const m of mountsUnder(dir)) {
    forced.push(`mount ${m}`);
    const r = await runCommand(["umount", m], 10_000);
    if (r.code !== 0) await runCommand(["umount", "-l", m], 10_000);
  }
  if (network) {
    // The bridge outlives its last pod by design; leases would mean a pod's network was never torn down.
    for (const r of await removeCniNetwork(network)) if (!r.startsWith(`bridge ${network.bridge}`) || r.includes("failed")) forced.push(r);
  }
  for (const sock of new Set(shimSockets)) {
    if (!existsSync(sock) || (await canConnect(sock, 1000))) continue;
    forced.push(`shim socket ${sock}`);
    try {
      unlinkSync(sock);
    } catch {
      // raced with its owner
    }
  }
  try {
    rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  } catch (err) {
    forced.push(`could not remove ${dir}: ${(err as Error).message}`);
  }
  return forced;
}

const OWNER_FILE = "owner.pid";

/**
 * Removes instances whose owning process died without cleaning up (SIGKILL, a crash, a reboot leaves only
 * the directory). Returns one line per removed instance.
 */
export async function sweepStaleLabs(): Promise<string[]> {
  const out: string[] = [];
  for (const name of listDir(tmpdir())) {
    if (!name.startsWith(LAB_DIR_PREFIX)) continue;
    const dir = join(tmpdir(), name);
    // Another user can make a directory of that name in /tmp: only one mkdtemp made for root counts.
    if (!isPrivateDir(dir)) continue;
    let owner: number;
    try {
      owner = Number(readFileSync(join(dir, OWNER_FILE), "utf8").trim());
    } catch {
      continue; // not an instance, or one still being set up
    }
    if (!Number.isInteger(owner) || owner <= 0 || isAlive(owner)) continue;
    const network = readCniNetwork(join(dir, "cni", "conf"), join(dir, "cni", "ipam"));
    const found = await removeInstance(dir, network, shimSocketsOf(dir), false);
    out.push(`${dir} (owner pid ${owner} is gone)${found.length ? `: ${found.join("; ")}` : ""}`);
  }
  return out;
}

/** Checks what the lab needs from the host, so that failures name the missing piece. */
export async function labPrerequisites(sourceRoot: string): Promise<string[]> {
  const problems: string[] = [];
  if (process.getuid?.() !== 0) problems.push("must run as root (containerd, mounts, network namespaces)");
  for (const [bin, pkg] of [[CONTAINERD_BIN, "containerd"], [CTR_BIN, "containerd"], ["runc", "runc"], ["ip", "iproute2"]] as const) {
    const r = await runCommand([bin, "--version"], 10_000);
    if (r.spawnError) problems.push(`${bin} not found (apt-get install ${pkg})`);
  }
  const missing = missingCniPlugins();
  if (missing.length) problems.push(`CNI plugins missing in /usr/lib/cni: ${missing.join(", ")} (apt-get install containernetworking-plugins)`);
  if (!existsSync("/bin/busybox")) problems.push("/bin/busybox not found (apt-get install busybox-static)");
  const shim = join(sourceRoot, "bin", "containerd-shim-cocoon-v2");
  if (!existsSync(shim)) problems.push(`${shim} not found`);
  if (!existsSync(join(sourceRoot, "dist", "containerd-shim-cocoon-v2.cjs"))) problems.push(`${join(sourceRoot, "dist")} has no shim bundle: run npm run build`);
  return problems;
}

export async function startLab(o: LabOptions): Promise<Lab> {
  const say = o.log ?? (() => {});
  const defaultHandler = o.defaultHandler ?? "cocoon-runc";
  const dir = mkdtempSync(join(tmpdir(), LAB_DIR_PREFIX));
  const paths = privateContainerdPaths(dir);
  const podLogRoot = join(dir, "pods");
  for (const d of [podLogRoot, join(dir, "cocoon"), join(dir, "images")]) mkdirSync(d, { recursive: true });
  // Lets a later run recognise this instance as abandoned if this process dies without cleaning up.
  writeFileSync(join(dir, OWNER_FILE), `${process.pid}\n`);

  let ctrd: PrivateContainerd | undefined;
  let cri: CriClient | undefined;
  let network: CniNetwork | undefined;
  const shimSockets = new Set<string>();
  let stopping: Promise<string[]> | undefined;

  const logTail = (n = 40) => ctrd?.logTail(n) ?? "";
  const ctr = (args: string[], namespace = CRI_NAMESPACE, timeoutMs = 30_000) => runCommand([CTR_BIN, "--address", paths.address, "-n", namespace, ...args], timeoutMs);

  const noteShimSockets = () => {
    for (const sock of shimSocketsOf(dir)) shimSockets.add(sock);
  };

  const stopImpl = async (): Promise<string[]> => {
    const forced: string[] = [];
    noteShimSockets();
    if (cri && ctrd?.running()) {
      try {
        const r = await removeAllPods(cri, 60_000);
        forced.push(...r.errors);
      } catch (err) {
        forced.push(`removing pods: ${(err as Error).message}`);
      }
    }
    cri?.close();
    noteShimSockets();
    if (ctrd && ctrd.running() && !(await ctrd.stop(10_000))) forced.push(`containerd (pid ${ctrd.pid}) did not exit on SIGTERM`);
    forced.push(...(await removeInstance(dir, network, shimSockets, true)));
    return forced;
  };
  const stop = () => (stopping ??= stopImpl());

  try {
    const configs = Object.fromEntries(Object.keys(HANDLERS).map((h) => [h, writeCocoonConfig(o.sourceRoot, dir, h, !!o.debug)]));
    network = await planCniNetwork({ confDir: join(dir, "cni", "conf"), ipamDir: join(dir, "cni", "ipam") });
    writeCniConfig(network);
    const version = (await runCommand([CONTAINERD_BIN, "--version"], 10_000)).stdout.trim().split(/\s+/)[2] ?? "";
    say(`starting a private containerd ${version} in ${dir}`);
    ctrd = await launchPrivateContainerd({
      dir,
      logLevel: o.debug ? "debug" : "info",
      cri: {
        sandboxImage: PAUSE_IMAGE,
        cniBinDir: network.binDir,
        cniConfDir: network.confDir,
        defaultRuntime: defaultHandler,
        runtimes: Object.fromEntries(MODES.map((m) => [m.handler, cocoonRuntime(configs[m.handler]!, m.privilegedWithoutHostDevices)])),
      },
      pathPrepend: [join(o.sourceRoot, "bin")],
      // Its own process group: a Ctrl-C in the terminal reaches us, and we shut containerd down in order.
      detached: true,
      startTimeoutMs: o.startTimeoutMs ?? 30_000,
      signal: o.signal,
    });
    cri = await CriClient.connect(paths.address, { timeoutMs: 10_000 });
    const client = cri;
    const net = network;

    const importImages = async (): Promise<string[]> => {
      const images = [{ name: BUSYBOX_IMAGE }, pauseImage];
      for (const img of images) {
        const { name, ...opts } = img;
        const file = join(dir, "images", `${name.replace(/[^a-z0-9.-]+/gi, "_")}.tar`);
        buildImageTar(file, name, opts);
        const r = await ctr(["images", "import", file], CRI_NAMESPACE, 120_000);
        if (r.code !== 0) throw new Error(`ctr images import ${name} failed: ${(r.stderr || r.spawnError || "").trim()}`);
      }
      // The CRI plugin learns about imported images from containerd's events, a moment later.
      for (const img of images) {
        const until = Date.now() + 20_000;
        while (!(await client.imageStatus({ image: { image: img.name } }, { timeoutMs: 10_000 })).image) {
          if (Date.now() > until) throw new Error(`the CRI plugin does not list ${img.name} after importing it`);
          await delay(100, o.signal);
        }
      }
      return images.map((i) => i.name);
    };

    return {
      dir,
      address: paths.address,
      logPath: ctrd.logPath,
      network: net,
      podLogRoot,
      configs,
      cri: client,
      containerdVersion: version,
      ctr,
      importImages,
      logTail,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
