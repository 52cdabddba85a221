// The `cocoon` command: node setup, diagnostics, and a demo pod.
import { Command } from "commander";
import { installCommand, uninstallCommand } from "./install/command.js";
import { checkCommand } from "./check.js";
import { demoCommand } from "./demo.js";

const program = new Command();
program.name("cocoon").description("Cocoon: a containerd shim v2 runtime (runc mode and VM-per-pod mode)").version("0.1.0");

program.addCommand(demoCommand()).addCommand(installCommand()).addCommand(uninstallCommand()).addCommand(checkCommand());

program.parseAsync(process.argv).catch((err) => {
  process.stderr.write(`cocoon: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
