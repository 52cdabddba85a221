// A client of the CRI streaming server's port forwarding: the URL that CRI PortForward returns, spoken
// over WebSocket with the "v4.channel.k8s.io" subprotocol (kubelet's streaming server, which containerd
// serves, accepts it next to SPDY). Every message starts with a channel byte: channel 2i carries port
// i's bytes both ways, 2i+1 the error text the runtime reports for it; each channel first sends its
// port (2 bytes, little-endian). One WebSocket is one TCP connection to each port.
import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import type { Socket } from "node:net";
import { Duplex } from "node:stream";
import type { CriClient } from "./client.js";

const PROTOCOL = "v4.channel.k8s.io";
const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const OP_CONT = 0x0, OP_TEXT = 0x1, OP_BIN = 0x2, OP_CLOSE = 0x8, OP_PING = 0x9, OP_PONG = 0xa;
/** Larger frames from a server are a protocol error here (the streaming server sends ~32 KiB). */
const MAX_FRAME = 16 * 1024 * 1024;

/** One client-to-server frame (clients must mask). */
export function encodeFrame(opcode: number, payload: Uint8Array): Buffer {
  const len = payload.length;
  const head = len < 126 ? Buffer.alloc(2) : len < 0x10000 ? Buffer.alloc(4) : Buffer.alloc(10);
  head[0] = 0x80 | opcode;
  if (len < 126) head[1] = 0x80 | len;
  else if (len < 0x10000) {
    head[1] = 0x80 | 126;
    head.writeUInt16BE(len, 2);
  } else {
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  const mask = randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i]! ^= mask[i & 3]!;
  return Buffer.concat([head, mask, body]);
}

export interface Frame {
  fin: boolean;
  opcode: number;
  payload: Buffer;
}

/** Splits a server's byte stream into frames (unmasking if a server masks, which it should not). */
export class FrameParser {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: Frame[] = [];
    for (;;) {
      if (this.buf.length < 2) break;
      const b0 = this.buf[0]!, b1 = this.buf[1]!;
      let len = b1 & 0x7f;
      let off = 2;
      if (len === 126) {
        if (this.buf.length < 4) break;
        len = this.buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) break;
        const big = this.buf.readBigUInt64BE(2);
        if (big > BigInt(MAX_FRAME)) throw new Error(`WebSocket frame of ${big} bytes is too large`);
        len = Number(big);
        off = 10;
      }
      const masked = (b1 & 0x80) !== 0;
      const maskOff = off;
      if (masked) off += 4;
      if (this.buf.length < off + len) break;
      const payload = Buffer.from(this.buf.subarray(off, off + len));
      if (masked) for (let i = 0; i < len; i++) payload[i]! ^= this.buf[maskOff + (i & 3)]!;
      out.push({ fin: (b0 & 0x80) !== 0, opcode: b0 & 0x0f, payload });
      this.buf = this.buf.subarray(off + len);
    }
    return out;
  }
}

/**
 * The data of one forwarded port as a Duplex: what is written goes to the pod's port, what the port
 * sends comes out. `failure` resolves once the forward is over, with the runtime's error text ("" if
 * it reported none).
 */
export class PortForwardStream extends Duplex {
  readonly failure: Promise<string>;
  private settle!: (text: string) => void;
  private errorText = "";
  private readonly headerLeft = [2, 2];
  private message: Buffer[] = [];
  private messageOp = 0;
  private readonly parser = new FrameParser();

  constructor(private readonly socket: Socket) {
    super({ allowHalfOpen: true });
    this.failure = new Promise((resolve) => (this.settle = resolve));
    socket.on("data", (chunk: Buffer) => {
      try {
        for (const f of this.parser.push(chunk)) this.onFrame(f);
      } catch (err) {
        socket.destroy(err as Error);
      }
    });
    socket.on("error", (err) => {
      if (!this.errorText) this.errorText = err.message;
    });
    socket.once("close", () => {
      this.push(null);
      this.settle(this.errorText);
      this.destroy();
    });
  }

  private onFrame(f: Frame) {
    if (f.opcode === OP_PING) return void this.socket.write(encodeFrame(OP_PONG, f.payload));
    if (f.opcode === OP_CLOSE) {
      this.socket.end(encodeFrame(OP_CLOSE, f.payload.subarray(0, 2)));
      return;
    }
    if (f.opcode === OP_BIN || f.opcode === OP_TEXT) this.messageOp = f.opcode;
    else if (f.opcode !== OP_CONT) return;
    this.message.push(f.payload);
    if (!f.fin) return;
    const msg = Buffer.concat(this.message);
    this.message = [];
    if (this.messageOp === OP_BIN && msg.length > 0) this.onMessage(msg[0]!, msg.subarray(1));
  }

  private onMessage(channel: number, data: Buffer) {
    if (channel > 1) return;
    // Each channel opens with its port number.
    const skip = Math.min(this.headerLeft[channel]!, data.length);
    this.headerLeft[channel]! -= skip;
    data = data.subarray(skip);
    if (data.length === 0) return;
    if (channel === 0) {
      if (!this.push(data)) this.socket.pause();
    } else this.errorText += data.toString("utf8");
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.socket.destroyed) return cb(new Error("the port-forward stream is closed"));
    this.socket.write(encodeFrame(OP_BIN, Buffer.concat([Buffer.of(0), chunk])), cb);
  }

  /** v4 cannot half-close: the forward ends when either side closes the WebSocket. */
  override _final(cb: (err?: Error | null) => void): void {
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.socket.destroyed) this.socket.end(encodeFrame(OP_CLOSE, Buffer.from([0x03, 0xe8])));
    cb(err);
  }
}

/** Opens `url` (from CRI PortForward with one port) as a WebSocket. */
export function openPortForward(url: string, timeoutMs = 10_000): Promise<PortForwardStream> {
  const key = randomBytes(16).toString("base64");
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      headers: { Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": key, "Sec-WebSocket-Protocol": PROTOCOL },
      timeout: timeoutMs,
    });
    req.once("timeout", () => req.destroy(new Error(`no answer from ${url} within ${timeoutMs} ms`)));
    req.once("error", reject);
    req.once("response", (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d.slice(0, 1000 - body.length)));
      res.once("end", () => reject(new Error(`port-forward refused: HTTP ${res.statusCode}: ${body.trim()}`)));
    });
    req.once("upgrade", (res, socket, head) => {
      const want = createHash("sha1").update(key + WS_GUID).digest("base64");
      if (res.headers["sec-websocket-accept"] !== want) {
        socket.destroy();
        return reject(new Error("port-forward: the server's WebSocket handshake does not match"));
      }
      socket.setTimeout(0);
      socket.setNoDelay(true);
      const stream = new PortForwardStream(socket);
      if (head.length > 0) socket.unshift(head);
      resolve(stream);
    });
    req.end();
  });
}

/**
 * Sends `request` to `port` of the pod through CRI PortForward and collects what the port sends back
 * until the forward ends (the server closed, or the runtime failed: then `error` says why).
 */
export async function forwardOnce(cri: CriClient, podSandboxId: string, port: number, request: Uint8Array, timeoutMs = 30_000): Promise<{ data: Buffer; error: string }> {
  const { url } = await cri.portForward({ podSandboxId, port: [port] });
  const stream = await openPortForward(url, timeoutMs);
  const chunks: Buffer[] = [];
  stream.on("data", (d: Buffer) => chunks.push(d));
  stream.on("error", () => {});
  stream.write(request);
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<string>((resolve) => (timer = setTimeout(() => {
    stream.destroy();
    resolve(`no end of the forward within ${timeoutMs} ms`);
  }, timeoutMs)));
  const error = await Promise.race([stream.failure, timedOut]);
  clearTimeout(timer);
  return { data: Buffer.concat(chunks), error };
}
