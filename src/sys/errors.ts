// Errors shaped like Node's own system errors (code = errno name, errno = negative number, syscall),
// so callers can test `err.code === 'EBUSY'` whichever Sys produced them.
import { constants } from "node:os";
import { getSystemErrorMap } from "node:util";

export interface SysError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

const errnoByName = constants.errno as Record<string, number>;
const nameByErrno = new Map(Object.entries(errnoByName).map(([name, errno]) => [errno, name]));

function describe(errno: number): { name: string; message: string } {
  // libuv's map has a text for the errors it knows; the OS constants name every errno (e.g. ECHILD).
  const known = getSystemErrorMap().get(-errno);
  if (known) return { name: known[0], message: known[1] };
  const name = nameByErrno.get(errno) ?? `E${errno}`;
  return { name, message: `errno ${errno}` };
}

/** An error for a failed call from its positive errno value; `target` names what the call was about. */
export function errnoError(syscall: string, errno: number, target?: string): SysError {
  const { name, message } = describe(errno);
  const where = target === undefined ? "" : ` ${target}`;
  const err = new Error(`${syscall}${where}: ${name} (${message})`) as SysError;
  err.code = name;
  err.errno = -errno;
  err.syscall = syscall;
  if (target !== undefined) err.path = target;
  return err;
}

/** Same, from an errno name (used by FakeSys and for conditions we detect ourselves); `message`
 *  replaces the default text. */
export function codeError(syscall: string, code: string, target?: string, message?: string): SysError {
  const errno = errnoByName[code] ?? 0;
  const where = target === undefined ? "" : ` ${target}`;
  const err = new Error(message ?? `${syscall}${where}: ${code} (${describe(errno).message})`) as SysError;
  err.code = code;
  err.errno = -errno;
  err.syscall = syscall;
  if (target !== undefined) err.path = target;
  return err;
}
