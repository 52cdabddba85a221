// The one error type of the host (shim, runtimes) and the guest agent. Code throws ShimError with a
// kind; the kind becomes a gRPC status code here and only here: the TTRPC server of either side reads
// `grpcCode` (the shim's Task service and the agent's API alike).

export type ErrorKind =
  | "NotFound"
  | "AlreadyExists"
  | "FailedPrecondition"
  | "InvalidArgument"
  | "Unimplemented"
  | "Unavailable"
  | "DeadlineExceeded"
  | "Internal"
  | "Unknown";

/** google.rpc.Code numbers (core does not depend on the ttrpc layer, which has the same table). */
const GRPC_CODES: Record<ErrorKind, number> = {
  Unknown: 2,
  InvalidArgument: 3,
  DeadlineExceeded: 4,
  NotFound: 5,
  AlreadyExists: 6,
  FailedPrecondition: 9,
  Unimplemented: 12,
  Internal: 13,
  Unavailable: 14,
};

export class ShimError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "ShimError";
  }

  get grpcCode(): number {
    return GRPC_CODES[this.kind];
  }
}

export const notFound = (msg: string) => new ShimError("NotFound", msg);
export const alreadyExists = (msg: string) => new ShimError("AlreadyExists", msg);
export const failedPrecondition = (msg: string) => new ShimError("FailedPrecondition", msg);
export const invalidArgument = (msg: string) => new ShimError("InvalidArgument", msg);
export const unimplemented = (msg: string) => new ShimError("Unimplemented", msg);
export const unavailable = (msg: string) => new ShimError("Unavailable", msg);
export const internal = (msg: string, cause?: unknown) => new ShimError("Internal", msg, { cause });
export const unknownError = (msg: string) => new ShimError("Unknown", msg);

/** The kind of any error: a ShimError's own, else Unknown. */
export function kindOf(err: unknown): ErrorKind {
  return err instanceof ShimError ? err.kind : "Unknown";
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
