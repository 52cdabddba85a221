// Receive one fd over a unix socket (runc's --console-socket protocol: runc connects and sends the pty
// master with SCM_RIGHTS and the pty's name as payload). Nothing here blocks the event loop or takes a
// threadpool thread: the listener and the connection are non-blocking and watched by libuv.
import { closeSync, unlinkSync } from "node:fs";
import { codeError, errnoError } from "./errors.js";
import { check, libc } from "./libc.js";
import { watchReadable, type ReadableWatch } from "./poll.js";
import type { FdReceiver } from "./types.js";

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0x800;
const SOCK_CLOEXEC = 0x80000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const EINTR = 4;
const EAGAIN = 11;
const ECONNABORTED = 103;
const SUN_PATH_MAX = 108;

// runc's payload is the pty's name; control room for a few fds in case a peer sends more than one.
const PAYLOAD_SIZE = 4096;
const CONTROL_SIZE = 256;
const DEFAULT_TIMEOUT_MS = 30_000;

export function receiveFd(path: string, timeoutMs = DEFAULT_TIMEOUT_MS): FdReceiver {
  return new UnixFdReceiver(path, timeoutMs);
}

class UnixFdReceiver implements FdReceiver {
  readonly received: Promise<number>;
  private resolve!: (fd: number) => void;
  private reject!: (err: Error) => void;
  private settled = false;
  private listenFd: number | null;
  private connFd: number | null = null;
  private listenWatch: ReadableWatch | null = null;
  private connWatch: ReadableWatch | null = null;
  private readonly timer: NodeJS.Timeout;

  constructor(readonly path: string, timeoutMs: number) {
    this.listenFd = listenAt(path);
    this.received = new Promise<number>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    // Callers that abandon the receiver with close() need not also observe the rejection.
    this.received.catch(() => {});
    this.timer = setTimeout(() => {
      this.fail(codeError("receiveFd", "ETIMEDOUT", path, `receiveFd ${path}: no fd received within ${timeoutMs} ms`));
    }, timeoutMs);
    try {
      this.listenWatch = watchReadable(this.listenFd, (err) => (err ? this.fail(err) : this.onConnection()));
    } catch (err) {
      this.fail(err as Error);
    }
  }

  close(): void {
    if (this.settled) return;
    this.fail(codeError("receiveFd", "ECANCELED", this.path, `receiveFd ${this.path}: closed before an fd arrived`));
  }

  private onConnection(): void {
    if (this.settled || this.listenFd === null) return;
    const c = libc();
    const conn = c.accept4(this.listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (conn === -1) {
      const errno = c.errno();
      if (errno === EAGAIN || errno === EINTR || errno === ECONNABORTED) return;
      this.fail(errnoFailure("accept4", this.path));
      return;
    }
    // One peer is all we serve: drop the listener now so the path disappears as early as possible.
    this.connFd = conn;
    this.closeListener();
    try {
      this.connWatch = watchReadable(conn, (err) => (err ? this.fail(err) : this.onData()));
    } catch (err) {
      this.fail(err as Error);
    }
  }

  private onData(): void {
    if (this.settled || this.connFd === null) return;
    const c = libc();
    const payload = Buffer.alloc(PAYLOAD_SIZE);
    const control = Buffer.alloc(CONTROL_SIZE);
    const msg = {
      msg_name: null,
      msg_namelen: 0,
      msg_iov: [{ iov_base: payload, iov_len: payload.length }],
      msg_iovlen: 1,
      msg_control: control,
      msg_controllen: control.length,
      msg_flags: 0,
    };
    const n = Number(c.recvmsg(this.connFd, msg, MSG_CMSG_CLOEXEC));
    if (n === -1) {
      const errno = c.errno();
      if (errno === EAGAIN || errno === EINTR) return;
      this.fail(errnoFailure("recvmsg", this.path));
      return;
    }
    const fds = rightsIn(control, Number(msg.msg_controllen));
    if (fds.length > 0) {
      for (const extra of fds.slice(1)) closeQuietly(extra);
      this.finish(fds[0]!);
    } else if (n === 0) {
      const text = `receiveFd ${this.path}: peer closed the connection without sending an fd`;
      this.fail(codeError("recvmsg", "ECONNRESET", this.path, text));
    }
    // Payload without an fd: keep reading, the fd may come with a later message.
  }

  private finish(fd: number): void {
    if (this.settled) {
      closeQuietly(fd);
      return;
    }
    this.settled = true;
    this.cleanup();
    this.resolve(fd);
  }

  private fail(err: Error): void {
    if (this.settled) return;
    this.settled = true;
    this.cleanup();
    this.reject(err);
  }

  private cleanup(): void {
    clearTimeout(this.timer);
    this.connWatch?.close();
    this.connWatch = null;
    if (this.connFd !== null) closeQuietly(this.connFd);
    this.connFd = null;
    this.closeListener();
  }

  private closeListener(): void {
    if (this.listenFd === null) return;
    // The watch must be gone before the fd number can be reused.
    this.listenWatch?.close();
    this.listenWatch = null;
    closeQuietly(this.listenFd);
    this.listenFd = null;
    unlinkQuietly(this.path);
  }
}

/** A bound, listening socket at `path`; throws (leaving nothing behind) on failure. */
export function listenAt(path: string, backlog = 1, nonBlocking = true): number {
  const c = libc();
  const name = Buffer.from(path);
  if (name.length >= SUN_PATH_MAX) throw codeError("bind", "ENAMETOOLONG", path);
  if (name.includes(0)) throw codeError("bind", "EINVAL", path);
  const addr = Buffer.alloc(2 + SUN_PATH_MAX);
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);

  const fd = check(c.socket(AF_UNIX, SOCK_STREAM | (nonBlocking ? SOCK_NONBLOCK : 0) | SOCK_CLOEXEC, 0), "socket", path);
  try {
    check(c.bind(fd, addr, 2 + name.length + 1), "bind", path);
  } catch (err) {
    closeQuietly(fd);
    throw err;
  }
  try {
    check(c.listen(fd, backlog), "listen", path);
  } catch (err) {
    closeQuietly(fd);
    unlinkQuietly(path);
    throw err;
  }
  return fd;
}

/** The fds carried by SCM_RIGHTS messages in a received control buffer (struct cmsghdr sequence). */
export function rightsIn(control: Buffer, length: number): number[] {
  const fds: number[] = [];
  const header = 16; // size_t cmsg_len; int cmsg_level; int cmsg_type;
  let off = 0;
  while (off + header <= length) {
    const len = Number(control.readBigUInt64LE(off));
    if (len < header || off + len > length) break;
    if (control.readInt32LE(off + 8) === SOL_SOCKET && control.readInt32LE(off + 12) === SCM_RIGHTS) {
      for (let p = off + header; p + 4 <= off + len; p += 4) fds.push(control.readInt32LE(p));
    }
    off += (len + 7) & ~7;
  }
  return fds;
}

function errnoFailure(syscall: string, path: string): Error {
  return errnoError(syscall, libc().errno(), path);
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Already closed: nothing to release.
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // Gone already (or never created): the goal is that it does not exist.
  }
}
