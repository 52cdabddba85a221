// Entry point of the system-call layer. `sys` is the real implementation; it loads koffi only when one
// of its methods is first called, so importing this module is free.
import { LinuxSys } from "./linux.js";
import type { Sys } from "./types.js";

export * from "./types.js";
export type { SysError } from "./errors.js";
export { LinuxSys } from "./linux.js";

export const sys: Sys = new LinuxSys();
