// ttrpc server: unary calls over stream sockets, each connection's calls handled concurrently.
import { chmod, lstat, unlink } from "node:fs/promises";
import * as net from "node:net";
import type { Duplex } from "node:stream";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { RequestSchema, ResponseSchema } from "../gen/ttrpc/ttrpc_pb.js";
import type { Request } from "../gen/ttrpc/ttrpc_pb.js";
import { Code, TtrpcError, statusFromError } from "./codes.js";
import type { StatusLike } from "./codes.js";
import { FrameReader, MAX_MESSAGE, MessageType, encodeFrame, oversizedMessage } from "./frame.js";
import type { FrameEvent } from "./frame.js";

export interface CallContext {
  service: string;
  method: string;
  /** Request metadata; one entry per key, values in arrival order. */
  metadata: Map<string, string[]>;
  /** Absolute deadline in ms since the epoch (from `timeout_nano`; may already be past). */
  deadline: number | undefined;
  /** Aborted when the connection closes or the deadline passes; `reason` is a TtrpcError. */
  signal: AbortSignal;
  connectionId: number;
  /** Runs once the reply was written to the socket (or dropped because it closed). */
  afterReply(fn: () => void): void;
}

type MaybePromise<T> = T | Promise<T>;

export type RawHandler = (payload: Uint8Array, ctx: CallContext) => MaybePromise<Uint8Array>;

type TypedHandler<M> = M extends { input: infer I extends DescMessage; output: infer O extends DescMessage }
  ? (req: MessageShape<I>, ctx: CallContext) => MaybePromise<MessageInitShape<O>>
  : never;

/** Typed implementation of a service, keyed by each method's `localName`; missing methods answer Unimplemented. */
export type ServiceImpl<D extends DescService> = {
  [K in keyof D["method"]]?: TypedHandler<D["method"][K]>;
};

export interface TtrpcServerOptions {
  onConnection?: (connectionId: number) => void;
  onConnectionClosed?: (connectionId: number) => void;
  /** Diagnostics for failures that cannot be reported to a peer (bad callbacks, encoding bugs). */
  onError?: (err: unknown, where: string) => void;
}

/** setTimeout silently fires after 1 ms for delays above this. */
const MAX_TIMER_MS = 0x7fffffff;

export class TtrpcServer {
  onConnection: ((connectionId: number) => void) | undefined;
  onConnectionClosed: ((connectionId: number) => void) | undefined;
  onError: ((err: unknown, where: string) => void) | undefined;

  private readonly services = new Map<string, Map<string, RawHandler>>();
  private readonly listeners = new Set<net.Server>();
  private readonly connections = new Map<number, ServerConnection>();
  private nextConnectionId = 1;
  private closed = false;

  constructor(opts: TtrpcServerOptions = {}) {
    this.onConnection = opts.onConnection;
    this.onConnectionClosed = opts.onConnectionClosed;
    this.onError = opts.onError;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Registers raw handlers: `methods` maps wire method names (e.g. "Create") to handlers. */
  register(serviceName: string, methods: Record<string, RawHandler>): void {
    let table = this.services.get(serviceName);
    if (!table) {
      table = new Map();
      this.services.set(serviceName, table);
    }
    for (const [name, handler] of Object.entries(methods)) table.set(name, handler);
  }

  /**
   * Registers a typed implementation of a generated service under `serviceName` (which may
   * differ from `desc.typeName`, so one implementation can serve several service names).
   */
  registerService<D extends DescService>(serviceName: string, desc: D, impl: ServiceImpl<D>): void {
    const methods: Record<string, RawHandler> = {};
    for (const method of desc.methods) {
      if (method.methodKind !== "unary") continue;
      const fn = (impl as Record<string, unknown>)[method.localName];
      if (typeof fn !== "function") continue;
      const handler = fn as (req: unknown, ctx: CallContext) => unknown;
      methods[method.name] = async (payload, ctx) => {
        let req;
        try {
          req = fromBinary(method.input, payload);
        } catch (err) {
          throw new TtrpcError(Code.INTERNAL, `ttrpc: error unmarshalling payload: ${errText(err)}`);
        }
        const res = await handler.call(impl, req, ctx);
        try {
          return toBinary(method.output, create(method.output, (res ?? undefined) as never));
        } catch (err) {
          throw new TtrpcError(Code.INTERNAL, `ttrpc: error marshaling payload: ${errText(err)}`);
        }
      };
    }
    this.register(serviceName, methods);
  }

  /** Binds a unix socket at `path` (`unix://` prefix accepted), replacing a stale socket file; mode 0600. */
  async listen(address: string): Promise<void> {
    const path = address.startsWith("unix://") ? address.slice("unix://".length) : address;
    await removeStaleSocket(path);
    const srv = net.createServer();
    await new Promise<void>((resolve, reject) => {
      srv.once("error", reject);
      srv.listen(path, () => {
        srv.off("error", reject);
        resolve();
      });
    });
    try {
      await chmod(path, 0o600);
    } catch (err) {
      srv.close();
      throw err;
    }
    this.serve(srv);
  }

  /** Serves connections of an already-listening server (e.g. one built from an inherited fd). */
  serve(netServer: net.Server): void {
    if (this.closed) throw new Error("ttrpc server is closed");
    this.listeners.add(netServer);
    netServer.on("connection", (socket) => this.accept(socket));
    netServer.on("error", (err) => this.report(err, "listener"));
  }

  /** Serves one already-connected stream; returns its connection id. */
  accept(socket: Duplex): number {
    const id = this.nextConnectionId++;
    if (this.closed) {
      socket.destroy();
      return id;
    }
    const conn = new ServerConnection(id, socket, this);
    this.connections.set(id, conn);
    this.safely(() => this.onConnection?.(id), "onConnection");
    // A stream that died before we attached our listeners would otherwise never be reaped.
    if (socket.destroyed) conn.destroy();
    return id;
  }

  /** Stops accepting; with `dropConnections`, also closes open connections (aborting their calls). */
  async close(opts: { dropConnections?: boolean } = {}): Promise<void> {
    this.closed = true;
    const waits: Promise<void>[] = [];
    for (const srv of this.listeners) {
      waits.push(new Promise<void>((resolve) => srv.close(() => resolve())));
    }
    this.listeners.clear();
    if (opts.dropConnections) {
      for (const conn of this.connections.values()) conn.destroy();
      await Promise.all(waits);
    }
    // Without dropping, net.Server's close callback waits for every connection; do not wait for it.
  }

  /** @internal */
  lookup(service: string, method: string): RawHandler | TtrpcError {
    const table = this.services.get(service);
    if (!table) return new TtrpcError(Code.UNIMPLEMENTED, `service ${service}`);
    const handler = table.get(method);
    if (!handler) return new TtrpcError(Code.UNIMPLEMENTED, `method ${method}`);
    return handler;
  }

  /** @internal */
  connectionClosed(id: number): void {
    if (!this.connections.delete(id)) return;
    this.safely(() => this.onConnectionClosed?.(id), "onConnectionClosed");
  }

  /** @internal */
  report(err: unknown, where: string): void {
    try {
      this.onError?.(err, where);
    } catch {
      // A broken diagnostics hook must not take the server down.
    }
  }

  /** @internal */
  safely(fn: () => void, where: string): void {
    try {
      fn();
    } catch (err) {
      this.report(err, where);
    }
  }
}

class ServerConnection {
  private readonly reader = new FrameReader();
  private readonly abort = new AbortController();
  private closed = false;

  constructor(
    readonly id: number,
    private readonly socket: Duplex,
    private readonly server: TtrpcServer,
  ) {
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    // A peer that stops sending ends the connection; a truncated frame is simply dropped.
    socket.on("end", () => this.destroy());
    socket.on("error", () => this.destroy());
    socket.on("close", () => this.destroy());
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort(new TtrpcError(Code.CANCELLED, "ttrpc: connection closed"));
    this.socket.destroy();
    this.server.connectionClosed(this.id);
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let events: FrameEvent[];
    try {
      events = this.reader.push(chunk);
    } catch (err) {
      this.server.report(err, "frame reader");
      this.destroy();
      return;
    }
    for (const ev of events) {
      try {
        this.onFrame(ev);
      } catch (err) {
        this.server.report(err, "dispatch");
      }
    }
  }

  private onFrame(ev: FrameEvent): void {
    // Order of checks follows ttrpc v1.1.1: size, then type, then decoding, then stream id parity.
    if (ev.kind === "oversized") {
      this.sendStatus(ev.streamId, { code: Code.RESOURCE_EXHAUSTED, message: oversizedMessage(ev.length) });
      return;
    }
    if (ev.type !== MessageType.REQUEST) return;
    let req: Request;
    try {
      req = fromBinary(RequestSchema, ev.data);
    } catch (err) {
      this.sendStatus(ev.streamId, {
        code: Code.INVALID_ARGUMENT,
        message: `unmarshal request error: ${errText(err)}`,
      });
      return;
    }
    if (ev.streamId % 2 !== 1) {
      this.sendStatus(ev.streamId, {
        code: Code.INVALID_ARGUMENT,
        message: "StreamID must be odd for client initiated streams",
      });
      return;
    }
    this.handle(ev.streamId, req).catch((err) => this.server.report(err, "handle"));
  }

  private async handle(streamId: number, req: Request): Promise<void> {
    const afterReply: (() => void)[] = [];
    const { signal, deadline, dispose } = this.callSignal(req.timeoutNano);
    const ctx: CallContext = {
      service: req.service,
      method: req.method,
      metadata: metadataMap(req),
      deadline,
      signal,
      connectionId: this.id,
      afterReply: (fn) => afterReply.push(fn),
    };
    let response: Uint8Array;
    try {
      const handler = this.server.lookup(req.service, req.method);
      if (handler instanceof TtrpcError) throw handler;
      const payload = await handler(req.payload, ctx);
      if (!(payload instanceof Uint8Array)) {
        throw new TtrpcError(Code.INTERNAL, "ttrpc: handler returned a non-bytes result");
      }
      response = toBinary(ResponseSchema, create(ResponseSchema, { payload }));
      if (response.length > MAX_MESSAGE) {
        // containerd 1.6's client crashes on an oversized frame; an error is the safe answer.
        response = encodeStatus({ code: Code.RESOURCE_EXHAUSTED, message: oversizedMessage(response.length) });
      }
    } catch (err) {
      const st = statusFromError(err);
      // Code 0 in an error status would read as success to the peer.
      response = encodeStatus(st.code === Code.OK ? { code: Code.UNKNOWN, message: st.message } : st);
    } finally {
      dispose();
    }
    this.write(streamId, response, () => {
      for (const fn of afterReply) this.server.safely(fn, "afterReply");
    });
  }

  /** The call's signal: follows the connection, plus its own deadline timer. */
  private callSignal(timeoutNano: bigint): { signal: AbortSignal; deadline: number | undefined; dispose: () => void } {
    if (timeoutNano === 0n) return { signal: this.abort.signal, deadline: undefined, dispose: () => {} };
    const deadline = Date.now() + Number(timeoutNano / 1_000_000n);
    const ctl = new AbortController();
    const expire = () => ctl.abort(new TtrpcError(Code.DEADLINE_EXCEEDED, "context deadline exceeded"));
    const onConnAbort = () => ctl.abort(this.abort.signal.reason);
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      const left = deadline - Date.now();
      if (left <= 0) return expire();
      timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
      timer.unref();
    };
    if (this.abort.signal.aborted) onConnAbort();
    else this.abort.signal.addEventListener("abort", onConnAbort, { once: true });
    arm();
    return {
      signal: ctl.signal,
      deadline,
      dispose: () => {
        clearTimeout(timer);
        this.abort.signal.removeEventListener("abort", onConnAbort);
      },
    };
  }

  private sendStatus(streamId: number, st: StatusLike): void {
    this.write(streamId, encodeStatus(st));
  }

  private write(streamId: number, data: Uint8Array, done?: () => void): void {
    const sock = this.socket;
    if (this.closed || sock.destroyed || !sock.writable) {
      done?.();
      return;
    }
    try {
      const ok = sock.write(encodeFrame(streamId, MessageType.RESPONSE, 0, data), () => done?.());
      // A peer that sends requests but never reads replies would grow our write queue without bound.
      if (!ok && !sock.isPaused()) {
        sock.pause();
        sock.once("drain", () => sock.resume());
      }
    } catch (err) {
      this.server.report(err, "write");
      done?.();
    }
  }
}

function encodeStatus(st: StatusLike): Uint8Array {
  return toBinary(ResponseSchema, create(ResponseSchema, { status: { code: st.code, message: st.message } }));
}

function metadataMap(req: Request): Map<string, string[]> {
  const md = new Map<string, string[]>();
  for (const kv of req.metadata) {
    const values = md.get(kv.key);
    if (values) values.push(kv.value);
    else md.set(kv.key, [kv.value]);
  }
  return md;
}

async function removeStaleSocket(path: string): Promise<void> {
  try {
    const st = await lstat(path);
    if (!st.isSocket()) throw Object.assign(new Error(`${path} exists and is not a socket`), { code: "EEXIST" });
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
