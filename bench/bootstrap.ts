// Times the shim `start` command on its own, outside containerd: how long containerd waits for the
// address, and then until the daemon it launched answers its first TTRPC call (containerd's next
// step is Create, which cannot be served earlier). Baselines split the cost into bare Node start-up
// and loading the bundle.
import { spawnSync } from "node:child_process";
import { constants, mkdirSync, openSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { Socket } from "node:net";
import { join } from "node:path";
import { Code, TtrpcClient, TtrpcError } from "../src/ttrpc/index.js";
import { run, sleep } from "../test/helpers/util.js";
import { listProcesses } from "../test/helpers/procfs.js";
import type { RuntimeUnderTest } from "./rig.js";

export interface BootstrapSamples {
  /** Wall time of `<shim> … start` until it exits, ms. */
  start: number[];
  /** From launching `start` until its daemon answers a TTRPC call, ms. */
  ready: number[];
}

export interface BootstrapResult {
  runtimes: Record<string, BootstrapSamples>;
  /** Reference commands: bare `node -e 0` with the launcher's flags, `-v` of each shim (loads it, does nothing). */
  baselines: Record<string, number[]>;
}

const TASK_SERVICE = "containerd.task.v2.Task";
const RETRY_CODES = new Set<number>([Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELLED]);

/** The `exec node …` line of a launcher script, so baselines use the same interpreter flags. */
export function launcherNodeFlags(launcherText: string): string[] {
  const line = launcherText.split("\n").find((l) => /^\s*exec\s+node\b/.test(l)) ?? "";
  return [...line.matchAll(/'([^']*)'|"([^"]*)"|(\S+)/g)]
    .map((m) => m[1] ?? m[2] ?? m[3]!)
    .slice(2)
    .filter((a) => a.startsWith("--"));
}

async function timeCommand(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const t0 = performance.now();
  const res = await run(cmd, args, { env, timeoutMs: 20_000 });
  const ms = performance.now() - t0;
  if (res.code !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${res.code}: ${res.stdout}${res.stderr}`);
  return ms;
}

/** Polls until the daemon at `socket` answers any TTRPC call (an error reply counts). */
async function untilServing(socket: string, deadline: number): Promise<void> {
  for (;;) {
    let client: TtrpcClient | undefined;
    try {
      client = await TtrpcClient.connect(socket, { timeoutMs: 2_000 });
      await client.call(TASK_SERVICE, "Connect", new Uint8Array(), { timeoutMs: 2_000 });
      return;
    } catch (e) {
      // Any status from the daemon itself (runc-v2 says NOT_FOUND for an empty id) means it serves.
      if (e instanceof TtrpcError && !RETRY_CODES.has(e.code)) return;
      if (Date.now() > deadline) throw new Error(`daemon on ${socket} did not answer: ${(e as Error).message}`);
      await sleep(2);
    } finally {
      client?.close();
    }
  }
}

/** Kills every process started with `-address <address>`: the fake address is unique to this bench. */
async function killDaemons(address: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const ours = listProcesses().filter((p) => p.args.includes(address) && p.pid !== process.pid);
    if (!ours.length) return;
    for (const p of ours) {
      try {
        process.kill(p.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    await sleep(20);
  }
}

export async function benchBootstrap(rts: RuntimeUnderTest[], runs: number, workDir: string, env: NodeJS.ProcessEnv): Promise<BootstrapResult> {
  const bundle = join(workDir, "bootstrap-bundle");
  mkdirSync(bundle, { recursive: true });
  writeFileSync(join(bundle, "config.json"), "{}");
  spawnSync("mkfifo", [join(bundle, "log")]);
  // Like containerd, hold the log FIFO open and drain it: runc-v2's daemon blocks until it has a reader.
  const logReader = new Socket({ fd: openSync(join(bundle, "log"), constants.O_RDWR | constants.O_NONBLOCK), readable: true, writable: false });
  logReader.on("error", () => {});
  logReader.resume();
  const result: BootstrapResult = { runtimes: {}, baselines: {} };
  for (const rt of rts) result.runtimes[rt.label] = { start: [], ready: [] };

  const baselineCmds: Record<string, [string, string[]]> = {};
  const cocoonMain = rts.find((r) => r.label === "cocoon");
  if (cocoonMain) {
    const flags = launcherNodeFlags(readFileSync(cocoonMain.binary, "utf8"));
    baselineCmds[`node ${[...flags, "-e 0"].join(" ")}`] = ["node", [...flags, "-e", "0"]];
    baselineCmds["cocoon -v"] = [cocoonMain.binary, ["-v"]];
  }
  const runc = rts.find((r) => r.kind === "runc-v2");
  if (runc) baselineCmds["runc-v2 -v"] = [runc.binary, ["-v"]];

  let seq = 0;
  try {
    // Interleaved, like the container starts, so background load hits every row alike.
    for (let i = -1; i < runs; i++) {
      for (const [name, [cmd, args]] of Object.entries(baselineCmds)) {
        const ms = await timeCommand(cmd, args, env);
        if (i >= 0) (result.baselines[name] ??= []).push(ms);
      }
      for (const rt of rts) {
        const address = join(workDir, `fake-${rt.label.replace(/\W/g, "_")}.sock`);
        const id = `boot-${process.pid}-${++seq}`;
        const t0 = performance.now();
        const res = await run(rt.binary, ["-namespace", "bench", "-address", address, "-publish-binary", "/bin/false", "-id", id, "start"], {
          env: { ...env, TTRPC_ADDRESS: address + ".ttrpc" }, cwd: bundle, timeoutMs: 20_000,
        });
        const startMs = performance.now() - t0;
        const socket = res.stdout.trim().replace(/^unix:\/\//, "");
        try {
          if (res.code !== 0 || !socket.startsWith("/")) throw new Error(`${rt.label} start exited ${res.code}: ${res.stdout}${res.stderr}`);
          await untilServing(socket, Date.now() + 10_000);
          const readyMs = performance.now() - t0;
          if (i >= 0) {
            result.runtimes[rt.label]!.start.push(startMs);
            result.runtimes[rt.label]!.ready.push(readyMs);
          }
        } finally {
          await killDaemons(address);
          if (socket.startsWith("/run/containerd/s/")) {
            try {
              unlinkSync(socket);
            } catch {
              // the daemon removed it
            }
          }
        }
      }
    }
  } finally {
    for (const rt of rts) await killDaemons(join(workDir, `fake-${rt.label.replace(/\W/g, "_")}.sock`));
    logReader.destroy();
  }
  return result;
}
