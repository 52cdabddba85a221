// QEMU's machine protocol (QMP): JSON objects, one per line, over a unix socket. After the greeting
// and qmp_capabilities, each command gets one reply ({return} or {error}); events arrive in between
// and are dropped here, since the template code polls query-migrate instead.
import net from "node:net";

export class QmpError extends Error {}

export class Qmp {
  private buf = "";
  private waiting: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];
  private closed: Error | undefined;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding("utf8");
    sock.on("data", (chunk: string) => this.onData(chunk));
    const fail = (err?: Error) => {
      this.closed ??= err ?? new QmpError("QMP connection closed");
      for (const w of this.waiting.splice(0)) w.reject(this.closed);
    };
    sock.on("error", fail);
    sock.on("close", () => fail());
  }

  /** Connects and negotiates; retries until `timeoutMs` while QEMU has not created the socket yet. */
  static async connect(path: string, timeoutMs: number): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(path, () => resolve(s));
          s.once("error", reject);
        });
        const q = new Qmp(sock);
        await q.next(); // the greeting
        await q.execute("qmp_capabilities");
        return q;
      } catch (err) {
        if (Date.now() > deadline) throw new QmpError(`QMP socket ${path}: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) throw this.closed;
    const reply = this.next();
    this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n");
    const r = (await reply) as { return?: T; error?: { class: string; desc: string } };
    if (r.error) throw new QmpError(`${command}: ${r.error.desc}`);
    return r.return as T;
  }

  close(): void {
    this.sock.destroy();
  }

  private next(): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(this.closed);
      this.waiting.push({ resolve, reject });
    });
  }

  private onData(chunk: string) {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if ("event" in msg) continue;
      this.waiting.shift()?.resolve(msg);
    }
  }
}
