// The full shim (bundled as containerd-shim-cocoon-v2-full.cjs): registers the runtime modes with the shim SDK
// and runs containerd's `delete` and our own `daemon` and `spare` actions. `start` is
// served by the small entry (shim-main.ts) so that it does not pay for loading all of this.
import { parseShimFlags, FlagError } from "../shim/flags.js";
import { writeStdout } from "../shim/bootstrap.js";
import { deleteCommand } from "../shim/delete.js";
import { runDaemon, spawnedHandoff, type DaemonDeps } from "../shim/daemon.js";
import { runSpare } from "../shim/spare.js";
import { registerModes } from "../shim/modes.js";
import { MODES } from "../runtime/modes.js";
import { sys } from "../sys/index.js";

const VERSION = "0.1.0";

const daemonDeps: DaemonDeps = { sys };

registerModes(MODES);

async function main(argv: string[]): Promise<number> {
  let flags;
  try {
    flags = parseShimFlags(argv);
  } catch (err) {
    if (err instanceof FlagError) {
      process.stderr.write(`containerd-shim-cocoon-v2: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  if (flags.version) {
    writeStdout(`containerd-shim-cocoon-v2 version ${VERSION}\n`);
    return 0;
  }
  switch (flags.action) {
    case "delete": {
      const out = await deleteCommand(flags, sys);
      writeStdout(out);
      return 0;
    }
    case "daemon":
      await runDaemon(flags, daemonDeps, spawnedHandoff());
      return -1;
    case "spare":
      // Idle until the launcher hands it a start; then it is that group's daemon (src/shim/spare.ts).
      await runSpare(flags, { sys, becomeDaemon: (f, handoff) => runDaemon(f, daemonDeps, handoff) });
      return -1;
    default:
      process.stderr.write(`containerd-shim-cocoon-v2: unknown action "${flags.action}" (want start or delete)\n`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (err) => {
    // For `start`, containerd shows our combined output as the failure reason.
    process.stdout.write(`containerd-shim-cocoon-v2: ${(err as Error).message}\n`);
    process.exitCode = 1;
  },
);
