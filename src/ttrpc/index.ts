/**
 * ttrpc (containerd/ttrpc v1.1.1 wire protocol): unary protobuf RPC over stream sockets.
 *
 * Each message is a 10-byte big-endian header (length, stream id, type, flags) plus a `ttrpc.Request`
 * or `ttrpc.Response`; data is limited to 4 MiB. Clients use odd stream ids; calls on one connection
 * run concurrently and are answered in completion order. Errors travel as `google.rpc.Status`.
 *
 * - `TtrpcServer`: `register` raw handlers or `registerService` a generated service under any name,
 *   then `listen(path)` / `serve(netServer)` / `accept(socket)`. Handlers get a `CallContext`.
 * - `TtrpcClient`: `connect(path)`, `call` raw bytes, `callTyped` / `makeClient` for generated services.
 * - `TtrpcError` + `Code` are the only error vocabulary; other layers map their errors by giving them
 *   a numeric `grpcCode` property (see `statusFromError`). This layer knows nothing of containerd.
 */
export { Code, TtrpcError, codeName, isCode, statusFromError } from "./codes.js";
export type { StatusLike } from "./codes.js";
export {
  FrameReader,
  HEADER_LENGTH,
  MAX_MESSAGE,
  MessageType,
  encodeFrame,
  oversizedMessage,
} from "./frame.js";
export type { Frame, FrameEvent, OversizedFrame } from "./frame.js";
export { TtrpcServer } from "./server.js";
export type { CallContext, RawHandler, ServiceImpl, TtrpcServerOptions } from "./server.js";
export { TtrpcClient } from "./client.js";
export type { CallOptions, ConnectOptions, TypedClient } from "./client.js";
