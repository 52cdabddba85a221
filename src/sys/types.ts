// The small set of Linux system calls the shim and the guest agent need and Node does not offer.
// Upper layers depend on this interface only, so that they can be unit-tested with FakeSys.

/** How a process ended: exactly one of `code` / `signal` is non-null. */
export interface ExitStatus {
  pid: number;
  code: number | null;
  signal: number | null;
}

/** A pending receive of one file descriptor on a unix socket (see Sys.receiveFd). */
export interface FdReceiver {
  /** The socket path; it exists from the moment receiveFd returns until the receiver settles. */
  readonly path: string;
  /** Resolves with the received fd (O_CLOEXEC; the caller owns and must close it). Rejects on timeout
   *  (code 'ETIMEDOUT'), on close() (code 'ECANCELED') or on a socket error. An unobserved rejection is
   *  never reported as unhandled, so close() without awaiting is safe. */
  received: Promise<number>;
  /** Abandons the receive: closes the sockets and unlinks the path. Idempotent; a no-op once settled. */
  close(): void;
}

export interface Sys {
  /** prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants are re-parented to us so we can collect their exit status. */
  setChildSubreaper(): void;
  /** waitid(P_PID, pid, WEXITED|WNOHANG): reap `pid` if it has exited; null while it still runs.
   *  Throws an Error with code 'ECHILD' if pid is not our child (never existed or already reaped). */
  tryReap(pid: number): ExitStatus | null;
  /** Same as tryReap but with WNOWAIT: reports without reaping (so libuv can still reap its own children). */
  peekExit(pid: number): ExitStatus | null;
  /** mount(2). flags are MS_* bits; '' for source, fstype or data passes NULL. Throws an Error with
   *  .code = errno name (EINVAL, ENOENT, ENODEV, EBUSY…), .syscall, and a message naming the call and
   *  the target. */
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  /** umount2(2); flags are MNT_* / UMOUNT_* bits. */
  umount(target: string, flags: number): void;
  /** ioctl(fd, TIOCSWINSZ) on a pty master. */
  setWinsize(fd: number, rows: number, cols: number): void;
  /** ioctl(master, TIOCGPTPEER): an fd (O_CLOEXEC) for the slave side of a pty master. */
  openPtyPeer(masterFd: number): number;
  /** Listen on a new AF_UNIX stream socket at `path` (created before this returns), accept one connection
   *  without blocking the event loop, receive one fd sent with SCM_RIGHTS (runc's --console-socket
   *  protocol), then close everything and unlink the path. Throws synchronously if the socket cannot be
   *  created (e.g. 'EADDRINUSE' if the path exists, 'ENAMETOOLONG' past 107 bytes). Default timeout 30 s.
   *  For a pty master, `new tty.ReadStream(fd)` is the stream to use: it reads through libuv's epoll (no
   *  threadpool), is writable too (stdin), owns the fd (destroy() closes it), and ends with an 'error'
   *  of code 'EIO' once the container side is closed. net.Socket rejects tty fds; fs streams would
   *  hold a threadpool thread per blocked read. */
  receiveFd(path: string, timeoutMs?: number): FdReceiver;
  /** cgroup v1 OOM notification on the memory cgroup directory `memCgroupDir`: calls onOom() each time the
   *  kernel reports an OOM there (OOMs signalled while we were not scheduled coalesce into one call).
   *  Returns an idempotent stop(). Watching never keeps the process alive. Removal of the cgroup ends
   *  the watch silently (the kernel's removal wake-up is not an OOM). An exception thrown by onOom
   *  surfaces as an uncaught exception. Throws (ENOENT…) if the directory is not a v1 memory cgroup. */
  watchOomV1(memCgroupDir: string, onOom: () => void): () => void;
  /** A listening AF_UNIX stream socket bound at `path` (O_CLOEXEC, blocking), as a raw fd the caller
   *  owns: unlike a net.Server, closing it or exiting never unlinks the path, so it can be handed to
   *  another process. Throws 'EADDRINUSE' if the path exists. */
  listenUnix(path: string, backlog: number): number;
  /** Calls `listener` on the event loop after SIGCHLD arrives. Signals coalesce (one call may stand for
   *  several exits), so the listener should tryReap every pid it waits for. Never keeps the process
   *  alive. Returns a function that removes the listener. libuv waits for the children it spawned by
   *  pid only, so statuses of re-parented orphans stay for tryReap. */
  onSigchld(listener: () => void): () => void;
  /** pipe2(O_CLOEXEC): [readFd, writeFd], both blocking, owned by the caller. For handing one end to a
   *  child (spawn stdio entries dup it without O_CLOEXEC) and wrapping ours in net.Socket({ fd }),
   *  which makes that end non-blocking for libuv. */
  pipe(): [number, number];
  /** clock_settime(CLOCK_REALTIME): the guest agent sets a restored VM's wall clock from the host's. */
  setRealtimeClock(unixNs: bigint): void;
  /** A listening TCP socket on 127.0.0.1 (an ephemeral port) inside the network namespace `netnsPath`,
   *  as a raw fd (O_CLOEXEC, blocking) the caller owns, e.g. for net.Server.listen({ fd }). Only the
   *  calling thread enters the namespace, and only for the few calls that make the socket. */
  listenLoopbackInNetns(netnsPath: string, backlog: number): { fd: number; port: number };
  /** getsockopt(SO_ORIGINAL_DST) on an accepted IPv4 TCP socket: where its peer meant to connect
   *  before a netfilter REDIRECT/DNAT sent it to us; undefined if conntrack has no entry for it. */
  originalDestination(fd: number): { address: string; port: number } | undefined;
  /** The mount points of this mount namespace in /proc/self/mountinfo order, unescaped (a path appears
   *  once per mount stacked on it). */
  mountPoints(): string[];
  /** openat2(2): opens `path` relative to the directory fd `dirFd` (AT_FDCWD: the cwd) with O_* `flags`,
   *  `mode` (for O_CREAT) and RESOLVE_* `resolve` flags, e.g. RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS to
   *  walk a tree someone else can write without leaving it or following their links. Returns an fd the
   *  caller owns (node:fs can use and close it). Throws with .code ELOOP for a symlink it may not follow,
   *  EXDEV for an escape (or, with RESOLVE_NO_XDEV, a mount crossing), ENOSYS before Linux 5.6. */
  openat2(dirFd: number, path: string, flags: number, mode: number, resolve: number): number;
  /** mkdirat(2): creates `path` relative to `dirFd`; a symlink in its last component is never followed
   *  (EEXIST). */
  mkdirat(dirFd: number, path: string, mode: number): void;
  /** unlinkat(2): removes `path` relative to `dirFd` (a directory with AT_REMOVEDIR); a symlink is
   *  removed itself, never followed. */
  unlinkat(dirFd: number, path: string, flags: number): void;
}

// open(2) flags the platform's node:fs does not name (same value on every Linux architecture).
export const O_CLOEXEC = 0o2000000;
export const O_PATH = 0o10000000;
export const AT_FDCWD = -100;
export const AT_REMOVEDIR = 0x200;

// openat2(2) resolve flags (linux/openat2.h).
export const RESOLVE_NO_XDEV = 0x01;
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;

// mount(2) flags (linux/mount.h).
export const MS_RDONLY = 0x1;
export const MS_NOSUID = 0x2;
export const MS_NODEV = 0x4;
export const MS_NOEXEC = 0x8;
export const MS_SYNCHRONOUS = 0x10;
export const MS_REMOUNT = 0x20;
export const MS_MANDLOCK = 0x40;
export const MS_DIRSYNC = 0x80;
export const MS_NOSYMFOLLOW = 0x100;
export const MS_NOATIME = 0x400;
export const MS_NODIRATIME = 0x800;
export const MS_BIND = 0x1000;
export const MS_MOVE = 0x2000;
export const MS_REC = 0x4000;
export const MS_SILENT = 0x8000;
export const MS_UNBINDABLE = 0x20000;
export const MS_PRIVATE = 0x40000;
export const MS_SLAVE = 0x80000;
export const MS_SHARED = 0x100000;
export const MS_RELATIME = 0x200000;
export const MS_STRICTATIME = 0x1000000;
export const MS_LAZYTIME = 0x2000000;

// umount2(2) flags.
export const MNT_FORCE = 1;
export const MNT_DETACH = 2;
export const MNT_EXPIRE = 4;
export const UMOUNT_NOFOLLOW = 8;
