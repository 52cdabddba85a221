// Structured logs in logfmt (the format containerd itself prints), for the shim and the guest agent.
// Where lines go is the caller's: the shim writes to the log pipes containerd opens per bundle
// (shim/log-pipes.ts), the agent to its stderr, which is the guest's serial console.
export type Level = "debug" | "info" | "warn" | "error";
const RANK: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** Takes one formatted line; may throw (the line is then dropped, never the caller). */
export type LogSink = (line: string) => void;

const stderrSink: LogSink = (line) => void process.stderr.write(line);

function quote(v: unknown): string {
  const s = v instanceof Error ? v.message : typeof v === "string" ? v : JSON.stringify(v);
  return /^[\w./:@+-]+$/.test(s ?? "") ? s : JSON.stringify(s ?? "");
}

export function formatLine(level: Level, msg: string, fields: Record<string, unknown>): string {
  let line = `time="${new Date().toISOString()}" level=${level} msg=${JSON.stringify(msg)}`;
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${quote(v)}`;
  return line + "\n";
}

export class Logger {
  /** Shared with every child, so that setLevel reaches loggers made before it. */
  private readonly threshold: { level: Level };

  constructor(
    level: Level = "info",
    private readonly base: Record<string, unknown> = {},
    private readonly sink: LogSink = stderrSink,
    threshold?: { level: Level },
  ) {
    this.threshold = threshold ?? { level };
  }

  setLevel(level: Level) {
    this.threshold.level = level;
  }

  child(fields: Record<string, unknown>): Logger {
    return new Logger(this.threshold.level, { ...this.base, ...fields }, this.sink, this.threshold);
  }

  log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
    if (RANK[level] < RANK[this.threshold.level]) return;
    try {
      this.sink(formatLine(level, msg, { ...this.base, ...fields }));
    } catch {
      // A broken log must not take the shim (or the guest's PID 1) down.
    }
  }

  debug(msg: string, f?: Record<string, unknown>) { this.log("debug", msg, f); }
  info(msg: string, f?: Record<string, unknown>) { this.log("info", msg, f); }
  warn(msg: string, f?: Record<string, unknown>) { this.log("warn", msg, f); }
  error(msg: string, f?: Record<string, unknown>) { this.log("error", msg, f); }
}
