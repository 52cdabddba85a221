// The real Sys: each call is a thin wrapper over libc through koffi (loaded on first use).
import { listenAt, receiveFd } from "./fd-receiver.js";
import { listenLoopbackInNetns, originalDestination } from "./netns-socket.js";
import { check, libc } from "./libc.js";
import { mount, mountPoints, umount } from "./mount.js";
import { mkdirat, openat2, unlinkat } from "./openat2.js";
import { watchOomV1 } from "./oom-v1.js";
import { waitExit } from "./reap.js";
import { O_CLOEXEC, type ExitStatus, type FdReceiver, type Sys } from "./types.js";
import { openPtyPeer, setWinsize } from "./winsize.js";

const PR_SET_CHILD_SUBREAPER = 36;
const CLOCK_REALTIME = 0;

export class LinuxSys implements Sys {
  setChildSubreaper(): void {
    check(libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)");
  }

  tryReap(pid: number): ExitStatus | null {
    return waitExit(pid, true);
  }

  peekExit(pid: number): ExitStatus | null {
    return waitExit(pid, false);
  }

  mount(source: string, target: string, fstype: string, flags: number, data: string): void {
    mount(source, target, fstype, flags, data);
  }

  umount(target: string, flags: number): void {
    umount(target, flags);
  }

  setWinsize(fd: number, rows: number, cols: number): void {
    setWinsize(fd, rows, cols);
  }

  openPtyPeer(masterFd: number): number {
    return openPtyPeer(masterFd);
  }

  receiveFd(path: string, timeoutMs?: number): FdReceiver {
    return receiveFd(path, timeoutMs);
  }

  watchOomV1(memCgroupDir: string, onOom: () => void): () => void {
    return watchOomV1(memCgroupDir, onOom);
  }

  listenUnix(path: string, backlog: number): number {
    return listenAt(path, backlog, false);
  }

  onSigchld(listener: () => void): () => void {
    const handler = () => listener();
    process.on("SIGCHLD", handler);
    return () => void process.off("SIGCHLD", handler);
  }

  pipe(): [number, number] {
    const fds = new Int32Array(2);
    check(libc().pipe2(fds, O_CLOEXEC), "pipe2");
    return [fds[0]!, fds[1]!];
  }

  setRealtimeClock(unixNs: bigint): void {
    const tp = { tv_sec: unixNs / 1_000_000_000n, tv_nsec: unixNs % 1_000_000_000n };
    check(libc().clockSettime(CLOCK_REALTIME, tp), "clock_settime(CLOCK_REALTIME)");
  }

  listenLoopbackInNetns(netnsPath: string, backlog: number): { fd: number; port: number } {
    return listenLoopbackInNetns(netnsPath, backlog);
  }

  originalDestination(fd: number): { address: string; port: number } | undefined {
    return originalDestination(fd);
  }

  mountPoints(): string[] {
    return mountPoints();
  }

  openat2(dirFd: number, path: string, flags: number, mode: number, resolve: number): number {
    return openat2(dirFd, path, flags, mode, resolve);
  }

  mkdirat(dirFd: number, path: string, mode: number): void {
    mkdirat(dirFd, path, mode);
  }

  unlinkat(dirFd: number, path: string, flags: number): void {
    unlinkat(dirFd, path, flags);
  }
}
