// The registry of runtime modes. The SDK never imports a runtime: an entry point (src/cli) registers
// the modes it was built with, and config parsing, `delete` and the daemon look them up here.
import { invalidArgument } from "./errors.js";
import type { RuntimeMode } from "./runtime.js";

const registered: RuntimeMode[] = [];

export function registerModes(modes: readonly RuntimeMode[]) {
  for (const m of modes) {
    if (registered.some((r) => r.name === m.name)) continue;
    registered.push(m);
  }
}

export function registeredModes(): readonly RuntimeMode[] {
  return registered;
}

export function modeNamed(name: string): RuntimeMode {
  const m = registered.find((r) => r.name === name);
  if (!m) throw invalidArgument(`mode "${name}" is not available in this build (have ${registered.map((r) => r.name).join(", ") || "none"})`);
  return m;
}
