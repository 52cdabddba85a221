// The OCI runtime command line (runc, crun, runsc: the same subcommands and flags), as the host
// drives it (runc mode) and as the guest agent drives crun. The binary and the global flags are the
// caller's; every call logs to its own JSON file, from which a failure's message is quoted back.
import { accessSync, constants, mkdirSync, readFileSync, rmSync, statSync } from "node:fs";
import path from "node:path";
import { runChild, spawnChild } from "../sys/children.js";
import { failedPrecondition, ShimError, type ErrorKind } from "./errors.js";

/**
 * How long one call may take, on either side. It bounds `create`/`exec` too, whose stdio are fds we
 * lend: a runtime stuck there (a hook that never returns) must fail the request, not hang it.
 */
export const OCI_CALL_TIMEOUT_MS = 60_000;

export interface OciCliOptions {
  /** A name looked up on PATH, or an absolute path. */
  binary: string;
  /** Flags before the subcommand, e.g. ["--root", dir, "--systemd-cgroup"]. */
  globalArgs?: string[];
  /** Where the per-call JSON logs go (created if missing); each is removed after its call. */
  logDir: string;
  timeoutMs?: number;
}

export interface CreateArgs {
  bundle: string;
  pidFile: string;
  /** Where the runtime sends the pty master when the process has a terminal. */
  consoleSocket?: string;
  /** Further flags, e.g. ["--no-pivot"]. */
  extra?: string[];
  /** fds the runtime (and so the container's init) gets as 0, 1, 2. */
  /** The process's stdio; none when the runtime takes it on `start` instead (runsc joining a sandbox). */
  stdio?: [number, number, number];
}

export interface ExecArgs {
  /** The OCI Process object, as a file. */
  processFile: string;
  pidFile: string;
  consoleSocket?: string;
  /** More flags before the id (runsc: --internal-pid-file). */
  extra?: string[];
  stdio: [number, number, number];
}

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

/** The last error a runtime logged: runc and crun write JSON lines with "msg"; a line that is not JSON is quoted as is. */
export function lastLoggedError(text: string): string {
  for (const line of text.trim().split("\n").reverse()) {
    if (!line.trim()) continue;
    try {
      const rec = JSON.parse(line) as { level?: unknown; msg?: unknown };
      if (typeof rec.msg === "string" && rec.msg && (rec.level === undefined || rec.level === "error" || rec.level === "fatal")) return rec.msg;
    } catch {
      return line.trim();
    }
  }
  return "";
}

/**
 * What a runtime failure means, as the kind containerd and its clients act on. `kill` follows
 * containerd-shim-runc-v2 (a process that is gone, or a container that is not running, is NotFound);
 * a missing executable or file in create/exec is the request's fault, not a missing container.
 */
export function classifyOciError(verb: string, msg: string): ErrorKind {
  if (verb === "kill") {
    if (/process already finished|not running|no such process|does not exist|not found/i.test(msg)) return "NotFound";
    return "Unknown";
  }
  if (/does not exist|not found|no such container/i.test(msg) && !/executable|file|directory/i.test(msg)) return "NotFound";
  if (/already exists/i.test(msg)) return "AlreadyExists";
  if (/not running|is stopped|already (paused|stopped)|not paused|process already finished/i.test(msg)) return "FailedPrecondition";
  if (verb === "create" || verb === "exec") {
    if (/executable file not found|no such file or directory|permission denied|unable to find user|no users found|unknown user|invalid|cannot parse|unknown signal|unsupported/i.test(msg)) {
      return "InvalidArgument";
    }
  }
  return "Unknown";
}

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export class OciCli {
  readonly binaryPath: string;
  private readonly name: string;
  private readonly timeoutMs: number;
  private logDirReady = false;
  private calls = 0;

  constructor(private readonly o: OciCliOptions) {
    this.binaryPath = resolveBinary(o.binary);
    this.name = path.basename(o.binary);
    this.timeoutMs = o.timeoutMs ?? OCI_CALL_TIMEOUT_MS;
  }

  create(id: string, a: CreateArgs): Promise<string> {
    const args = ["--bundle", a.bundle, "--pid-file", a.pidFile];
    if (a.consoleSocket) args.push("--console-socket", a.consoleSocket);
    return this.run("create", [...args, ...(a.extra ?? []), id], a.stdio ? { stdio: a.stdio } : {});
  }

  /** Starts the created container; `stdio` for a runtime that gives the process its stdio only now (runsc joining a sandbox). */
  async start(id: string, stdio?: [number, number, number]): Promise<void> {
    await this.run("start", [id], stdio ? { stdio } : {});
  }

  /** Starts a process in the container, detached: the runtime exits once it runs. */
  async exec(id: string, a: ExecArgs): Promise<void> {
    const args = ["--detach", "--pid-file", a.pidFile, "--process", a.processFile];
    if (a.consoleSocket) args.push("--console-socket", a.consoleSocket);
    await this.run("exec", [...args, ...(a.extra ?? []), id], { stdio: a.stdio });
  }

  async kill(id: string, signal: number, all = false): Promise<void> {
    await this.run("kill", all ? ["--all", id, String(signal)] : [id, String(signal)]);
  }

  /** Force-deletes the container; one the runtime no longer knows counts as deleted. */
  async delete(id: string): Promise<void> {
    try {
      await this.run("delete", ["--force", id]);
    } catch (err) {
      if (!(err instanceof ShimError && err.kind === "NotFound")) throw err;
    }
  }

  async state(id: string): Promise<Record<string, unknown>> {
    return this.json("state", [id]) as Promise<Record<string, unknown>>;
  }

  /** Host pids of the container's processes. */
  async ps(id: string): Promise<number[]> {
    const pids = await this.json("ps", ["--format", "json", id]);
    return Array.isArray(pids) ? pids.map(Number).filter((p) => Number.isInteger(p) && p > 0) : [];
  }

  async pause(id: string): Promise<void> {
    await this.run("pause", [id]);
  }

  async resume(id: string): Promise<void> {
    await this.run("resume", [id]);
  }

  /** Applies the OCI LinuxResources in `resourcesFile`. */
  async update(id: string, resourcesFile: string): Promise<void> {
    await this.run("update", ["--resources", resourcesFile, id]);
  }

  /** One sample of the runtime's own stats (`events --stats`). */
  async events(id: string): Promise<unknown> {
    return this.json("events", ["--stats", id]);
  }

  /** The arguments of a call this client would make, for one that outlives the call timeout (runsc wait). */
  commandArgs(verb: string, args: string[]): string[] {
    return [...(this.o.globalArgs ?? []), verb, ...args];
  }

  /** Runs any subcommand; a failure is a ShimError of the kind classifyOciError gives, quoting the runtime. */
  async run(verb: string, args: string[], opts: { stdio?: [number, number, number] } = {}): Promise<string> {
    if (!this.logDirReady) {
      mkdirSync(this.o.logDir, { recursive: true, mode: 0o700 });
      this.logDirReady = true;
    }
    const logFile = path.join(this.o.logDir, `${verb}-${process.pid}-${++this.calls}.log`);
    const argv = [...(this.o.globalArgs ?? []), "--log", logFile, "--log-format", "json", verb, ...args];
    try {
      const r = opts.stdio ? await this.spawnWithFds(argv, opts.stdio) : await this.spawnPiped(argv);
      if (r.code === 0) return r.stdout;
      if (r.timedOut) {
        throw new ShimError("DeadlineExceeded", `${this.name} ${verb} did not finish within ${Math.round(this.timeoutMs / 1000)} s`);
      }
      let logged = "";
      try {
        logged = lastLoggedError(readFileSync(logFile, "utf8"));
      } catch {}
      const why = logged || r.stderr.trim() || (r.signal ? `killed by ${r.signal}` : `exit status ${r.code}`);
      throw new ShimError(classifyOciError(verb, why), `${this.name} ${verb} failed: ${why}`);
    } finally {
      rmSync(logFile, { force: true });
    }
  }

  private async json(verb: string, args: string[]): Promise<unknown> {
    const out = await this.run(verb, args);
    try {
      return JSON.parse(out.trim() || "null");
    } catch {
      throw new ShimError("Unknown", `${this.name} ${verb} printed something else than JSON: ${out.slice(0, 200)}`);
    }
  }

  private spawnPiped(argv: string[]): Promise<Outcome> {
    return runChild(this.binaryPath, argv, { timeoutMs: this.timeoutMs });
  }

  private spawnWithFds(argv: string[], stdio: [number, number, number]): Promise<Outcome> {
    return new Promise((resolve, reject) => {
      const child = spawnChild(this.binaryPath, argv, { stdio });
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill("SIGKILL");
      }, this.timeoutMs);
      child.once("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      // 'exit', not 'close': there are no pipes of ours to wait for, only the fds we lent.
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stdout: "", stderr: "", timedOut });
      });
    });
  }
}
