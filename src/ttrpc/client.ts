// ttrpc client: unary calls multiplexed on one stream socket with odd stream ids.
import * as net from "node:net";
import type { Duplex } from "node:stream";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { RequestSchema, ResponseSchema } from "../gen/ttrpc/ttrpc_pb.js";
import type { Response } from "../gen/ttrpc/ttrpc_pb.js";
import { Code, TtrpcError } from "./codes.js";
import { FrameReader, MAX_MESSAGE, MessageType, encodeFrame, oversizedMessage } from "./frame.js";
import type { FrameEvent } from "./frame.js";

export interface CallOptions {
  /** Deadline for this call; sent as `timeout_nano` and enforced locally. */
  timeoutMs?: number;
  /** Keys are lower-cased on the wire, as Go's ttrpc metadata API does. */
  metadata?: Record<string, string | string[]>;
  /** Aborting rejects the call with CANCELLED (ttrpc has no cancel message; the server is not told). */
  signal?: AbortSignal;
}

export interface ConnectOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

type TypedMethod<M> = M extends { input: infer I extends DescMessage; output: infer O extends DescMessage }
  ? (req: MessageInitShape<I>, opts?: CallOptions) => Promise<MessageShape<O>>
  : never;

/** Client stub of a generated service: one async method per RPC, keyed by `localName`. */
export type TypedClient<D extends DescService> = {
  [K in keyof D["method"]]: TypedMethod<D["method"][K]>;
};

interface Pending {
  resolve(payload: Uint8Array): void;
  reject(err: TtrpcError): void;
}

const CLOSED_MESSAGE = "ttrpc: closed";
const MAX_TIMER_MS = 0x7fffffff;

export class TtrpcClient {
  private readonly reader = new FrameReader();
  private readonly pending = new Map<number, Pending>();
  private readonly closeListeners: ((cause?: Error) => void)[] = [];
  private nextStreamId = 1;
  private isClosed = false;
  private closeCause: Error | undefined;

  private constructor(private readonly socket: Duplex) {
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("end", () => this.fail());
    socket.on("error", (err) => this.fail(err));
    socket.on("close", () => this.fail());
  }

  /** Connects to a unix socket path (a `unix://` prefix is accepted). */
  static connect(path: string, opts: ConnectOptions = {}): Promise<TtrpcClient> {
    const target = path.startsWith("unix://") ? path.slice("unix://".length) : path;
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ path: target });
      let timer: NodeJS.Timeout | undefined;
      const cleanup = () => {
        clearTimeout(timer);
        socket.off("error", onError);
        opts.signal?.removeEventListener("abort", onAbort);
      };
      const giveUp = (err: TtrpcError) => {
        cleanup();
        socket.destroy();
        reject(err);
      };
      const onError = (err: Error) =>
        giveUp(new TtrpcError(Code.UNAVAILABLE, `ttrpc: dial ${target}: ${err.message}`, { cause: err }));
      const onAbort = () => giveUp(new TtrpcError(Code.CANCELLED, `ttrpc: dial ${target}: canceled`));
      socket.once("error", onError);
      socket.once("connect", () => {
        cleanup();
        resolve(new TtrpcClient(socket));
      });
      if (opts.signal?.aborted) return onAbort();
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      if (opts.timeoutMs !== undefined) {
        timer = setTimeout(
          () => giveUp(new TtrpcError(Code.DEADLINE_EXCEEDED, `ttrpc: dial ${target}: timeout`)),
          Math.min(Math.max(opts.timeoutMs, 0), MAX_TIMER_MS),
        );
      }
    });
  }

  /** Wraps an already-connected stream. */
  static fromSocket(socket: Duplex): TtrpcClient {
    return new TtrpcClient(socket);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Number of calls awaiting a reply. */
  get inFlight(): number {
    return this.pending.size;
  }

  call(service: string, method: string, payload: Uint8Array, opts: CallOptions = {}): Promise<Uint8Array> {
    return new Promise<Uint8Array>((resolve, reject) => {
      if (this.isClosed) return reject(this.closedError());
      if (opts.signal?.aborted) return reject(canceled(opts.signal));
      if (opts.timeoutMs !== undefined && opts.timeoutMs <= 0) return reject(deadlineExceeded());

      const metadata = Object.entries(opts.metadata ?? {}).flatMap(([key, value]) =>
        (Array.isArray(value) ? value : [value]).map((v) => ({ key: key.toLowerCase(), value: v })),
      );
      const timeoutNano = opts.timeoutMs === undefined ? 0n : BigInt(Math.round(opts.timeoutMs * 1e6));
      let data: Uint8Array;
      try {
        data = toBinary(RequestSchema, create(RequestSchema, { service, method, payload, timeoutNano, metadata }));
      } catch (err) {
        return reject(new TtrpcError(Code.INTERNAL, `ttrpc: marshal request: ${(err as Error).message}`));
      }
      if (data.length > MAX_MESSAGE) {
        return reject(new TtrpcError(Code.RESOURCE_EXHAUSTED, oversizedMessage(data.length)));
      }

      const id = this.allocateStreamId();
      let timer: NodeJS.Timeout | undefined;
      const onAbort = () => settle(() => reject(canceled(opts.signal!)));
      const settle = (fn: () => void) => {
        if (!this.pending.delete(id)) return;
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        fn();
      };
      this.pending.set(id, {
        resolve: (p) => settle(() => resolve(p)),
        reject: (e) => settle(() => reject(e)),
      });
      if (opts.timeoutMs !== undefined) {
        const deadline = Date.now() + opts.timeoutMs;
        const arm = () => {
          const left = deadline - Date.now();
          if (left <= 0) return settle(() => reject(deadlineExceeded()));
          timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
        };
        arm();
      }
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      try {
        this.socket.write(encodeFrame(id, MessageType.REQUEST, 0, data));
      } catch (err) {
        this.fail(err as Error);
      }
    });
  }

  /** Calls one method of a generated service; `service` is the wire service name. */
  async callTyped<I extends DescMessage, O extends DescMessage>(
    service: string,
    method: { name: string; input: I; output: O },
    req: MessageInitShape<I>,
    opts?: CallOptions,
  ): Promise<MessageShape<O>> {
    const payload = toBinary(method.input, create(method.input, req));
    const res = await this.call(service, method.name, payload, opts);
    try {
      return fromBinary(method.output, res);
    } catch (err) {
      throw new TtrpcError(Code.INTERNAL, `ttrpc: error unmarshalling payload: ${(err as Error).message}`);
    }
  }

  /** A typed stub for `desc`, calling it under `serviceName` (default: the proto name). */
  makeClient<D extends DescService>(desc: D, serviceName: string = desc.typeName): TypedClient<D> {
    const stub: Record<string, unknown> = {};
    for (const m of desc.methods) {
      if (m.methodKind !== "unary") continue;
      stub[m.localName] = (req: never, opts?: CallOptions) => this.callTyped(serviceName, m, req, opts);
    }
    return stub as TypedClient<D>;
  }

  /** Closes the connection; in-flight calls reject with UNAVAILABLE "ttrpc: closed". */
  close(): void {
    this.fail();
  }

  /** Runs `listener` once when the connection closes (at once if already closed); returns an unsubscribe. */
  onClose(listener: (cause?: Error) => void): () => void {
    if (this.isClosed) {
      queueMicrotask(() => listener(this.closeCause));
      return () => {};
    }
    this.closeListeners.push(listener);
    return () => {
      const i = this.closeListeners.indexOf(listener);
      if (i >= 0) this.closeListeners.splice(i, 1);
    };
  }

  private allocateStreamId(): number {
    for (;;) {
      const id = this.nextStreamId;
      this.nextStreamId = id + 2 > 0xffffffff ? 1 : id + 2;
      if (!this.pending.has(id)) return id;
    }
  }

  private onData(chunk: Buffer): void {
    if (this.isClosed) return;
    let events: FrameEvent[];
    try {
      events = this.reader.push(chunk);
    } catch (err) {
      return this.fail(err as Error);
    }
    for (const ev of events) {
      if (this.isClosed) return;
      this.onFrame(ev);
    }
  }

  private onFrame(ev: FrameEvent): void {
    const call = this.pending.get(ev.streamId);
    if (ev.kind === "oversized") {
      call?.reject(new TtrpcError(Code.RESOURCE_EXHAUSTED, oversizedMessage(ev.length)));
      return;
    }
    if (ev.type !== MessageType.RESPONSE) {
      return this.fail(new Error(`ttrpc: unknown message type ${ev.type} received`));
    }
    // A reply to a call that already timed out or was canceled is dropped.
    if (!call) return;
    let res: Response;
    try {
      res = fromBinary(ResponseSchema, ev.data);
    } catch (err) {
      call.reject(new TtrpcError(Code.INTERNAL, `ttrpc: unmarshal response error: ${(err as Error).message}`));
      return;
    }
    if (res.status && res.status.code !== Code.OK) {
      call.reject(new TtrpcError(res.status.code as Code, res.status.message));
    } else {
      call.resolve(res.payload);
    }
  }

  private closedError(): TtrpcError {
    return new TtrpcError(Code.UNAVAILABLE, CLOSED_MESSAGE, this.closeCause ? { cause: this.closeCause } : undefined);
  }

  private fail(cause?: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeCause = cause;
    this.socket.destroy();
    const err = this.closedError();
    for (const call of [...this.pending.values()]) call.reject(err);
    for (const listener of this.closeListeners.splice(0)) {
      try {
        listener(cause);
      } catch {
        // A listener's failure must not affect the others or the caller.
      }
    }
  }
}

function deadlineExceeded(): TtrpcError {
  return new TtrpcError(Code.DEADLINE_EXCEEDED, "context deadline exceeded");
}

function canceled(signal: AbortSignal): TtrpcError {
  return new TtrpcError(Code.CANCELLED, "context canceled", { cause: signal.reason });
}
