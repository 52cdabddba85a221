// Structured log lines (logfmt, like the shim's) on stderr. In the guest, stderr of PID 1 is the
// serial console, which the host keeps in the sandbox's console log.
export type Level = "debug" | "info" | "warn" | "error";
const RANK: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

function value(v: unknown): string {
  const s = v instanceof Error ? v.message : typeof v === "string" ? v : JSON.stringify(v);
  return /^[\w./:@+-]+$/.test(s ?? "") ? s : JSON.stringify(s ?? "");
}

export function formatLine(level: Level, msg: string, fields: Record<string, unknown>): string {
  let line = `time="${new Date().toISOString()}" level=${level} src=cocoon-agent msg=${JSON.stringify(msg)}`;
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${value(v)}`;
  return line + "\n";
}

export class Logger {
  constructor(
    private readonly level: Level = "info",
    private readonly base: Record<string, unknown> = {},
    private readonly write: (line: string) => void = (line) => void process.stderr.write(line),
  ) {}

  child(fields: Record<string, unknown>): Logger {
    return new Logger(this.level, { ...this.base, ...fields }, this.write);
  }

  log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
    if (RANK[level] < RANK[this.level]) return;
    try {
      this.write(formatLine(level, msg, { ...this.base, ...fields }));
    } catch {
      // A broken console must not take PID 1 down.
    }
  }

  debug(msg: string, fields?: Record<string, unknown>) {
    this.log("debug", msg, fields);
  }
  info(msg: string, fields?: Record<string, unknown>) {
    this.log("info", msg, fields);
  }
  warn(msg: string, fields?: Record<string, unknown>) {
    this.log("warn", msg, fields);
  }
  error(msg: string, fields?: Record<string, unknown>) {
    this.log("error", msg, fields);
  }
}
