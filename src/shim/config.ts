// The Cocoon config file (TOML). One file per RuntimeClass handler; the CRI plugin points the shim at
// it through runtime options (ConfigPath). The SDK owns the keys every mode shares (mode, grouping,
// log level, spares); each registered runtime mode owns the table named after it, and parses it
// itself (RuntimeMode.parseSettings). Every key has a default, so an absent file means the first
// registered mode with its defaults.
import { readFileSync } from "node:fs";
import { parse } from "smol-toml";
import { invalidArgument } from "./errors.js";
import { checkKeys, intIn, oneOf, pick, type Table } from "./config-fields.js";
import { registeredModes } from "./modes.js";

export type Grouping = "pod" | "node";

/** What the config needs of a runtime mode: its name (the `mode` value and its table) and its parser. */
export interface ModeSettings {
  name: string;
  /** Parses the mode's table ({} when absent) into its settings; throws InvalidArgument naming `where`. */
  parseSettings(section: Table, where: string): unknown;
}

export interface CocoonConfig {
  mode: string;
  grouping: Grouping;
  logLevel: "debug" | "info" | "warn" | "error";
  /**
   * Idle, already booted shim processes kept ready to become the next pod's daemon, so that a pod's
   * first `start` pays no Node start-up (src/shim/spare.ts). Only used with pod grouping; 0 disables.
   */
  spareDaemons: number;
  /** Every registered mode's parsed settings by mode name (a file may hold tables of modes it does not select). */
  settings: Record<string, unknown>;
  /** Where the file came from ("" = built-in defaults). */
  source: string;
}

const GENERIC_KEYS = ["mode", "grouping", "log_level", "spare_daemons"];

function settingsOf(modes: readonly ModeSettings[], doc: Table, where: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const m of modes) {
    const t = doc[m.name] ?? {};
    if (typeof t !== "object" || Array.isArray(t)) throw invalidArgument(`config ${where}: "${m.name}" must be a table`);
    out[m.name] = m.parseSettings(t as Table, where);
  }
  return out;
}

export function defaultConfig(modes: readonly ModeSettings[] = registeredModes()): CocoonConfig {
  if (modes.length === 0) throw new Error("no runtime mode is registered");
  return { mode: modes[0]!.name, grouping: "pod", logLevel: "info", spareDaemons: 1, settings: settingsOf(modes, {}, "(defaults)"), source: "" };
}

/** Parses config text; `where` names the source in error messages. */
export function parseConfig(text: string, where: string, modes: readonly ModeSettings[] = registeredModes()): CocoonConfig {
  let doc: Table;
  try {
    doc = parse(text) as Table;
  } catch (err) {
    const e = err as Error & { line?: number; column?: number };
    const at = e.line ? `:${e.line}:${e.column ?? 0}` : "";
    throw invalidArgument(`config ${where}${at}: ${e.message.split("\n")[0]}${at ? ` (line ${e.line}, column ${e.column})` : ""}`);
  }
  const cfg = defaultConfig(modes);
  cfg.source = where;
  const names = modes.map((m) => m.name);
  checkKeys(doc, [...GENERIC_KEYS, ...names], where, "");
  cfg.mode = oneOf(pick(doc, "mode", "string", where, cfg.mode), names, "mode", where);
  cfg.grouping = oneOf(pick(doc, "grouping", "string", where, cfg.grouping), ["pod", "node"] as const, "grouping", where);
  cfg.logLevel = oneOf(pick(doc, "log_level", "string", where, cfg.logLevel), ["debug", "info", "warn", "error"] as const, "log_level", where);
  cfg.spareDaemons = pick(doc, "spare_daemons", "number", where, cfg.spareDaemons);
  intIn(cfg.spareDaemons, "spare_daemons", 0, 8, where);
  cfg.settings = settingsOf(modes, doc, where);
  return cfg;
}

export function loadConfigFile(path: string, modes: readonly ModeSettings[] = registeredModes()): CocoonConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw invalidArgument(`cannot read cocoon config ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseConfig(text, path, modes);
}

/** The settings of one mode, typed by the caller that owns them. */
export function settingsFor<S>(cfg: CocoonConfig, mode: string): S {
  const s = cfg.settings[mode];
  if (s === undefined) throw invalidArgument(`config ${cfg.source || "(defaults)"}: no settings for mode "${mode}"`);
  return s as S;
}
