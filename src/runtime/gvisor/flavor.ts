// How runsc differs from runc, for the runc runtime that drives it (src/runtime/runc/flavor.ts).
//
// A pod is one sandbox: runsc reads the CRI annotations itself. The sandbox (pause) container's
// `create` starts the sandbox process, which takes that `create`'s stdio; every other container of
// the pod names the sandbox id and joins it, and its process (and its gofer) only come to be on
// `start`, which hands its own stdio in. Without the annotations (ctr) each container is a sandbox.
// Every pid file runsc writes on create names the sandbox process, which exits with the status of the
// container that made it; a container that joined it reports its exit through `runsc wait` (started
// when it starts: runsc keeps a joined container's status, but not a gone sandbox's). An
// exec's pid file names a host `runsc-exec` process that waits for the real one and exits with its
// status; signals go through `runsc kill --pid` with the pid inside the sandbox.
import { readFileSync } from "node:fs";
import { Cgroup } from "../../core/cgroups.js";
import { watchOom } from "../../core/oom.js";
import type { FlavorContainer, OciFlavor } from "../runc/flavor.js";
import type { OciSpec } from "../../shim/runtime.js";
import type { Logger } from "../../core/log.js";
import type { Exit } from "../../sys/reaper.js";
import type { Sys } from "../../sys/types.js";
import { spawnChild } from "../../sys/children.js";
import { metricsFromRunscStats, parseRunscStats } from "./stats.js";

export const CONTAINER_TYPE = "io.kubernetes.cri.container-type";
export const SANDBOX_ID = "io.kubernetes.cri.sandbox-id";

/** A container that joins a sandbox another container created (runsc's own rule for "not the root"). */
export function joinsSandbox(spec: OciSpec): boolean {
  const a = spec.annotations ?? {};
  return a[CONTAINER_TYPE] === "container" && !!a[SANDBOX_ID];
}

/** The sandbox process's cgroup, relative to the hierarchy root: memory's on v1, the one path on v2. */
export function sandboxCgroup(pid: number, procRoot = "/proc"): string | undefined {
  let text: string;
  try {
    text = readFileSync(`${procRoot}/${pid}/cgroup`, "utf8");
  } catch {
    return undefined;
  }
  let unified: string | undefined;
  for (const line of text.split("\n")) {
    const i = line.indexOf(":");
    const j = line.indexOf(":", i + 1);
    if (i < 0 || j < 0) continue;
    const controllers = line.slice(i + 1, j);
    const p = line.slice(j + 1);
    if (controllers.split(",").includes("memory")) return p;
    if (controllers === "") unified = p;
  }
  return unified;
}

export interface GvisorFlavorDeps {
  sys: Sys;
  log: Logger;
  globalArgs: readonly string[];
}

export function gvisorFlavor(d: GvisorFlavorDeps): OciFlavor {
  return {
    stateMode: "gvisor",
    globalArgs: d.globalArgs,
    stdioAtStart: joinsSandbox,
    execKillThroughRuntime: true,
    // A sandbox's own container: the sandbox process (reaped, as runc's init) exits with its status.
    followInit: { applies: joinsSandbox, follow: (c, onExit) => followWithWait(c, d, onExit) },
    async stats(c) {
      return metricsFromRunscStats(parseRunscStats(await c.cli.run("events", ["--stats", c.id])));
    },
    // Memory is charged to the sandbox process's cgroup (the pod's, not the container's): an OOM kill
    // there ends the sandbox, so every container in it is told.
    watchOom(c, onOom) {
      const rel = sandboxCgroup(c.pid);
      if (!rel) return () => {};
      return watchOom(new Cgroup(rel), d.sys, onOom);
    },
    unsupported: {
      update: "gVisor mode cannot change a running container's resources (runsc has no `update`)",
      checkpoint: "gVisor mode does not checkpoint containers",
    },
  };
}

/** Runs `runsc wait <id>` until the container exits; its JSON answer carries the exit status. */
function followWithWait(c: FlavorContainer, d: GvisorFlavorDeps, onExit: (e: Exit) => void): () => void {
  const child = spawnChild(c.cli.binaryPath, c.cli.commandArgs("wait", [c.id]), { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  let stopped = false;
  child.stdout!.setEncoding("utf8").on("data", (s: string) => (out += s));
  child.stderr!.setEncoding("utf8").on("data", (s: string) => (err += s));
  const done = (code: number | null, failure?: string) => {
    if (stopped) return;
    stopped = true;
    let status = 255;
    try {
      const v = (JSON.parse(out) as { exitStatus?: unknown }).exitStatus;
      if (code === 0 && typeof v === "number") status = v;
      else throw new Error("no exit status");
    } catch {
      d.log.warn("runsc wait gave no exit status; reporting 255", { id: c.id, code, err: failure ?? err.trim().slice(-300) });
    }
    onExit({ pid: c.pid, status, at: new Date() });
  };
  child.once("error", (e) => done(null, e.message));
  child.once("close", (code) => done(code));
  return () => {
    if (stopped) return;
    stopped = true;
    child.kill("SIGKILL");
  };
}
