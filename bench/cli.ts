// The bench's command line: a handful of flags, parsed by hand to stay dependency-free.

export type Section = "latency" | "bootstrap" | "memory" | "vm" | "gvisor";

export interface Variant {
  /** Lower-case letters and digits: it becomes part of a runtime name, io.containerd.cocoon<name>.v2. */
  name: string;
  /** Node options the variant's launcher passes instead of the shipped launcher's. */
  nodeFlags: string[];
  /** Environment the launcher sets before exec'ing node (e.g. MALLOC_ARENA_MAX). */
  env: Record<string, string>;
  /** A whole launcher script to use instead of one generated from nodeFlags/env. */
  launcherPath?: string;
}

export interface BenchOptions {
  /** Timed runs per runtime for start latency. */
  runs: number;
  warmup: number;
  /** Iterations of the bare `start` command micro-bench. */
  bootstrapRuns: number;
  /** Pods and containers per pod for the density memory test. */
  pods: number;
  perPod: number;
  /** Seconds to let shims settle before reading their memory. */
  settleSec: number;
  sections: Section[];
  /** Timed VM pod starts (each paired with a runc pod start) and VM pods for the memory test. */
  vmRuns: number;
  vmPods: number;
  /** The Cocoon config's vm.accel for the VM section. */
  vmAccel: "auto" | "kvm" | "tcg";
  /** The Cocoon config's grouping for VM pods (default pod: one shim per VM). */
  vmGrouping: "pod" | "node";
  /** vm.kernel_params for the VM section. */
  vmKernelParams: string;
  /** Read VM memory with host KSM merging identical pages (implies kernel_params "nokaslr" unless given). */
  vmKsm: boolean;
  /** vm.tcg_cache_mib for the VM pods (undefined: the shipped default). */
  vmTcgCacheMiB: number | undefined;
  variants: Variant[];
  /** Where results go; default bench/results. */
  outDir: string | undefined;
}

export const USAGE = `usage: npm run bench -- [options]
  --runs N             timed container starts per runtime (default 20)
  --warmup N           untimed starts per runtime first (default 2)
  --bootstrap-runs N   iterations of the bare shim 'start' command (default 15; 0 skips it)
  --pods N             pods for the density test (default 10)
  --per-pod N          containers per pod (default 3)
  --settle S           seconds to wait before reading shim memory (default 2)
  --vm-runs N          timed VM pod starts through the CRI, each paired with a runc pod (default 5)
  --vm-pods N          VM pods running at once for the VM memory test (default 3)
  --vm-accel A         vm.accel of the Cocoon config: auto, kvm or tcg (default auto)
  --vm-grouping G      grouping of the VM pods' config: pod (default, a shim per VM) or node
  --vm-kernel-params P vm.kernel_params for the VM pods (e.g. nokaslr)
  --vm-tcg-cache MIB   vm.tcg_cache_mib for the VM pods (TCG's translation cache; default: the config's)
  --vm-ksm             read VM memory with the host's KSM on (turned on for the test, then restored;
                       guests get kernel_params "nokaslr" unless --vm-kernel-params says otherwise)
  --only latency|bootstrap|memory|vm|gvisor
                       latency = container starts plus the bare 'start' breakdown;
                       bootstrap = only the bare 'start' breakdown (no containers);
                       vm = VM pods through the CRI (needs guest/out, from guest/build.sh);
                       gvisor = gVisor pods through the CRI next to runc-v2 and VM pods (start
                       latency, memory per pod; --vm-runs and --vm-pods set the counts)
  --variant NAME=FLAGS extra Cocoon row whose launcher runs 'node FLAGS' (repeatable); VAR=value
                       words set the environment, e.g.
                       --variant jitless='--max-semi-space-size=1 --jitless --no-expose-wasm'
                       --variant arena='MALLOC_ARENA_MAX=1 --max-semi-space-size=1'
  --launcher NAME=PATH extra Cocoon row using the launcher script at PATH (repeatable); the script
                       must exec the shim with "$@" like bin/containerd-shim-cocoon-v2
  --out DIR            results directory (default bench/results)`;

export class UsageError extends Error {}

function int(v: string | undefined, flag: string, min: number): number {
  const n = Number(v);
  if (v === undefined || !Number.isInteger(n) || n < min) throw new UsageError(`${flag} needs an integer >= ${min}`);
  return n;
}

export function parseArgs(argv: readonly string[]): BenchOptions {
  const o: BenchOptions = {
    runs: 20, warmup: 2, bootstrapRuns: 15, pods: 10, perPod: 3, settleSec: 2,
    sections: ["latency", "bootstrap", "memory", "vm", "gvisor"], vmRuns: 5, vmPods: 3, vmAccel: "auto", vmGrouping: "pod", vmKernelParams: "", vmKsm: false, vmTcgCacheMiB: undefined,
    variants: [], outDir: undefined,
  };
  let kernelParamsGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const raw = argv[i]!;
    const eq = raw.indexOf("=");
    const flag = raw.startsWith("--") && eq > 0 ? raw.slice(0, eq) : raw;
    const value = (): string | undefined => (flag !== raw ? raw.slice(eq + 1) : argv[++i]);
    switch (flag) {
      case "--runs": o.runs = int(value(), flag, 1); break;
      case "--warmup": o.warmup = int(value(), flag, 0); break;
      case "--bootstrap-runs": o.bootstrapRuns = int(value(), flag, 0); break;
      case "--pods": o.pods = int(value(), flag, 1); break;
      case "--per-pod": o.perPod = int(value(), flag, 1); break;
      case "--settle": o.settleSec = int(value(), flag, 0); break;
      case "--vm-runs": o.vmRuns = int(value(), flag, 1); break;
      case "--vm-pods": o.vmPods = int(value(), flag, 1); break;
      case "--vm-accel": {
        const v = value();
        if (v !== "auto" && v !== "kvm" && v !== "tcg") throw new UsageError("--vm-accel takes auto, kvm or tcg");
        o.vmAccel = v;
        break;
      }
      case "--vm-grouping": {
        const v = value();
        if (v !== "pod" && v !== "node") throw new UsageError("--vm-grouping takes pod or node");
        o.vmGrouping = v;
        break;
      }
      case "--vm-kernel-params": o.vmKernelParams = value() ?? ""; kernelParamsGiven = true; break;
      case "--vm-ksm": o.vmKsm = true; break;
      case "--vm-tcg-cache": o.vmTcgCacheMiB = int(value(), flag, 0); break;
      case "--out": o.outDir = value(); break;
      case "--only": {
        const v = value();
        if (v !== "latency" && v !== "memory" && v !== "bootstrap" && v !== "vm" && v !== "gvisor") throw new UsageError("--only takes latency, bootstrap, memory, vm or gvisor");
        o.sections = v === "latency" ? ["latency", "bootstrap"] : [v];
        break;
      }
      case "--variant":
      case "--launcher": {
        const v = value() ?? "";
        const m = /^([a-z0-9]+)=(.*)$/s.exec(v);
        if (!m) throw new UsageError(`${flag} wants NAME=… with NAME of [a-z0-9], got "${v}"`);
        if (o.variants.some((x) => x.name === m[1])) throw new UsageError(`variant name "${m[1]}" given twice`);
        if (flag === "--launcher") {
          o.variants.push({ name: m[1]!, nodeFlags: [], env: {}, launcherPath: m[2]! });
          break;
        }
        const words = m[2]!.split(/\s+/).filter(Boolean);
        const isEnv = (w: string) => /^[A-Za-z_][A-Za-z0-9_]*=/.test(w);
        const env = Object.fromEntries(words.filter(isEnv).map((w) => [w.slice(0, w.indexOf("=")), w.slice(w.indexOf("=") + 1)]));
        o.variants.push({ name: m[1]!, nodeFlags: words.filter((w) => !isEnv(w)), env });
        break;
      }
      case "-h":
      case "--help":
        throw new UsageError(USAGE);
      default:
        throw new UsageError(`unknown option ${raw}\n${USAGE}`);
    }
  }
  // KSM merges the guests' kernel text only when every guest loads it at the same address.
  if (o.vmKsm && !kernelParamsGiven) o.vmKernelParams = "nokaslr";
  return o;
}
