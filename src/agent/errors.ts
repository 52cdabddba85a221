// Errors the agent returns to the host. The TTRPC layer turns `grpcCode` into the reply's status,
// so the host sees NotFound / AlreadyExists / ... exactly as containerd's runc shim reports them.
import { Code } from "../ttrpc/codes.js";

export class AgentError extends Error {
  constructor(
    readonly grpcCode: Code,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "AgentError";
  }
}

export const notFound = (msg: string) => new AgentError(Code.NOT_FOUND, msg);
export const alreadyExists = (msg: string) => new AgentError(Code.ALREADY_EXISTS, msg);
export const invalidArgument = (msg: string) => new AgentError(Code.INVALID_ARGUMENT, msg);
export const failedPrecondition = (msg: string) => new AgentError(Code.FAILED_PRECONDITION, msg);
export const unknownError = (msg: string) => new AgentError(Code.UNKNOWN, msg);

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
