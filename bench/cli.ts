// The bench's command line: a handful of flags, parsed by hand to stay dependency-free.

export type Section = "latency" | "memory";

export interface Variant {
  /** Lower-case letters and digits: it becomes part of a runtime name, io.containerd.cocoon<name>.v2. */
  name: string;
  /** Node options the variant's launcher passes instead of the shipped launcher's. */
  nodeFlags: string[];
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
  --only latency|memory
  --variant NAME=FLAGS extra Cocoon row whose launcher runs 'node FLAGS' (repeatable), e.g.
                       --variant jitless='--max-semi-space-size=1 --jitless'
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
    sections: ["latency", "memory"], variants: [], outDir: undefined,
  };
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
      case "--out": o.outDir = value(); break;
      case "--only": {
        const v = value();
        if (v !== "latency" && v !== "memory") throw new UsageError("--only takes latency or memory");
        o.sections = [v];
        break;
      }
      case "--variant": {
        const v = value() ?? "";
        const m = /^([a-z0-9]+)=(.*)$/s.exec(v);
        if (!m) throw new UsageError(`--variant wants NAME=FLAGS with NAME of [a-z0-9], got "${v}"`);
        o.variants.push({ name: m[1]!, nodeFlags: m[2]!.split(/\s+/).filter(Boolean) });
        break;
      }
      case "-h":
      case "--help":
        throw new UsageError(USAGE);
      default:
        throw new UsageError(`unknown option ${raw}\n${USAGE}`);
    }
  }
  return o;
}
