// Facts about the host a result was measured on, so numbers from different runs can be compared.
import { existsSync, readFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { run } from "../test/helpers/util.js";
import { repoRoot } from "../test/helpers/util.js";

export interface MachineFacts {
  nproc: number;
  cpuModel: string;
  memTotalMiB: number;
  kernel: string;
  cgroup: "v1" | "v2";
  node: string;
  containerd: string;
  runc: string;
  commit: string;
  /** The `exec node …` line of the shipped launcher. */
  launcher: string;
  loadavg: number[];
}

async function firstLine(cmd: string, args: string[]): Promise<string> {
  try {
    const r = await run(cmd, args, { timeoutMs: 10_000 });
    return (r.stdout || r.stderr).split("\n")[0]!.trim();
  } catch {
    return "unavailable";
  }
}

export async function machineFacts(): Promise<MachineFacts> {
  let launcher = "";
  try {
    launcher = readFileSync(join(repoRoot, "bin", "containerd-shim-cocoon-v2"), "utf8").split("\n").find((l) => /^\s*exec\s/.test(l))?.trim() ?? "";
  } catch {
    // no launcher
  }
  return {
    nproc: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? "unknown",
    memTotalMiB: Math.round(os.totalmem() / 1048576),
    kernel: os.release(),
    cgroup: existsSync("/sys/fs/cgroup/cgroup.controllers") ? "v2" : "v1",
    node: process.version,
    containerd: await firstLine("/usr/bin/containerd", ["--version"]),
    runc: await firstLine("runc", ["--version"]),
    commit: await firstLine("git", ["-C", repoRoot, "rev-parse", "--short", "HEAD"]),
    launcher,
    loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}
