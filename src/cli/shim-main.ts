// Entry point of containerd-shim-cocoon-v2. containerd runs `start` for every container and waits for
// it, so that path loads only what it needs; everything else (delete, the daemon) lives in the full
// bundle next to this one, which the daemon is started from directly.
import path from "node:path";
import { startCommand, writeStdout } from "../shim/bootstrap.js";
import { parseShimFlags } from "../shim/flags.js";
import { sys } from "../sys/index.js";
import { registerModes } from "../shim/modes.js";
import { MODES } from "../runtime/modes.js";

declare const __dirname: string | undefined;
declare const require: ((id: string) => unknown) | undefined;

const FULL_BUNDLE = "containerd-shim-cocoon-v2-full.cjs";

function bundleDir(): string {
  if (typeof __dirname === "string") return __dirname;
  return path.dirname(new URL(import.meta.url).pathname);
}

async function main(argv: string[]) {
  let flags;
  try {
    flags = parseShimFlags(argv);
  } catch {
    flags = undefined;
  }
  if (!flags || flags.action !== "start" || flags.version) {
    // The full shim reads the same argv and does the rest (including flag errors).
    if (typeof require === "function") require(path.join(bundleDir(), FULL_BUNDLE));
    else await import(path.join(bundleDir(), "shim-full-main.js"));
    return;
  }
  // `start` parses the config (each mode its own table); the modes' runtimes are never loaded here.
  registerModes(MODES);
  const daemonArgv = [path.join(bundleDir(), FULL_BUNDLE), "-namespace", flags.namespace, "-address", flags.address,
    "-publish-binary", flags.publishBinary, "-id", flags.id, ...(flags.debug ? ["-debug"] : []), "daemon"];
  try {
    const { reply } = await startCommand(sys, flags, daemonArgv);
    writeStdout(reply);
  } catch (err) {
    // containerd shows our combined output as the reason the shim could not start.
    writeStdout(`containerd-shim-cocoon-v2: ${(err as Error).message}\n`);
    process.exitCode = 1;
  }
}

void main(process.argv.slice(2));
