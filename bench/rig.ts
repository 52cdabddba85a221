// One private containerd that knows every runtime under comparison: Debian's runc-v2, Cocoon with
// pod grouping and with node grouping, and optional Cocoon launcher variants (other node flags).
// Cocoon configs are chosen per container with `ctr run --runtime-config-path`, so all rows share
// one containerd and one image store.
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join, posix } from "node:path";
import { startContainerd, type Containerd } from "../test/helpers/containerd.js";
import { BUSYBOX_IMAGE, importImage } from "../test/helpers/image.js";
import { repoRoot, tmpdir } from "../test/helpers/util.js";
import { liveDaemons } from "../src/shim/fast-start.js";
import { liveSpares, poolOf } from "../src/shim/spare-pool.js";
import { findShims } from "./procmem.js";
import type { Variant } from "./cli.js";

export type Grouping = "pod" | "node";

export interface RuntimeUnderTest {
  /** Row label, e.g. `runc-v2`, `cocoon`, `cocoon:jitless`. */
  label: string;
  kind: "runc-v2" | "cocoon";
  /** containerd runtime name given to `ctr run --runtime`. */
  runtime: string;
  /** Cocoon config file per grouping (none for runc-v2). */
  configs?: Record<Grouping, string>;
  /** The shim binary containerd runs for this runtime. */
  binary: string;
}

export interface Rig {
  ctrd: Containerd;
  dir: string;
  runcV2: RuntimeUnderTest;
  cocoon: RuntimeUnderTest;
  variants: RuntimeUnderTest[];
  /** A Cocoon config with pod grouping and spare_daemons = 0 (every new pod's start goes through Node). */
  noSpareConfig: string;
  /** `ctr run` arguments that start `sleep 1000` detached; `config` overrides the runtime's config file. */
  runArgs(rt: RuntimeUnderTest, id: string, opts?: { grouping?: Grouping; pod?: string; config?: string }): string[];
  /** Idle spare daemons the shipped launcher keeps for this containerd. */
  spares(): number[];
  /** Kills and removes a container and its task; never throws. */
  remove(id: string): Promise<void>;
  /** Remembers the sockets of the Cocoon daemons running now, so stop() can remove any they leave. */
  noteDaemons(): void;
  stop(): Promise<string[]>;
}

export const IMAGE = BUSYBOX_IMAGE;
export const POD_ANNOTATION = "io.kubernetes.cri.sandbox-id";
const LAUNCHER = join(repoRoot, "bin", "containerd-shim-cocoon-v2");
const BUNDLE = join(repoRoot, "dist", "containerd-shim-cocoon-v2.cjs");

function writeConfigs(dir: string, tag: string): Record<Grouping, string> {
  const out = {} as Record<Grouping, string>;
  for (const grouping of ["pod", "node"] as const) {
    const path = join(dir, `cocoon-${tag}-${grouping}.toml`);
    // Each config gets its own runc root; node grouping keys its daemon by config path, so every
    // variant needs its own files to get its own daemon.
    writeFileSync(path, `mode = "runc"\ngrouping = "${grouping}"\nlog_level = "info"\n[runc]\nroot = "${join(dir, "runc-" + tag)}"\n`);
    out[grouping] = path;
  }
  return out;
}

const shellQuote = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;

/**
 * A launcher with other node flags (or a given script), under a name containerd maps to its own
 * runtime, io.containerd.cocoon<name>.v2. Node must print nothing on `start`: containerd reads all
 * its output as the address (e.g. --jitless warns unless --no-expose-wasm is given too).
 */
function writeLauncher(binDir: string, v: Variant): string {
  const path = join(binDir, `containerd-shim-cocoon${v.name}-v2`);
  if (v.launcherPath) copyFileSync(v.launcherPath, path);
  else {
    const env = Object.entries(v.env).map(([k, val]) => `${k}=${shellQuote(val)} `).join("");
    writeFileSync(path, `#!/bin/sh\n${env}exec node ${v.nodeFlags.map(shellQuote).join(" ")} ${shellQuote(BUNDLE)} "$@"\n`);
  }
  chmodSync(path, 0o755);
  return path;
}

function canConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}

/**
 * Sockets a Cocoon node daemon of this containerd may have used, by the shim's naming rule. The
 * harness removes per-container sockets, but a node daemon's name derives from its config path.
 */
function nodeDaemonSockets(address: string, configs: string[]): string[] {
  return configs.map((cfg) => join("/run/containerd/s", createHash("sha256").update(posix.join(address, "cocoon-node", "runc", cfg)).digest("hex")));
}

export async function startRig(variants: Variant[]): Promise<Rig> {
  const dir = tmpdir("cocoon-bench-");
  const binDir = join(dir, "bin");
  mkdirSync(binDir);
  const cocoon: RuntimeUnderTest = {
    label: "cocoon", kind: "cocoon", runtime: "io.containerd.cocoon.v2", configs: writeConfigs(dir, "main"), binary: LAUNCHER,
  };
  const runcV2: RuntimeUnderTest = { label: "runc-v2", kind: "runc-v2", runtime: "io.containerd.runc.v2", binary: "/usr/bin/containerd-shim-runc-v2" };
  const vs = variants.map((v): RuntimeUnderTest => ({
    label: `cocoon:${v.name}`, kind: "cocoon", runtime: `io.containerd.cocoon${v.name}.v2`,
    configs: writeConfigs(dir, v.name), binary: writeLauncher(binDir, v),
  }));
  let ctrd: Containerd | undefined;
  try {
    ctrd = await startContainerd({ env: { COCOON_CONFIG: cocoon.configs!.pod }, pathPrepend: [join(repoRoot, "bin"), binDir] });
    await importImage(ctrd, IMAGE);
  } catch (e) {
    await ctrd?.stop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const c = ctrd;
  const sockets = new Set<string>();
  const noSpareConfig = join(dir, "cocoon-main-pod-nospare.toml");
  writeFileSync(noSpareConfig, `mode = "runc"\ngrouping = "pod"\nspare_daemons = 0\nlog_level = "info"\n[runc]\nroot = "${join(dir, "runc-main")}"\n`);
  return {
    ctrd: c, dir, runcV2, cocoon, variants: vs, noSpareConfig,
    spares: () => {
      const key = poolOf(c.address);
      return key ? liveSpares(key) : [];
    },
    runArgs(rt, id, opts = {}) {
      const cfg = opts.config ? ["--runtime-config-path", opts.config] : rt.configs ? ["--runtime-config-path", rt.configs[opts.grouping ?? "pod"]] : [];
      const pod = opts.pod ? ["--annotation", `${POD_ANNOTATION}=${opts.pod}`] : [];
      return ["run", "-d", "--runtime", rt.runtime, ...cfg, ...pod, IMAGE, id, "sleep", "1000"];
    },
    async remove(id) {
      const q = { allowFail: true, timeoutMs: 20_000 };
      await c.ctr(["tasks", "rm", "-f", id], q);
      await c.ctr(["containers", "rm", id], q);
    },
    noteDaemons() {
      const daemons = liveDaemons();
      for (const shim of findShims(c.address)) {
        const sock = shim.kind === "cocoon" ? daemons.get(shim.pid) : undefined;
        if (sock) sockets.add(sock);
      }
    },
    async stop() {
      const report = await c.stop();
      const leftovers = [...report.leftovers];
      const configs = [cocoon, ...vs].map((rt) => rt.configs!.node);
      for (const sock of [...sockets, ...nodeDaemonSockets(c.address, configs)]) {
        if (!existsSync(sock) || (await canConnect(sock))) continue;
        leftovers.push(`stale daemon socket ${sock}`);
        try {
          unlinkSync(sock);
        } catch {
          // raced with its owner
        }
      }
      rmSync(dir, { recursive: true, force: true });
      return leftovers;
    },
  };
}
