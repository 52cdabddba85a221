// The runtime modes this build offers, in order (the first is the default when no config names one).
// A new mode is a folder under src/runtime/ and one line here.
import type { RuntimeMode } from "../shim/runtime.js";
import { runcMode } from "./runc/mode.js";
import { vmMode } from "./vm/mode.js";
import { gvisorMode } from "./gvisor/mode.js";

export const MODES: readonly RuntimeMode[] = [runcMode, vmMode, gvisorMode];
