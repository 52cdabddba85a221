// A thin wrapper over the OCI runtime command line (runc or crun: the same verbs and flags).
// Errors carry the runtime's own message, read from its JSON log, as containerd shows them.
import { accessSync, constants, readFileSync, rmSync, statSync } from "node:fs";
import path from "node:path";
import { runChild, spawnChild } from "../../sys/children.js";
import { failedPrecondition, notFound, ShimError } from "../../shim/errors.js";

export interface OciCliOptions {
  binary: string;
  root: string;
  systemdCgroup: boolean;
  /** Directory for the JSON logs the runtime writes its errors to (one file per call). */
  logDir: string;
  /** More global flags, after the ones above (see flavor.ts). */
  extraGlobalArgs?: readonly string[];
}

export class OciRuntimeError extends ShimError {}

/** Finds the binary on PATH (or checks an absolute path) so a missing runtime fails early and clearly. */
export function resolveBinary(name: string, envPath = process.env["PATH"] ?? ""): string {
  const candidates = name.includes("/") ? [name] : envPath.split(":").filter(Boolean).map((d) => path.join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      if (statSync(c).isFile()) return c;
    } catch {}
  }
  throw failedPrecondition(`OCI runtime binary "${name}" not found${name.includes("/") ? "" : " in PATH"}`);
}

/** The last error message the runtime logged (runc and crun both log JSON lines with "msg"). */
export function lastLoggedError(logFile: string): string {
  let text = "";
  try {
    text = readFileSync(logFile, "utf8");
  } catch {
    return "";
  }
  const lines = text.trim().split("\n").reverse();
  for (const line of lines) {
    try {
      const rec = JSON.parse(line) as { level?: string; msg?: string };
      if (rec.msg && (rec.level === "error" || rec.level === "fatal" || rec.level === undefined)) return rec.msg;
    } catch {
      if (line.trim()) return line.trim();
    }
  }
  return "";
}

export class OciCli {
  readonly binaryPath: string;

  constructor(private readonly o: OciCliOptions) {
    this.binaryPath = resolveBinary(o.binary);
  }

  private calls = 0;

  private globalArgs(logFile: string): string[] {
    const a = ["--root", this.o.root, "--log", logFile, "--log-format", "json"];
    if (this.o.systemdCgroup) a.push("--systemd-cgroup");
    if (this.o.extraGlobalArgs) a.push(...this.o.extraGlobalArgs);
    return a;
  }

  /** Runs a verb; non-zero exit becomes an error quoting the runtime's message. */
  async run(verb: string, args: string[], opts: { stdio?: [number, number, number]; what?: string } = {}): Promise<string> {
    const logFile = path.join(this.o.logDir, `oci-${process.pid}-${++this.calls}.log`);
    const all = [...this.globalArgs(logFile), verb, ...args];
    try {
      return await this.exec(verb, all, logFile, opts);
    } finally {
      rmSync(logFile, { force: true });
    }
  }

  private async exec(verb: string, all: string[], logFile: string, opts: { stdio?: [number, number, number] }): Promise<string> {
    let res;
    if (opts.stdio) {
      res = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
        const child = spawnChild(this.binaryPath, all, { stdio: opts.stdio });
        child.once("error", reject);
        child.once("close", (code) => resolve({ code, stderr: "" }));
      });
      if (res.code === 0) return "";
    } else {
      res = await runChild(this.binaryPath, all, { timeoutMs: 60_000 });
      if (res.code === 0) return (res as { stdout: string }).stdout;
    }
    const msg = lastLoggedError(logFile) || res.stderr.trim() || `exit status ${res.code}`;
    throw classify(verb, `${path.basename(this.o.binary)} ${verb} failed: ${msg}`, msg);
  }
}

/** Maps the runtime's message to the error kind containerd and its clients act on. */
function classify(verb: string, full: string, msg: string): ShimError {
  if (/container .*(does not exist|not found)|no such container/i.test(msg)) return notFound(full);
  if (/not running|container not running|process already finished|is stopped/i.test(msg)) {
    return verb === "kill" ? notFound(`process already finished: ${full}`) : failedPrecondition(full);
  }
  if (/already exists/i.test(msg)) return new ShimError("AlreadyExists", full);
  if (verb === "create" || verb === "exec") {
    if (/executable file not found|no such file or directory|permission denied|unable to find user|no users found|unknown user|invalid/i.test(msg)) {
      return new ShimError("InvalidArgument", `OCI runtime ${verb} failed: ${full}`);
    }
    return new ShimError("Unknown", `OCI runtime ${verb} failed: ${full}`);
  }
  return new ShimError("Unknown", full);
}
