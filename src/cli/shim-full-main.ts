// The full shim (bundled as containerd-shim-cocoon-v2-full.cjs): wires the shim SDK to the runtimes (the only place
// that knows both) and runs containerd's `delete` and our own `daemon` and `spare` actions. `start` is
// served by the small entry (shim-main.ts) so that it does not pay for loading all of this.
import { parseShimFlags, FlagError } from "../shim/flags.js";
import { writeStdout } from "../shim/bootstrap.js";
import { deleteCommand } from "../shim/delete.js";
import { runDaemon, spawnedHandoff, type DaemonDeps } from "../shim/daemon.js";
import { runSpare } from "../shim/spare.js";
import { RuncRuntime } from "../runtime/runc/runtime.js";
import { cleanupRuncBundle } from "../runtime/runc/cleanup.js";
import { cleanupVmBundle } from "../runtime/vm/cleanup.js";
import { invalidArgument } from "../core/errors.js";
import { sys } from "../sys/index.js";

const VERSION = "0.1.0";

const daemonDeps: DaemonDeps = {
  sys,
  async makeRuntime(mode, ctx, reaper) {
    if (mode === "runc") return new RuncRuntime(ctx, sys, reaper);
    if (mode === "vm") {
      // Loaded only by vm-mode daemons: the agent API and VMM driver are not needed otherwise.
      const [{ VmRuntime }, { Qemu }] = await Promise.all([import("../runtime/vm/runtime.js"), import("../runtime/vm/qemu.js")]);
      return new VmRuntime(ctx, sys, new Qemu(ctx.config.vm.qemu), ctx.config.vm.stateDir);
    }
    throw invalidArgument(`mode "${mode}" is not available in this build`);
  },
};

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
      const out = await deleteCommand(flags, {
        runc: (id, bundle, state) => cleanupRuncBundle(sys, id, bundle, state),
        vm: (id, bundle, state) => cleanupVmBundle(sys, id, bundle, state),
      });
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
