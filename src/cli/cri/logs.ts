// Reader for the CRI container log format containerd writes at ContainerConfig.log_path:
//   <RFC3339Nano time> <stdout|stderr> <tag> <content>\n
// where the first ':'-separated field of the tag is F (full line) or P (partial: the line continues in the
// next record of the same stream, as happens for lines longer than containerd's buffer).

export type LogStream = "stdout" | "stderr";

export interface LogLine {
  stream: LogStream;
  /** Timestamp of the line's first record, as written (RFC 3339 with nanoseconds). */
  timestamp: string;
  /** Content without the trailing newline; partial records already joined. */
  text: string;
  /** True only for a line whose final record had not been written yet (the log ended on a P record). */
  partial: boolean;
}

interface Pending {
  timestamp: string;
  parts: string[];
}

const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

/** Incremental parser: feed chunks as the file grows (e.g. while following), then end(). */
export class CriLogParser {
  private carry = "";
  private readonly pending = new Map<LogStream, Pending>();
  /** Records that did not match the format; skipped. */
  malformed = 0;

  /** Returns the lines completed by this chunk. */
  push(chunk: string): LogLine[] {
    const text = this.carry + chunk;
    const lines = text.split("\n");
    this.carry = lines.pop()!;
    const out: LogLine[] = [];
    for (const l of lines) this.record(l, out);
    return out;
  }

  /** Flushes an unterminated last record and any partial lines still waiting for their end. */
  end(): LogLine[] {
    const out: LogLine[] = [];
    if (this.carry) this.record(this.carry, out);
    this.carry = "";
    for (const [stream, p] of this.pending) out.push({ stream, timestamp: p.timestamp, text: p.parts.join(""), partial: true });
    this.pending.clear();
    return out;
  }

  private record(line: string, out: LogLine[]): void {
    const parsed = parseRecord(line);
    if (!parsed) {
      if (line !== "") this.malformed++;
      return;
    }
    const { timestamp, stream, full, content } = parsed;
    const p = this.pending.get(stream);
    if (!full) {
      if (p) p.parts.push(content);
      else this.pending.set(stream, { timestamp, parts: [content] });
      return;
    }
    if (p) {
      this.pending.delete(stream);
      out.push({ stream, timestamp: p.timestamp, text: p.parts.join("") + content, partial: false });
    } else {
      out.push({ stream, timestamp, text: content, partial: false });
    }
  }
}

export interface LogRecord {
  timestamp: string;
  stream: LogStream;
  /** F (true) or P (false). */
  full: boolean;
  content: string;
}

/** Splits one record; undefined when it is not in CRI log format. */
export function parseRecord(line: string): LogRecord | undefined {
  const a = line.indexOf(" ");
  const b = a < 0 ? -1 : line.indexOf(" ", a + 1);
  if (b < 0) return undefined;
  const timestamp = line.slice(0, a);
  const stream = line.slice(a + 1, b);
  if (!TIMESTAMP.test(timestamp) || (stream !== "stdout" && stream !== "stderr")) return undefined;
  // The tag may be followed by the content or, for an empty line, by nothing at all.
  const c = line.indexOf(" ", b + 1);
  const tag = c < 0 ? line.slice(b + 1) : line.slice(b + 1, c);
  const kind = tag.split(":")[0];
  if (kind !== "F" && kind !== "P") return undefined;
  return { timestamp, stream, full: kind === "F", content: c < 0 ? "" : line.slice(c + 1) };
}

/** Parses a whole log file's text. */
export function parseCriLog(text: string): { lines: LogLine[]; malformed: number } {
  const p = new CriLogParser();
  const lines = [...p.push(text), ...p.end()];
  return { lines, malformed: p.malformed };
}
