// `cocoon demo`: the whole Kubernetes path on this node without a cluster. It starts a private containerd
// with the CRI plugin and Cocoon's runtime handlers (src/cli/lab/), runs a pod through the CRI as kubelet
// would, prints what its containers printed and removes everything again, also on errors and Ctrl-C.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Command, InvalidArgumentError } from "commander";
import { parsePodSpec, toCriConfigs, validatePodSpec, type PodSpec } from "./cri/pod-spec.js";
import { findSourceRoot } from "./install/layout.js";
import { BUSYBOX_IMAGE, PAUSE_IMAGE } from "./lab/image.js";
import { HANDLERS, labPrerequisites, startLab, sweepStaleLabs, type HandlerName, type Lab } from "./lab/lab.js";
import { ExitTimeoutError, readContainerLog, startPod, waitForExit, type RunningPod } from "./lab/pod.js";

export interface DemoOptions {
  /** RuntimeClass handler: cocoon (default, vm mode) or cocoon-runc. */
  handler?: string;
  /** `runc` or `vm`: another way to say cocoon-runc or cocoon. */
  mode?: string;
  /** A pod spec file (src/cli/cri/pod-spec.ts format) to run instead of the built-in pod. */
  spec?: string;
  /** Seconds to wait for the containers to exit; default 60. */
  timeout?: number;
  /** Keep everything running after the containers exited, until Ctrl-C. */
  keep?: boolean;
  debug?: boolean;
  /** The Cocoon checkout; default: the one running this command. */
  sourceRoot?: string;
  /** Where the demo's messages go; default stdout. */
  out?: (text: string) => void;
  /** Cancels the demo like Ctrl-C does. */
  signal?: AbortSignal;
}

export const DEMO_POD_NAME = "cocoon-demo";

/** What the built-in pod's container runs: who and where it is, as seen from inside the pod. */
export const DEMO_SCRIPT = [
  'echo "hello from a Cocoon pod: $(uname -r), $(hostname)"',
  "echo \"pod IP: $(ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)\"",
  'echo "container PID 1: $(cat /proc/1/comm), user $(id -un), memory limit $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max 2>/dev/null)"',
].join("; ");

export function demoPodSpec(): PodSpec {
  return validatePodSpec(
    {
      name: DEMO_POD_NAME,
      labels: { app: "cocoon-demo" },
      containers: [{ name: "hello", image: BUSYBOX_IMAGE, command: ["sh", "-c", DEMO_SCRIPT], resources: { memoryLimitBytes: 64 * 1024 * 1024 } }],
    },
    "built-in demo pod",
  );
}

/** "cocoon-runc (runc mode), cocoon (vm mode), …": every registered mode's handler. */
const handlerList = () => Object.entries(HANDLERS).map(([h, v]) => `${h} (${v.mode} mode)`).join(", ");

/** The handler from --handler / --mode, else the spec's, else cocoon (a pod in its own VM). */
export function resolveHandler(o: Pick<DemoOptions, "handler" | "mode">, spec: PodSpec): HandlerName {
  const byMode: Record<string, HandlerName> = Object.fromEntries(Object.entries(HANDLERS).map(([h, v]) => [v.mode, h]));
  if (o.mode !== undefined && !(o.mode in byMode)) throw new Error(`--mode must be one of ${Object.keys(byMode).join(", ")}, got "${o.mode}"`);
  const fromMode = o.mode !== undefined ? byMode[o.mode] : undefined;
  if (o.handler !== undefined && fromMode !== undefined && o.handler !== fromMode) throw new Error(`--handler ${o.handler} and --mode ${o.mode} disagree`);
  const handler = o.handler ?? fromMode ?? (spec.runtimeHandler || "cocoon");
  if (!(handler in HANDLERS)) throw new Error(`unknown runtime handler "${handler}": the demo registers ${Object.keys(HANDLERS).join(", ")}`);
  return handler as HandlerName;
}

/** Image names as the CRI plugin resolves them ("busybox" stays unqualified here: no registry to ask). */
const withTag = (image: string) => (/:[^/]+$/.test(image) || image.includes("@") ? image : `${image}:latest`);

function checkImages(spec: PodSpec): void {
  const available = [BUSYBOX_IMAGE, PAUSE_IMAGE];
  const bad = spec.containers.filter((c) => !available.includes(withTag(c.image)));
  if (bad.length) {
    throw new Error(
      `the demo has no registry to pull from; ${bad.map((c) => `container ${c.name} asks for ${c.image}`).join(", ")}. ` + `Use ${BUSYBOX_IMAGE} (busybox with its applets, built from the host's /bin/busybox).`,
    );
  }
}

function indent(text: string, prefix = "    "): string {
  return text
    .split("\n")
    .map((l) => prefix + l)
    .join("\n");
}

/** Prints each container's exit and log; returns true when all exited 0. */
async function reportContainers(lab: Lab, pod: RunningPod, timeoutMs: number, say: (s: string) => void, signal: AbortSignal): Promise<boolean> {
  let allOk = true;
  const deadline = Date.now() + timeoutMs;
  for (const c of pod.containers) {
    let headline: string;
    try {
      const st = await waitForExit(lab.cri, c.id, Math.max(0, deadline - Date.now()), signal);
      const ms = st.startedAt && st.finishedAt ? Math.max(0, Number(st.finishedAt - st.startedAt) / 1e6) : undefined;
      const secs = ms === undefined || ms < 1000 ? "" : ` after ${(ms / 1000).toFixed(1)} s`;
      headline = `container ${c.name} exited with code ${st.exitCode}${st.reason && st.exitCode !== 0 ? ` (${st.reason})` : ""}${secs}`;
      if (st.exitCode !== 0) allOk = false;
    } catch (err) {
      if (signal.aborted) throw err;
      allOk = false;
      headline =
        err instanceof ExitTimeoutError
          ? `container ${c.name} is still running after ${Math.round(timeoutMs / 1000)} s (raise --timeout, or use --keep)`
          : `container ${c.name}: ${(err as Error).message}`;
    }
    const lines = readContainerLog(c.logPath);
    say(`${headline}; it printed${lines.length ? ":" : " nothing"}`);
    if (lines.length) say(indent(lines.map((l) => (l.stream === "stderr" ? `[stderr] ${l.text}` : l.text)).join("\n")));
  }
  return allOk;
}

/** The checkout running this command, else the one we are in. */
function defaultSourceRoot(): string {
  try {
    return findSourceRoot();
  } catch {
    return findSourceRoot(join(process.cwd(), "package.json"));
  }
}

const waitForAbort = (signal: AbortSignal) => new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener("abort", () => resolve(), { once: true })));

/** Runs the demo; resolves to the process exit code. */
export async function runDemo(o: DemoOptions = {}): Promise<number> {
  // A closed stdout (`cocoon demo | head`) must not crash us before the cleanup: the messages are dropped.
  if (!o.out) process.stdout.on("error", () => {});
  const write = o.out ?? ((s: string) => void process.stdout.write(s));
  const say = (s: string) => write(`${s}\n`);
  const step = (s: string) => say(`cocoon demo: ${s}`);

  let spec: PodSpec;
  let handler: HandlerName;
  let sourceRoot: string;
  try {
    spec = o.spec ? parsePodSpec(readFileSync(o.spec, "utf8"), o.spec) : demoPodSpec();
    handler = resolveHandler(o, spec);
    checkImages(spec);
    sourceRoot = o.sourceRoot ?? defaultSourceRoot();
  } catch (err) {
    step(`error: ${(err as Error).message}`);
    return 1;
  }
  const problems = await labPrerequisites(sourceRoot);
  if (problems.length) {
    step(`this machine is not ready:\n${indent(problems.join("\n"), "  - ")}\n(scripts/setup.sh --deps-only installs everything)`);
    return 1;
  }

  for (const line of await sweepStaleLabs()) step(`removed an abandoned demo instance: ${line}`);

  // Ctrl-C (and SIGTERM/SIGHUP) must not kill us before the private containerd and its pods are gone.
  const ac = new AbortController();
  let tearingDown = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (tearingDown) {
      step(`${sig}: still cleaning up, one moment`);
      return;
    }
    if (!ac.signal.aborted) step(`${sig}: stopping`);
    ac.abort(new Error(`interrupted by ${sig}`));
  };
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  for (const s of signals) process.on(s, onSignal);
  const onOuterAbort = () => ac.abort(o.signal?.reason ?? new Error("cancelled"));
  o.signal?.addEventListener("abort", onOuterAbort, { once: true });
  if (o.signal?.aborted) onOuterAbort();

  let lab: Lab | undefined;
  let code = 1;
  try {
    lab = await startLab({ sourceRoot, defaultHandler: handler, debug: !!o.debug, log: step, signal: ac.signal });
    step(`CRI endpoint unix://${lab.address}; handlers ${handlerList()} registered`);
    step(`CNI bridge ${lab.network.bridge}, pod subnet ${lab.network.subnet}`);
    const images = await lab.importImages();
    if (ac.signal.aborted) throw ac.signal.reason;
    step(`imported ${images.join(" and ")} (built from /bin/busybox; no registry involved)`);

    const cri = toCriConfigs(spec, { logRoot: lab.podLogRoot });
    cri.runtimeHandler = handler;
    const pod = await startPod(lab.cri, cri, { signal: ac.signal });
    const where = pod.ip ? `pod IP ${pod.ip}` : "host network";
    step(`pod ${pod.name} is running with handler ${handler}, ${where}, containers: ${pod.containers.map((c) => c.name).join(", ")}`);

    const ok = await reportContainers(lab, pod, (o.timeout ?? 60) * 1000, say, ac.signal);
    code = ok ? 0 : 1;
    if (o.keep && !ac.signal.aborted) {
      step(
        `keeping everything running; press Ctrl-C to remove it. Meanwhile, for example:\n` +
          `    ctr --address ${lab.address} -n k8s.io containers ls\n` +
          `    crictl --runtime-endpoint unix://${lab.address} pods    (if crictl is installed)\n` +
          `    containerd log: ${lab.logPath}`,
      );
      await waitForAbort(ac.signal);
    }
  } catch (err) {
    if (ac.signal.aborted) {
      code = 130;
    } else {
      step(`error: ${(err as Error).message}`);
      if (lab && o.debug) say(`--- containerd log (last lines) ---\n${lab.logTail(40)}`);
      code = 1;
    }
  } finally {
    tearingDown = true;
    if (lab) {
      step("removing the pod, stopping containerd, deleting the bridge and the temp dir");
      const forced = await lab.stop();
      if (forced.length) {
        step(`had to clean up by force:\n${indent(forced.join("\n"), "  - ")}`);
        if (code === 0) code = 1;
      } else {
        step("cleaned up: nothing left behind");
      }
    }
    for (const s of signals) process.removeListener(s, onSignal);
    o.signal?.removeEventListener("abort", onOuterAbort);
  }
  if (code === 0) step("success");
  return code;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`expected a positive whole number of seconds, got "${v}"`);
  return n;
}

export function demoCommand(): Command {
  return new Command("demo")
    .description(
      "run a pod through a private containerd with the CRI plugin and Cocoon's runtime handlers, print what it printed, then remove everything",
    )
    .option("--handler <name>", `RuntimeClass handler to run the pod with: ${handlerList()}; default cocoon`)
    .option("--mode <mode>", `${Object.values(HANDLERS).map((h) => h.mode).join(", ")}: the same as --handler ${Object.keys(HANDLERS).join(" / ")}`)
    .option("--spec <file>", "run this pod spec (YAML or JSON, see examples/pod.yaml) instead of the built-in pod")
    .option("--timeout <seconds>", "how long to wait for the containers to exit", positiveInt, 60)
    .option("--keep", "after the containers exited, keep containerd and the pod until Ctrl-C")
    .option("--debug", "debug logs from containerd and the shim; show containerd's log on failure")
    .action(async (f: DemoOptions) => {
      process.exitCode = await runDemo(f);
    });
}
