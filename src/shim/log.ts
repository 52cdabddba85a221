// Structured logs in logfmt (the format containerd itself prints), written to the log FIFO that
// containerd opens for each shim bundle; containerd copies those lines into its own log.
import { openSync, writeSync, closeSync, constants } from "node:fs";

export type Level = "debug" | "info" | "warn" | "error";
const RANK: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

function quote(v: unknown): string {
  const s = v instanceof Error ? v.message : typeof v === "string" ? v : JSON.stringify(v);
  return /^[\w./:@-]+$/.test(s ?? "") ? s : JSON.stringify(s ?? "");
}

export function formatLine(level: Level, msg: string, fields: Record<string, unknown>): string {
  let line = `time="${new Date().toISOString()}" level=${level} msg=${JSON.stringify(msg)}`;
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${quote(v)}`;
  return line + "\n";
}

export class Logger {
  private sinks = new Map<string, number>();
  constructor(
    private level: Level = "info",
    private readonly base: Record<string, unknown> = {},
  ) {}

  setLevel(level: Level) {
    this.level = level;
  }

  /** Adds the log FIFO of a bundle. containerd holds it open read-write, so a non-blocking open succeeds. */
  addSink(key: string, fifoPath: string) {
    if (this.sinks.has(key)) return;
    try {
      this.sinks.set(key, openSync(fifoPath, constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW));
    } catch {
      // No log pipe (e.g. started by hand): logs are dropped rather than failing the shim.
    }
  }

  removeSink(key: string) {
    const fd = this.sinks.get(key);
    if (fd === undefined) return;
    this.sinks.delete(key);
    try {
      closeSync(fd);
    } catch {}
  }

  addStderr() {
    this.sinks.set("stderr", 2);
  }

  child(fields: Record<string, unknown>): Logger {
    const c = new Logger(this.level, { ...this.base, ...fields });
    c.sinks = this.sinks;
    return c;
  }

  log(level: Level, msg: string, fields: Record<string, unknown> = {}) {
    if (RANK[level] < RANK[this.level]) return;
    const line = formatLine(level, msg, { ...this.base, ...fields });
    // One sink is enough: every live bundle's FIFO ends up in the same containerd log.
    for (const [key, fd] of this.sinks) {
      try {
        writeSync(fd, line);
        return;
      } catch {
        this.removeSink(key);
      }
    }
  }

  debug(msg: string, f?: Record<string, unknown>) { this.log("debug", msg, f); }
  info(msg: string, f?: Record<string, unknown>) { this.log("info", msg, f); }
  warn(msg: string, f?: Record<string, unknown>) { this.log("warn", msg, f); }
  error(msg: string, f?: Record<string, unknown>) { this.log("error", msg, f); }
}
