// The config of a private containerd: every path (root, state, sockets, opt, CNI) inside one directory, so
// that it can run next to a node's own containerd and be removed without a trace. Used by `cocoon demo` and
// by the integration-test harness, which is why the CRI settings are parameters.
import { parse as parseToml, stringify as stringifyToml } from "smol-toml";
import { CRI_PLUGIN, RUNTIME_TYPE } from "../install/containerd-config.js";

export type TomlTable = Record<string, unknown>;

export interface PrivateContainerdPaths {
  root: string;
  state: string;
  temp: string;
  /** containerd's "opt" plugin dir; it defaults to /opt/containerd. */
  opt: string;
  /** gRPC socket (also the CRI endpoint when the CRI plugin is on). */
  address: string;
  ttrpcAddress: string;
}

export interface CriRuntimeEntry {
  runtimeType: string;
  /** The runtime's `options` table: `ConfigPath` for Cocoon, `Root`/`BinaryName` for runc. */
  options?: Record<string, unknown>;
  podAnnotations?: string[];
  privilegedWithoutHostDevices?: boolean;
}

export interface CriSettings {
  sandboxImage: string;
  cniBinDir: string;
  cniConfDir: string;
  /** By handler name (the RuntimeClass handler). */
  runtimes: Record<string, CriRuntimeEntry>;
  /** Handler for pods that name none; must be one of `runtimes`. */
  defaultRuntime: string;
  /** Hosts without AppArmor need nothing here; containerd detects that itself. */
  disableApparmor?: boolean;
}

export interface PrivateContainerdOptions {
  logLevel?: "debug" | "info" | "warn" | "error";
  /** Without it the CRI plugin is disabled. */
  cri?: CriSettings;
}

function runtimeTable(r: CriRuntimeEntry): TomlTable {
  return {
    runtime_type: r.runtimeType,
    ...(r.podAnnotations?.length ? { pod_annotations: r.podAnnotations } : {}),
    ...(r.privilegedWithoutHostDevices ? { privileged_without_host_devices: true } : {}),
    ...(r.options && Object.keys(r.options).length ? { options: r.options } : {}),
  };
}

function runtimeTables(runtimes: Record<string, CriRuntimeEntry>): TomlTable {
  return Object.fromEntries(Object.entries(runtimes).map(([name, r]) => [name, runtimeTable(r)]));
}

/** Only the CRI plugin's runtimes, as a table to merge over a containerd config (the test harness's). */
export function criRuntimesConfig(runtimes: Record<string, CriRuntimeEntry>): TomlTable {
  return { plugins: { [CRI_PLUGIN]: { containerd: { runtimes: runtimeTables(runtimes) } } } };
}

/** A Cocoon handler entry, as `cocoon install` registers it but with its own config file. */
export function cocoonRuntime(configPath: string, privilegedWithoutHostDevices = false): CriRuntimeEntry {
  return { runtimeType: RUNTIME_TYPE, podAnnotations: ["io.cocoon.*"], privilegedWithoutHostDevices, options: { ConfigPath: configPath } };
}

/** containerd config (version 2) as a TOML table. */
export function privateContainerdConfig(p: PrivateContainerdPaths, o: PrivateContainerdOptions = {}): TomlTable {
  const cfg: TomlTable = {
    version: 2,
    root: p.root,
    state: p.state,
    temp: p.temp,
    grpc: { address: p.address },
    ttrpc: { address: p.ttrpcAddress },
    debug: { level: o.logLevel ?? "info" },
    plugins: { "io.containerd.internal.v1.opt": { path: p.opt } } as TomlTable,
  };
  const cri = o.cri;
  if (!cri) {
    cfg["disabled_plugins"] = [CRI_PLUGIN];
    return cfg;
  }
  if (!(cri.defaultRuntime in cri.runtimes)) throw new Error(`default runtime "${cri.defaultRuntime}" is not among the runtimes (${Object.keys(cri.runtimes).join(", ")})`);
  (cfg["plugins"] as TomlTable)[CRI_PLUGIN] = {
    sandbox_image: cri.sandboxImage,
    // Without CAP_SYS_RESOURCE (containers, some sandboxes) runc cannot set the -998 the CRI plugin asks for.
    restrict_oom_score_adj: true,
    ...(cri.disableApparmor ? { disable_apparmor: true } : {}),
    // Network namespaces go below our state dir instead of /var/run/netns.
    netns_mounts_under_state_dir: true,
    cni: { bin_dir: cri.cniBinDir, conf_dir: cri.cniConfDir },
    containerd: {
      snapshotter: "overlayfs",
      default_runtime_name: cri.defaultRuntime,
      runtimes: runtimeTables(cri.runtimes),
    },
  };
  return cfg;
}

function isTable(v: unknown): v is TomlTable {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** Tables merge key by key; any other value in `over` replaces the one in `base`. */
export function mergeToml(base: TomlTable, over: TomlTable): TomlTable {
  const out: TomlTable = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isTable(b) && isTable(v) ? mergeToml(b, v) : v;
  }
  return out;
}

/** Renders the config, with `extraToml` (TOML text) merged over it. */
export function renderContainerdConfig(cfg: TomlTable, extraToml?: string): string {
  const merged = extraToml ? mergeToml(cfg, parseToml(extraToml) as TomlTable) : cfg;
  return stringifyToml(merged) + "\n";
}
