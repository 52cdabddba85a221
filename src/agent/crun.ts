// crun's command line inside the guest. Each call gets its own JSON log file, from which a failure's
// message is quoted back to the host (stdout/stderr of `create`/`exec` belong to the container).
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { runChild, spawnChild } from "../sys/children.js";
import { Code } from "../ttrpc/codes.js";
import { AgentError } from "./errors.js";

export interface CrunOptions {
  binary?: string;
  /** Where the per-call log files go. */
  logDir?: string;
  timeoutMs?: number;
}

export interface CrunRunOptions {
  /** fds for the child's stdin, stdout, stderr (the container inherits them from create/exec). */
  stdio?: [number, number, number];
}

/** The last message crun logged, from its JSON-lines log. */
export function lastCrunMessage(text: string): string {
  const lines = text.trim().split("\n").reverse();
  for (const line of lines) {
    if (!line.trim()) continue;
    try {
      const rec = JSON.parse(line) as { msg?: unknown };
      if (typeof rec.msg === "string" && rec.msg) return rec.msg;
    } catch {
      return line.trim();
    }
  }
  return "";
}

/** What a crun failure means to the host: containerd acts on the code, the user reads the message. */
export function crunErrorCode(verb: string, msg: string): Code {
  if (/does not exist|not found|no such container/i.test(msg) && !/executable|file|directory/i.test(msg)) {
    return Code.NOT_FOUND;
  }
  if (/already exists/i.test(msg)) return Code.ALREADY_EXISTS;
  if (/not running|is stopped|already (paused|stopped)|not paused/i.test(msg)) return Code.FAILED_PRECONDITION;
  if (verb === "create" || verb === "exec") {
    if (/executable file not found|no such file or directory|permission denied|unknown user|invalid|cannot parse|unknown signal|unsupported/i.test(msg)) {
      return Code.INVALID_ARGUMENT;
    }
  }
  return Code.UNKNOWN;
}

export class Crun {
  readonly binary: string;
  private readonly logDir: string;
  private readonly timeoutMs: number;
  private calls = 0;

  constructor(opts: CrunOptions = {}) {
    this.binary = opts.binary ?? "crun";
    this.logDir = opts.logDir ?? "/run/cocoon/crun-log";
    this.timeoutMs = opts.timeoutMs ?? 60_000;
  }

  /** Runs `crun <verb> <args>`; resolves with its stdout, or throws an AgentError quoting crun. */
  async run(verb: string, args: string[], opts: CrunRunOptions = {}): Promise<string> {
    mkdirSync(this.logDir, { recursive: true, mode: 0o700 });
    const logFile = path.join(this.logDir, `${verb}-${++this.calls}.log`);
    const argv = ["--log", logFile, "--log-format", "json", verb, ...args];
    try {
      let code: number | null;
      let signal: NodeJS.Signals | null;
      let stdout = "";
      let stderr = "";
      if (opts.stdio) {
        ({ code, signal } = await this.spawnWithFds(argv, opts.stdio));
      } else {
        ({ code, signal, stdout, stderr } = await runChild(this.binary, argv, { timeoutMs: this.timeoutMs }));
      }
      if (code === 0) return stdout;
      let logged = "";
      try {
        logged = lastCrunMessage(readFileSync(logFile, "utf8"));
      } catch {}
      const why = logged || stderr.trim() || (signal ? `killed by ${signal}` : `exit status ${code}`);
      throw new AgentError(crunErrorCode(verb, why), `crun ${verb} failed: ${why}`);
    } finally {
      rmSync(logFile, { force: true });
    }
  }

  private spawnWithFds(argv: string[], stdio: [number, number, number]): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return new Promise((resolve, reject) => {
      const child = spawnChild(this.binary, argv, { stdio });
      const timer = setTimeout(() => child.kill("SIGKILL"), this.timeoutMs);
      child.once("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      // 'exit', not 'close': there are no pipes of ours to wait for, only the fds we lent.
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal });
      });
    });
  }
}
