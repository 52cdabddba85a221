// The one error type of the shim and runtimes. Runtime code throws ShimError with a kind; the
// kind is turned into a gRPC status code here and only here (the TTRPC server reads `grpcCode`).

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

const GRPC_CODES: Record<ErrorKind, number> = {
  InvalidArgument: 3,
  DeadlineExceeded: 4,
  NotFound: 5,
  AlreadyExists: 6,
  FailedPrecondition: 9,
  Unimplemented: 12,
  Internal: 13,
  Unavailable: 14,
  Unknown: 2,
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

/** Keeps a ShimError as is; anything else becomes Unknown with its message (never loses the text). */
export function asShimError(err: unknown): ShimError {
  if (err instanceof ShimError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new ShimError("Unknown", msg, { cause: err });
}
