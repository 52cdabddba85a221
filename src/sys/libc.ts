// The one place that loads koffi and declares the libc functions we call. Loaded on first use so that
// importing src/sys (e.g. from unit tests that use FakeSys) never touches the native module.
import { createRequire } from "node:module";
import type Koffi from "koffi";
import { errnoError } from "./errors.js";

export type KoffiModule = typeof Koffi;

export interface Libc {
  koffi: KoffiModule;
  prctl(option: number, a2: number, a3: number, a4: number, a5: number): number;
  waitid(idtype: number, id: number, infop: Buffer, options: number): number;
  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): number;
  umount2(target: string, flags: number): number;
  /** ioctl with one pointer argument (the request's struct). */
  ioctlPtr(fd: number, request: number, arg: Buffer): number;
  /** ioctl with one int argument. */
  ioctlInt(fd: number, request: number, arg: number): number;
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, addr: Buffer, len: number): number;
  listen(fd: number, backlog: number): number;
  accept4(fd: number, addr: null, len: null, flags: number): number;
  /** recvmsg on a struct msghdr described as a JS object (see fd-receiver.ts). */
  recvmsg(fd: number, msg: Record<string, unknown>, flags: number): number | bigint;
  eventfd(initval: number, flags: number): number;
  pipe2(fds: Int32Array, flags: number): number;
  clockSettime(clk: number, tp: { tv_sec: bigint; tv_nsec: bigint }): number;
  setns(fd: number, nstype: number): number;
  /** `addr` and `len` are caller buffers (len: one native uint32). */
  getsockname(fd: number, addr: Buffer, len: Buffer): number;
  getsockopt(fd: number, level: number, name: number, val: Buffer, len: Buffer): number;
  close(fd: number): number;
  /** openat2(2) through syscall(2): glibc 2.36 (Debian 12) has no wrapper. `how` is a struct open_how. */
  openat2(dirFd: number, path: string, how: Buffer): number | bigint;
  mkdirat(dirFd: number, path: string, mode: number): number;
  unlinkat(dirFd: number, path: string, flags: number): number;
  /** errno left by the last call made on this thread. */
  errno(): number;
}

let loaded: Libc | undefined;

function requireKoffi(): KoffiModule {
  // The esbuild CJS bundles have a real `require`; the ESM output that tests run needs one made from
  // this module's URL (import.meta is empty in the CJS bundle, but that branch is not taken there).
  const req = typeof require === "function" ? require : createRequire(import.meta.url);
  return req("koffi") as KoffiModule;
}

export function libc(): Libc {
  if (loaded) return loaded;
  const koffi = requireKoffi();
  const lib = koffi.load("libc.so.6");

  const iovec = koffi.struct("cocoon_iovec", { iov_base: "void *", iov_len: "size_t" });
  // Referred to by name in the recvmsg prototype below.
  koffi.struct("cocoon_msghdr", {
    msg_name: "void *",
    msg_namelen: "uint32_t",
    msg_iov: koffi.pointer(iovec),
    msg_iovlen: "size_t",
    msg_control: "void *",
    msg_controllen: "size_t",
    msg_flags: "int",
  });

  koffi.struct("cocoon_timespec", { tv_sec: "int64_t", tv_nsec: "int64_t" });

  const ioctl = lib.func("int ioctl(int fd, unsigned long request, ...)");
  const recvmsg = lib.func("intptr_t recvmsg(int fd, _Inout_ cocoon_msghdr *msg, int flags)");
  const syscall = lib.func("long syscall(long number, ...)");
  loaded = {
    koffi,
    prctl: lib.func("int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long)"),
    waitid: lib.func("int waitid(int idtype, uint32_t id, void *infop, int options)"),
    mount: lib.func(
      "int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)",
    ),
    umount2: lib.func("int umount2(const char *target, int flags)"),
    ioctlPtr: (fd, request, arg) => ioctl(fd, request, "void *", arg),
    ioctlInt: (fd, request, arg) => ioctl(fd, request, "int", arg),
    socket: lib.func("int socket(int domain, int type, int protocol)"),
    bind: lib.func("int bind(int fd, void *addr, uint32_t len)"),
    listen: lib.func("int listen(int fd, int backlog)"),
    accept4: lib.func("int accept4(int fd, void *addr, void *len, int flags)"),
    recvmsg: (fd, msg, flags) => recvmsg(fd, msg, flags),
    eventfd: lib.func("int eventfd(unsigned int initval, int flags)"),
    pipe2: lib.func("int pipe2(_Out_ int *fds, int flags)"),
    clockSettime: lib.func("int clock_settime(int clk, const cocoon_timespec *tp)"),
    setns: lib.func("int setns(int fd, int nstype)"),
    getsockname: lib.func("int getsockname(int fd, void *addr, void *len)"),
    getsockopt: lib.func("int getsockopt(int fd, int level, int name, void *val, void *len)"),
    close: lib.func("int close(int fd)"),
    // 437 on every architecture: syscalls added since Linux 5.1 share one number table.
    openat2: (dirFd, path, how) => syscall(437, "int", dirFd, "const char *", path, "void *", how, "size_t", how.length),
    mkdirat: lib.func("int mkdirat(int dirfd, const char *path, uint32_t mode)"),
    unlinkat: lib.func("int unlinkat(int dirfd, const char *path, int flags)"),
    errno: () => koffi.errno(),
  };
  return loaded;
}

/** Throws the errno of the last call when `ret` signals failure (-1). */
export function check(ret: number | bigint, syscall: string, target?: string): number {
  if (Number(ret) === -1) throw errnoError(syscall, libc().errno(), target);
  return Number(ret);
}
