// Guest agent entry point (runs inside the VM). vm mode is not implemented yet.
process.stderr.write("cocoon-agent: vm mode is not implemented yet\n");
process.exitCode = 1;
