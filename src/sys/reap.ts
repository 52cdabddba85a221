// Exit-status collection with waitid(2) for one pid at a time. A pid-specific wait never steals the
// status of a child that libuv spawned (and will reap itself), unlike waitpid(-1).
import { codeError } from "./errors.js";
import { check, libc } from "./libc.js";
import type { ExitStatus } from "./types.js";

const P_PID = 1;
const WNOHANG = 0x1;
const WEXITED = 0x4;
const WNOWAIT = 0x01000000;
const CLD_EXITED = 1;
const EINTR = 4;

// siginfo_t on x86_64/aarch64: 128 bytes; for SIGCHLD si_code @8, si_pid @16, si_status @24.
const SIGINFO_SIZE = 128;

export function waitExit(pid: number, reap: boolean): ExitStatus | null {
  // waitid(P_PID) takes an unsigned id; 0 or a negative pid would mean something else entirely.
  if (!Number.isInteger(pid) || pid <= 0 || pid > 0x7fffffff) throw codeError("waitid", "EINVAL", `pid ${pid}`);
  const c = libc();
  const info = Buffer.alloc(SIGINFO_SIZE);
  const options = WEXITED | WNOHANG | (reap ? 0 : WNOWAIT);
  for (;;) {
    const ret = c.waitid(P_PID, pid, info, options);
    if (ret === -1 && c.errno() === EINTR) continue;
    check(ret, "waitid", `pid ${pid}`);
    break;
  }
  // With WNOHANG and nothing to report the kernel leaves si_pid zero.
  if (info.readInt32LE(16) === 0) return null;
  const status = info.readInt32LE(24);
  return info.readInt32LE(8) === CLD_EXITED
    ? { pid, code: status, signal: null }
    : { pid, code: null, signal: status };
}
