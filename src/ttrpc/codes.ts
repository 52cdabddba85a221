// gRPC status codes and the single error type of the ttrpc layer.

/** gRPC status codes (google.rpc.Code), as carried in ttrpc `Response.status.code`. */
export const Code = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;
export type Code = (typeof Code)[keyof typeof Code];

const codeNames: Record<number, string> = Object.fromEntries(
  Object.entries(Code).map(([name, value]) => [value, name]),
);

/** Name of a code ("NOT_FOUND"), or the number as text for codes outside 0..16. */
export function codeName(code: number): string {
  return codeNames[code] ?? String(code);
}

export function isCode(value: unknown): value is Code {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 16;
}

/** An RPC failure: a status received from the peer, or one to send to it. */
export class TtrpcError extends Error {
  readonly code: Code;

  constructor(code: Code, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TtrpcError";
    this.code = code;
  }
}

export interface StatusLike {
  code: Code;
  message: string;
}

/**
 * Maps anything thrown by a handler to a wire status. Upper layers plug in their own error
 * types by carrying a numeric `grpcCode` property, so this layer need not know them.
 */
export function statusFromError(err: unknown): StatusLike {
  const message = messageOf(err);
  if (err instanceof TtrpcError) return { code: err.code, message };
  if (typeof err === "object" && err !== null) {
    const grpcCode = (err as { grpcCode?: unknown }).grpcCode;
    if (isCode(grpcCode)) return { code: grpcCode, message };
  }
  return { code: Code.UNKNOWN, message };
}

function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === "object" && err !== null) {
    const m = (err as { message?: unknown }).message;
    if (typeof m === "string") return m;
  }
  try {
    return String(err);
  } catch {
    return "unknown error";
  }
}
