// One output stream of a container process (stdout, stderr, or the pty), held until the host reads
// it with ReadOutput. Bounded: when full, the source is paused, so a process whose output nobody
// reads blocks on its next write, as it would on a full pipe.
import type { Readable } from "node:stream";

export const OUTPUT_LIMIT = 1024 * 1024;
/** Most bytes one ReadOutput reply carries (ttrpc messages are limited to 4 MiB). */
export const MAX_CHUNK = 256 * 1024;

export interface OutputChunk {
  data: Buffer;
  eof: boolean;
}

interface Waiter {
  resolve(c: OutputChunk): void;
  reject(err: unknown): void;
  signal: AbortSignal | undefined;
  onAbort: () => void;
}

export class OutputBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  private ended = false;
  private waiters: Waiter[] = [];
  private source: Readable | undefined;
  private sourcePaused = false;

  constructor(private readonly limit = OUTPUT_LIMIT) {}

  get isEnded(): boolean {
    return this.ended;
  }

  get buffered(): number {
    return this.size;
  }

  /** Copies `src` in. An error ends the stream (a pty master reports EIO once the last slave closes). */
  attach(src: Readable): void {
    this.source = src;
    src.on("data", (d: Buffer) => {
      if (!this.push(d) && !this.sourcePaused) {
        this.sourcePaused = true;
        src.pause();
      }
    });
    src.once("end", () => this.end());
    src.once("close", () => this.end());
    src.on("error", () => this.end());
  }

  /** Adds a chunk; false once the buffer is at or over its limit. */
  push(data: Buffer): boolean {
    if (this.ended || data.length === 0) return this.size < this.limit;
    const w = this.waiters.shift();
    if (w) {
      // Nothing is buffered while someone waits, so the chunk goes straight out.
      this.settle(w);
      w.resolve({ data: data.length > MAX_CHUNK ? this.keepRest(data) : data, eof: false });
      return this.size < this.limit;
    }
    this.chunks.push(data);
    this.size += data.length;
    return this.size < this.limit;
  }

  /** No more data will come; readers get what is left, then eof. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.size === 0) {
      for (const w of this.waiters.splice(0)) {
        this.settle(w);
        w.resolve({ data: Buffer.alloc(0), eof: true });
      }
    }
  }

  /** The next chunk, waiting for one; eof once ended and drained. Aborting `signal` gives up without consuming. */
  read(signal?: AbortSignal): Promise<OutputChunk> {
    if (this.size > 0) return Promise.resolve({ data: this.take(), eof: false });
    if (this.ended) return Promise.resolve({ data: Buffer.alloc(0), eof: true });
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        signal,
        onAbort: () => {
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(signal!.reason);
        },
      };
      signal?.addEventListener("abort", w.onAbort, { once: true });
      this.waiters.push(w);
      this.resumeSource();
    });
  }

  /** Drops everything and answers waiters with eof (the process is being removed). */
  close(): void {
    this.chunks = [];
    this.size = 0;
    this.end();
  }

  private settle(w: Waiter) {
    w.signal?.removeEventListener("abort", w.onAbort);
  }

  /** A chunk too big for one reply: send its head, keep the rest at the front. */
  private keepRest(data: Buffer): Buffer {
    this.chunks.unshift(data.subarray(MAX_CHUNK));
    this.size += data.length - MAX_CHUNK;
    return data.subarray(0, MAX_CHUNK);
  }

  private take(): Buffer {
    const parts: Buffer[] = [];
    let n = 0;
    while (this.chunks.length > 0 && n < MAX_CHUNK) {
      let c = this.chunks[0]!;
      if (n + c.length > MAX_CHUNK) {
        const room = MAX_CHUNK - n;
        this.chunks[0] = c.subarray(room);
        c = c.subarray(0, room);
      } else {
        this.chunks.shift();
      }
      parts.push(c);
      n += c.length;
    }
    this.size -= n;
    this.resumeSource();
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  private resumeSource() {
    if (this.sourcePaused && this.size < this.limit / 2) {
      this.sourcePaused = false;
      this.source?.resume();
    }
  }
}
