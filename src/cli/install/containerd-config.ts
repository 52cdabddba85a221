// Adds Cocoon's CRI runtime handlers to a containerd 1.6 config.toml (version 2) and takes them out again.
//
// Why a delimited block in the main file rather than an `imports` drop-in: in containerd 1.6 an imported
// file's `[plugins."io.containerd.grpc.v1.cri"]` table replaces the main file's whole CRI table (checked with
// `containerd config dump`: the main file's sandbox_image, registry and other runtimes vanished). Appending
// new `runtimes.<name>` tables to the main file keeps everything else, and removing the block restores the
// original bytes exactly.
import { parse as parseToml } from "smol-toml";
import { MODES } from "../../runtime/modes.js";

export const BEGIN_MARKER = "# BEGIN cocoon (managed by cocoon install; do not edit)";
export const END_MARKER = "# END cocoon";
/** First lines of a config that `cocoon install` wrote because there was none; uninstall deletes it again. */
export const CREATED_HEADER = "# Written by cocoon install because there was no containerd config; cocoon uninstall deletes it.\nversion = 2\n";

export const CRI_PLUGIN = "io.containerd.grpc.v1.cri";
export const RUNTIME_TYPE = "io.containerd.cocoon.v2";

export interface RuntimeEntry {
  /** The RuntimeClass handler name. */
  name: string;
  /** Cocoon config file the shim reads (`options.ConfigPath`). */
  configPath: string;
  podAnnotations: string[];
  /** A VM cannot receive host devices, so privileged pods there must not ask for them. */
  privilegedWithoutHostDevices: boolean;
}

/** One handler per registered mode (src/runtime/modes.ts): `cocoon` (VM per pod), `cocoon-runc`, ... */
export function cocoonRuntimes(configDir = "/etc/cocoon"): RuntimeEntry[] {
  const dir = configDir.replace(/\/+$/, "");
  return MODES.map((m) => ({ name: m.handler, configPath: `${dir}/${m.configFile}`, podAnnotations: ["io.cocoon.*"], privilegedWithoutHostDevices: m.privilegedWithoutHostDevices }));
}

export class ContainerdConfigError extends Error {
  override readonly name = "ContainerdConfigError";
}

const tq = (s: string) => JSON.stringify(s);
const runtimeTable = (name: string) => `[plugins.${tq(CRI_PLUGIN)}.containerd.runtimes.${/^[A-Za-z0-9_-]+$/.test(name) ? name : tq(name)}]`;

/** The TOML tables for the runtimes (no markers). `withDefaultRunc` adds containerd's built-in runc entry. */
export function renderRuntimeTables(runtimes: RuntimeEntry[], withDefaultRunc = false): string {
  const parts: string[] = [];
  if (withDefaultRunc) {
    parts.push(
      "# containerd's built-in default; restated because defining any runtime replaces the built-in list.\n" +
        `${runtimeTable("runc")}\n  runtime_type = "io.containerd.runc.v2"\n`,
    );
  }
  for (const r of runtimes) {
    const header = runtimeTable(r.name);
    parts.push(
      `${header}\n` +
        `  runtime_type = ${tq(RUNTIME_TYPE)}\n` +
        `  pod_annotations = [${r.podAnnotations.map(tq).join(", ")}]\n` +
        (r.privilegedWithoutHostDevices ? "  privileged_without_host_devices = true\n" : "") +
        `  ${header.slice(0, -1)}.options]\n` +
        `    ConfigPath = ${tq(r.configPath)}\n`,
    );
  }
  return parts.join("\n");
}

/** The whole managed block, starting with the newline that separates it from what precedes it. */
export function renderBlock(runtimes: RuntimeEntry[], withDefaultRunc: boolean): string {
  return `\n${BEGIN_MARKER}\n${renderRuntimeTables(runtimes, withDefaultRunc)}${END_MARKER}\n`;
}

interface BlockSpan {
  start: number;
  end: number;
}

function lineStarts(text: string, needle: string): number[] {
  const out: number[] = [];
  for (let i = text.indexOf(needle); i >= 0; i = text.indexOf(needle, i + 1)) {
    const eol = text.indexOf("\n", i);
    const line = text.slice(i, eol < 0 ? text.length : eol).replace(/\r$/, "");
    if ((i === 0 || text[i - 1] === "\n") && line === needle) out.push(i);
  }
  return out;
}

/** Where our block sits (including its leading newline and the END line's newline), if present. */
export function findBlock(text: string): BlockSpan | undefined {
  const begins = lineStarts(text, BEGIN_MARKER);
  const ends = lineStarts(text, END_MARKER);
  if (begins.length === 0 && ends.length === 0) return undefined;
  if (begins.length !== 1 || ends.length !== 1 || ends[0]! < begins[0]!) {
    throw new ContainerdConfigError(
      `the cocoon block in the containerd config is damaged (found ${begins.length} "${BEGIN_MARKER}" and ${ends.length} "${END_MARKER}" lines); ` +
        "fix or remove it by hand",
    );
  }
  const start = begins[0]! > 0 ? begins[0]! - 1 : 0;
  let end = ends[0]! + END_MARKER.length;
  if (text[end] === "\r") end++;
  if (text[end] === "\n") end++;
  return { start, end };
}

type Table = Record<string, unknown>;
const isTable = (v: unknown): v is Table => typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);

function dig(t: unknown, ...path: string[]): unknown {
  let cur = t;
  for (const k of path) {
    if (!isTable(cur)) return undefined;
    cur = cur[k];
  }
  return cur;
}

function parseOrRefuse(text: string, what: string): Table {
  try {
    return parseToml(text) as Table;
  } catch (err) {
    throw new ContainerdConfigError(`${what} is not valid TOML: ${(err as Error).message.split("\n")[0]}`);
  }
}

export interface MergeResult {
  text: string;
  /** There was no config; `text` is a new minimal one. */
  created: boolean;
  /** The block restates containerd's default runc runtime (the original config defined no runtimes). */
  addedDefaultRunc: boolean;
  /** The text is what it was already (installed before with the same settings). */
  unchanged: boolean;
  warnings: string[];
}

/**
 * Adds (or refreshes) our block. `original` undefined = no config file. Refuses config version 1 (or no
 * version, which containerd reads as 1), version 3, our runtime names defined outside the block, and any
 * result that is not valid TOML.
 */
export function mergeContainerdConfig(original: string | undefined, runtimes: RuntimeEntry[]): MergeResult {
  const warnings: string[] = [];
  const created = original === undefined;
  const source = original ?? CREATED_HEADER;
  const span = findBlock(source);
  const before = span ? source.slice(0, span.start) : source;
  const after = span ? source.slice(span.end) : "";
  const base = before + after;
  const doc = parseOrRefuse(base, "the containerd config");

  const version = doc["version"];
  if (version === undefined || version === 1) {
    throw new ContainerdConfigError(
      "the containerd config is config version 1 (no `version = 2` line); cocoon install only edits version 2 configs. " +
        "Convert it with `containerd config migrate` (containerd >= 1.7) or rewrite it from `containerd config default`, then retry",
    );
  }
  if (version !== 2) {
    throw new ContainerdConfigError(`the containerd config has version = ${String(version)}; cocoon install supports containerd 1.6/1.7 configs (version = 2)`);
  }
  for (const r of runtimes) {
    if (dig(doc, "plugins", CRI_PLUGIN, "containerd", "runtimes", r.name) !== undefined) {
      throw new ContainerdConfigError(
        `the containerd config already defines runtime "${r.name}" (${runtimeTable(r.name)}) outside the cocoon block; remove it and retry`,
      );
    }
  }
  const disabled = doc["disabled_plugins"];
  if (Array.isArray(disabled) && (disabled.includes(CRI_PLUGIN) || disabled.includes("cri"))) {
    warnings.push(`the CRI plugin is listed in disabled_plugins; Kubernetes cannot use the cocoon runtimes until it is enabled`);
  }
  const existing = dig(doc, "plugins", CRI_PLUGIN, "containerd", "runtimes");
  const withDefaultRunc = existing === undefined || (isTable(existing) && Object.keys(existing).length === 0);
  const defaultName = dig(doc, "plugins", CRI_PLUGIN, "containerd", "default_runtime_name");
  if (withDefaultRunc && defaultName !== undefined && defaultName !== "runc") {
    warnings.push(`default_runtime_name is "${String(defaultName)}" but no runtimes are defined; containerd's CRI plugin will not start with that`);
  }

  const block = renderBlock(runtimes, withDefaultRunc);
  const text = before + block + after;
  const merged = parseOrRefuse(text, "the containerd config with the cocoon runtimes added");
  for (const r of runtimes) {
    if (dig(merged, "plugins", CRI_PLUGIN, "containerd", "runtimes", r.name, "options", "ConfigPath") !== r.configPath) {
      throw new ContainerdConfigError(`adding runtime "${r.name}" did not take effect in the merged config; the file's layout prevents a safe edit`);
    }
  }
  return { text, created, addedDefaultRunc: withDefaultRunc, unchanged: !created && text === original, warnings };
}

export interface UnmergeResult {
  /** The restored text; undefined = the file was created by install and should be deleted. */
  text: string | undefined;
  /** There was a block to remove. */
  removed: boolean;
}

/** Removes our block, restoring the bytes that were there before install. */
export function unmergeContainerdConfig(text: string): UnmergeResult {
  const span = findBlock(text);
  if (!span) return { text, removed: false };
  const rest = text.slice(0, span.start) + text.slice(span.end);
  return { text: rest === CREATED_HEADER ? undefined : rest, removed: true };
}

export interface RegisteredRuntime {
  name: string;
  runtimeType: string;
  configPath: string;
}

/** Runtimes of the CRI plugin in a parsed version 2 config (e.g. `containerd config dump` output). */
export function criRuntimes(doc: Record<string, unknown>): RegisteredRuntime[] {
  const rts = dig(doc, "plugins", CRI_PLUGIN, "containerd", "runtimes");
  if (!isTable(rts)) return [];
  return Object.entries(rts).map(([name, r]) => ({
    name,
    runtimeType: String(dig(r, "runtime_type") ?? ""),
    configPath: String(dig(r, "options", "ConfigPath") ?? ""),
  }));
}
