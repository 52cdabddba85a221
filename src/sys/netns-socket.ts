// TCP sockets made inside another network namespace, and the original destination of a redirected
// connection. setns(2) moves only the calling thread, so the main thread enters the pod's namespace,
// makes and binds the socket (a socket stays in the namespace it was made in) and returns at once;
// no JavaScript or libuv callback runs in between, and libuv's threadpool never moves.
import { closeSync, openSync } from "node:fs";
import { check, libc } from "./libc.js";
import { errnoError } from "./errors.js";

const AF_INET = 2;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0x80000;
const CLONE_NEWNET = 0x40000000;
const SOL_IP = 0;
const SO_ORIGINAL_DST = 80;
const ENOENT = 2;
const SOCKADDR_IN_LEN = 16;

function sockaddrIn(ip: string, port: number): Buffer {
  const b = Buffer.alloc(SOCKADDR_IN_LEN);
  b.writeUInt16LE(AF_INET, 0); // sa_family is host order (x86-64 and arm64 are little-endian)
  b.writeUInt16BE(port, 2);
  ip.split(".").forEach((octet, i) => b.writeUInt8(Number(octet), 4 + i));
  return b;
}

function parseSockaddrIn(b: Buffer): { address: string; port: number } {
  return { address: [...b.subarray(4, 8)].join("."), port: b.readUInt16BE(2) };
}

function lenBuf(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function boundSocket(backlog: number): { fd: number; port: number } {
  const c = libc();
  const fd = check(c.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  try {
    check(c.bind(fd, sockaddrIn("127.0.0.1", 0), SOCKADDR_IN_LEN), "bind", "127.0.0.1:0");
    check(c.listen(fd, backlog), "listen");
    const addr = Buffer.alloc(SOCKADDR_IN_LEN);
    check(c.getsockname(fd, addr, lenBuf(SOCKADDR_IN_LEN)), "getsockname");
    return { fd, port: parseSockaddrIn(addr).port };
  } catch (err) {
    c.close(fd);
    throw err;
  }
}

export function listenLoopbackInNetns(netnsPath: string, backlog: number): { fd: number; port: number } {
  const c = libc();
  // The main thread's own namespace, to come back to ("thread-self": this very thread).
  const home = openSync("/proc/thread-self/ns/net", "r");
  let target: number | undefined;
  try {
    target = openSync(netnsPath, "r");
    check(c.setns(target, CLONE_NEWNET), "setns", netnsPath);
    try {
      return boundSocket(backlog);
    } finally {
      if (c.setns(home, CLONE_NEWNET) !== 0) {
        // Every later socket and child of this thread would live in the pod's namespace: carrying
        // on is worse than stopping (it cannot happen while we hold `home` and CAP_SYS_ADMIN).
        process.stderr.write(`${errnoError("setns", c.errno(), "back to the shim's own network namespace").message}\n`);
        process.abort();
      }
    }
  } finally {
    if (target !== undefined) closeSync(target);
    closeSync(home);
  }
}

export function originalDestination(fd: number): { address: string; port: number } | undefined {
  const c = libc();
  const addr = Buffer.alloc(SOCKADDR_IN_LEN);
  if (c.getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, addr, lenBuf(SOCKADDR_IN_LEN)) !== 0) {
    const errno = c.errno();
    if (errno === ENOENT) return undefined;
    throw errnoError("getsockopt(SO_ORIGINAL_DST)", errno);
  }
  return parseSockaddrIn(addr);
}
