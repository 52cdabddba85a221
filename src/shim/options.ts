// Runtime options arrive as a protobuf Any (on `start` stdin and in Create.options): runc's own
// options for runtimes configured like runc-v2, or the generic options the CRI plugin sends for
// other runtime types, whose ConfigPath (or inline body) selects the Cocoon config file.
import { readAny, readGenericOptions, readRuncOptions } from "./options-wire.js";
import { defaultConfig, loadConfigFile, parseConfig, type CocoonConfig } from "./config.js";
import type { RuncOptionsWire } from "./options-wire.js";
import { invalidArgument } from "./errors.js";

export type RuntimeOptions =
  | { kind: "none" }
  | { kind: "runc"; runc: RuncOptionsWire }
  | { kind: "generic"; configPath: string; configBody: Uint8Array };

const bareType = (typeUrl: string) => typeUrl.slice(typeUrl.lastIndexOf("/") + 1);

export function decodeOptions(typeUrl: string, value: Uint8Array): RuntimeOptions {
  const type = bareType(typeUrl);
  try {
    if (type === "containerd.runc.v1.Options") {
      return { kind: "runc", runc: readRuncOptions(value) };
    }
    if (type === "runtimeoptions.v1.Options") {
      const o = readGenericOptions(value);
      return { kind: "generic", configPath: o.configPath, configBody: o.configBody };
    }
  } catch (err) {
    throw invalidArgument(`malformed runtime options ${type}: ${(err as Error).message}`);
  }
  throw invalidArgument(`unsupported runtime options type "${typeUrl}" (want containerd.runc.v1.Options or runtimeoptions.v1.Options)`);
}

/** Decodes the raw bytes of a marshalled Any (what containerd writes to `start` stdin). */
export function decodeOptionsAny(bytes: Uint8Array): RuntimeOptions {
  if (bytes.length === 0) return { kind: "none" };
  let any;
  try {
    any = readAny(bytes);
  } catch (err) {
    throw invalidArgument(`malformed runtime options: ${(err as Error).message}`);
  }
  if (!any.typeUrl) return { kind: "none" };
  return decodeOptions(any.typeUrl, any.value);
}

/**
 * The config for these options: the file they name, else $COCOON_CONFIG, else built-in defaults.
 * runc options do not change it: the modes that honour them read them from each Create.
 */
export function resolveConfig(opts: RuntimeOptions, env: NodeJS.ProcessEnv = process.env): CocoonConfig {
  let cfg: CocoonConfig;
  if (opts.kind === "generic" && opts.configBody.length > 0) cfg = parseConfig(new TextDecoder().decode(opts.configBody), "(inline config body)");
  else if (opts.kind === "generic" && opts.configPath) cfg = loadConfigFile(opts.configPath);
  else if (env["COCOON_CONFIG"]) cfg = loadConfigFile(env["COCOON_CONFIG"]);
  else cfg = defaultConfig();
  return cfg;
}
