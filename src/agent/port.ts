// The agent's end of the virtio-serial port: one character device, opened once for the life of the
// VM. The kernel only allows one open at a time, and net.Socket refuses character devices, so reads
// and writes go through fs calls (the threadpool), wrapped as one Duplex per host connection.
//
// What the port does (drivers/char/virtio_console.c): a read returns 0 (EOF) whenever the host side
// is not connected and nothing is buffered — before the host ever connects, and again after it
// disconnects; otherwise it blocks until data arrives or the host goes away. A write blocks until
// the host is connected. So "host connected" is seen as the first data after an EOF, and "host gone"
// as the next EOF; between sessions the reader polls.
import { openSync, read, write } from "node:fs";
import { Duplex } from "node:stream";
import type { Logger } from "../core/log.js";
import { AGENT_LOG_HOST_CONNECTED, AGENT_LOG_HOST_DISCONNECTED } from "../core/guest-abi.js";

const READ_SIZE = 64 * 1024;

export interface PortOptions {
  /** How often to look again for a host while none is connected. */
  idlePollMs?: number;
  /** Pause after an unexpected read error before trying again. */
  errorRetryMs?: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function readOnce(fd: number, buf: Buffer): Promise<number> {
  return new Promise((resolve, reject) => read(fd, buf, 0, buf.length, null, (err, n) => (err ? reject(err) : resolve(n))));
}

async function writeAll(fd: number, data: Buffer): Promise<void> {
  let off = 0;
  // The driver takes at most 32 KiB per write.
  while (off < data.length) {
    off += await new Promise<number>((resolve, reject) =>
      write(fd, data, off, data.length - off, null, (err, n) => (err ? reject(err) : resolve(n))),
    );
  }
}

/** One host connection on the port: bytes from the host come out, bytes written go to the host. */
class PortSession extends Duplex {
  private wanted: (() => void) | undefined;

  constructor(private readonly fd: number) {
    super({ allowHalfOpen: false });
  }

  /** Resolves once the consumer wants more (or the session is gone). */
  whenWanted(): Promise<void> {
    return new Promise((resolve) => (this.wanted = resolve));
  }

  override _read(): void {
    const w = this.wanted;
    this.wanted = undefined;
    w?.();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.destroyed) return cb();
    writeAll(this.fd, chunk).then(() => cb(), cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this._read();
    cb(err);
  }
}

export class VirtioPort {
  private fd = -1;
  private session: PortSession | undefined;
  /** The consumer dropped a session while the host was still connected: skip to the host's next EOF. */
  private discarding = false;
  private running = false;
  private readonly idlePollMs: number;
  private readonly errorRetryMs: number;

  constructor(
    private readonly path: string,
    private readonly onSession: (stream: Duplex) => void,
    private readonly log: Logger,
    opts: PortOptions = {},
  ) {
    this.idlePollMs = opts.idlePollMs ?? 50;
    this.errorRetryMs = opts.errorRetryMs ?? 1000;
  }

  /** Opens the port (throws if it cannot) and serves it until the process ends. */
  start(): void {
    if (this.running) return;
    this.fd = openSync(this.path, "r+");
    this.running = true;
    void this.readLoop();
  }

  private async readLoop(): Promise<void> {
    const buf = Buffer.allocUnsafe(READ_SIZE);
    for (;;) {
      let n: number;
      try {
        n = await readOnce(this.fd, buf);
      } catch (err) {
        this.log.error("read on agent port failed", { err: (err as Error).message });
        this.endSession();
        await sleep(this.errorRetryMs);
        continue;
      }
      if (n === 0) {
        this.endSession();
        await sleep(this.idlePollMs);
        continue;
      }
      if (this.discarding) continue;
      let s = this.session;
      if (!s || s.destroyed) {
        s = this.session = new PortSession(this.fd);
        const session = s;
        session.once("close", () => {
          // Closed by its consumer, not by an EOF from us: the host's byte stream is now out of step.
          if (this.session === session) {
            this.session = undefined;
            this.discarding = true;
            this.log.warn("agent connection dropped while the host is connected; waiting for the host to reconnect");
          }
        });
        this.log.info(AGENT_LOG_HOST_CONNECTED);
        this.onSession(session);
      }
      if (!s.push(Buffer.from(buf.subarray(0, n)))) await s.whenWanted();
    }
  }

  private endSession(): void {
    this.discarding = false;
    const s = this.session;
    if (!s) return;
    this.session = undefined;
    this.log.info(AGENT_LOG_HOST_DISCONNECTED);
    s.push(null);
    // allowHalfOpen is off, but a consumer that never reads would not see the end; close it anyway.
    setImmediate(() => s.destroy());
  }
}
