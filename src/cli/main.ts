// The `cocoon` command: node setup, diagnostics, a demo pod, and pods through the node's own CRI.
import { Command } from "commander";
import { installCommand, uninstallCommand } from "./install/command.js";
import { checkCommand } from "./check.js";
import { demoCommand } from "./demo.js";
import { podCommand } from "./pod/index.js";
import { registerModes } from "../shim/modes.js";
import { MODES } from "../runtime/modes.js";

registerModes(MODES);

const program = new Command();
program.name("cocoon").description("Cocoon: a containerd shim v2 runtime (runc mode and VM-per-pod mode)").version("0.1.0");

program.addCommand(demoCommand()).addCommand(installCommand()).addCommand(uninstallCommand()).addCommand(checkCommand());
program.addCommand(podCommand());

program.parseAsync(process.argv).catch((err) => {
  process.stderr.write(`cocoon: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
