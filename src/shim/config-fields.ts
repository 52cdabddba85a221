// Typed reads of TOML tables with errors that name the file and key. The SDK's own keys and every
// runtime's section are checked with the same helpers, so all config errors read alike.
import { invalidArgument } from "./errors.js";

export type Table = Record<string, unknown>;

export function pick<T>(table: Table, key: string, kind: "string" | "boolean" | "number", where: string, fallback: T, section = ""): T {
  if (!(key in table)) return fallback;
  const v = table[key];
  if (typeof v !== kind) throw invalidArgument(`config ${where}: "${section}${key}" must be a ${kind}, got ${JSON.stringify(v)}`);
  return v as T;
}

export function oneOf<T extends string>(v: string, allowed: readonly T[], what: string, where: string): T {
  if (!(allowed as readonly string[]).includes(v)) throw invalidArgument(`config ${where}: ${what} must be one of ${allowed.join(", ")}, got "${v}"`);
  return v as T;
}

/** Unknown keys are errors so that typos surface instead of silently meaning the default. */
export function checkKeys(table: Table, allowed: readonly string[], where: string, section: string) {
  for (const k of Object.keys(table)) {
    if (!allowed.includes(k)) throw invalidArgument(`config ${where}: unknown key "${section}${k}"`);
  }
}

export function intIn(v: number, what: string, min: number, max: number, where: string) {
  if (!Number.isInteger(v) || v < min || v > max) throw invalidArgument(`config ${where}: ${what} must be an integer from ${min} to ${max}, got ${v}`);
}

export function absolutePath(p: string, what: string, where: string, allowEmpty = false) {
  if (allowEmpty && p === "") return;
  if (!p.startsWith("/")) throw invalidArgument(`config ${where}: ${what} must be an absolute path${allowEmpty ? ' or ""' : ""}, got "${p}"`);
}
