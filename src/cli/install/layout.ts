// Where `cocoon install` puts things on a node, and where it takes them from.
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { dirname, isAbsolute, join, resolve } from "node:path";

export interface InstallLayout {
  /** The node's root as this process sees it ("/" on the node, "/host" in the installer DaemonSet). */
  hostRoot: string;
  /** Node paths below; each is absolute as seen on the node (not prefixed with hostRoot). */
  prefix: string;
  binDir: string;
  configDir: string;
  assetDir: string;
  containerdConfig: string;
}

export const DEFAULT_LAYOUT: InstallLayout = {
  hostRoot: "/",
  prefix: "/opt/cocoon",
  binDir: "/usr/local/bin",
  configDir: "/etc/cocoon",
  assetDir: "/usr/local/share/cocoon",
  containerdConfig: "/etc/containerd/config.toml",
};

export function makeLayout(over: Partial<InstallLayout> = {}): InstallLayout {
  const l: InstallLayout = { ...DEFAULT_LAYOUT };
  for (const [k, v] of Object.entries(over) as [keyof InstallLayout, string | undefined][]) {
    if (v === undefined) continue;
    if (!isAbsolute(v)) throw new Error(`--${k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())} must be an absolute path, got "${v}"`);
    l[k] = resolve(v);
  }
  return l;
}

/** A node path as this process must access it. */
export function onHost(l: InstallLayout, nodePath: string): string {
  return l.hostRoot === "/" ? nodePath : join(l.hostRoot, nodePath);
}

/** Marker file in the prefix; its presence makes the prefix safe to delete on uninstall. */
export const PREFIX_MARKER = ".installed-by-cocoon";
/** First comment line of the wrappers we write into binDir; uninstall only deletes files carrying it. */
export const WRAPPER_MARKER = "# Installed by cocoon install; removed by cocoon uninstall.";

/** The checkout or image holding the built bundles (dist/), bin/, deploy/ and guest/out/. */
export function findSourceRoot(start = process.argv[1] ?? process.cwd()): string {
  let dir: string;
  try {
    dir = dirname(realpathSync(start));
  } catch {
    dir = resolve(start);
  }
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg)) {
      try {
        if (JSON.parse(readFileSync(pkg, "utf8")).name === "cocoon") return dir;
      } catch {
        // unreadable; keep walking
      }
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find the cocoon package (package.json named "cocoon") above ${start}; pass --source`);
    dir = parent;
  }
}
