// Path resolution that stays beneath a directory: openat2(2), and the *at calls that create and remove
// one name in a directory given by fd (see Sys.openat2 for why callers need them).
import { check, libc } from "./libc.js";

export function openat2(dirFd: number, path: string, flags: number, mode: number, resolve: number): number {
  // struct open_how { u64 flags; u64 mode; u64 resolve; }
  const how = Buffer.alloc(24);
  how.writeBigUInt64LE(BigInt(flags), 0);
  how.writeBigUInt64LE(BigInt(mode), 8);
  how.writeBigUInt64LE(BigInt(resolve), 16);
  return check(libc().openat2(dirFd, path, how), "openat2", path);
}

export function mkdirat(dirFd: number, path: string, mode: number): void {
  check(libc().mkdirat(dirFd, path, mode), "mkdirat", path);
}

export function unlinkat(dirFd: number, path: string, flags: number): void {
  check(libc().unlinkat(dirFd, path, flags), "unlinkat", path);
}
