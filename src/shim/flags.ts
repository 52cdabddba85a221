// containerd invokes shims with Go `flag`-style arguments (-name value, -name=value, --name, bare
// booleans), which mainstream JS parsers do not accept, so this tiny parser handles exactly them.

export interface ShimFlags {
  namespace: string;
  address: string;
  publishBinary: string;
  id: string;
  bundle: string;
  socket: string;
  debug: boolean;
  version: boolean;
  action: string;
}

const STRING_FLAGS = new Set(["namespace", "address", "publish-binary", "id", "bundle", "socket"]);
const BOOL_FLAGS = new Set(["debug", "v"]);

export class FlagError extends Error {}

export function parseShimFlags(argv: readonly string[]): ShimFlags {
  const out: ShimFlags = {
    namespace: "",
    address: "",
    publishBinary: "containerd",
    id: "",
    bundle: "",
    socket: "",
    debug: false,
    version: false,
    action: "",
  };
  const strings: Record<string, string> = {};
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      i++;
      break;
    }
    if (!arg.startsWith("-") || arg === "-") break;
    const body = arg.replace(/^--?/, "");
    const eq = body.indexOf("=");
    const name = eq >= 0 ? body.slice(0, eq) : body;
    if (BOOL_FLAGS.has(name)) {
      const v = eq >= 0 ? body.slice(eq + 1) : "true";
      if (!["true", "false", "1", "0"].includes(v)) throw new FlagError(`invalid boolean value "${v}" for -${name}`);
      if (name === "debug") out.debug = v === "true" || v === "1";
      else out.version = v === "true" || v === "1";
      continue;
    }
    if (!STRING_FLAGS.has(name)) throw new FlagError(`flag provided but not defined: -${name}`);
    if (eq >= 0) strings[name] = body.slice(eq + 1);
    else {
      if (i + 1 >= argv.length) throw new FlagError(`flag needs an argument: -${name}`);
      strings[name] = argv[++i]!;
    }
  }
  out.action = argv[i] ?? "";
  out.namespace = strings["namespace"] ?? "";
  out.address = strings["address"] ?? "";
  out.publishBinary = strings["publish-binary"] ?? out.publishBinary;
  out.id = strings["id"] ?? "";
  out.bundle = strings["bundle"] ?? "";
  out.socket = strings["socket"] ?? "";
  return out;
}

/** The environment containerd adds for shims (1.6 sets TTRPC_ADDRESS; 1.7+ adds the rest). */
export interface ShimEnv {
  ttrpcAddress: string;
  grpcAddress: string;
  namespace: string;
  schedCore: boolean;
}

export function readShimEnv(env: NodeJS.ProcessEnv): ShimEnv {
  return {
    ttrpcAddress: env["TTRPC_ADDRESS"] ?? "",
    grpcAddress: env["GRPC_ADDRESS"] ?? "",
    namespace: env["NAMESPACE"] ?? "",
    schedCore: env["SCHED_CORE"] === "1",
  };
}
