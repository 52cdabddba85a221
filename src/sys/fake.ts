// An in-memory Sys for unit tests of the layers above: it records every call and lets the test script
// process exits, OOM events, received fds and failures. It never touches the kernel, except in pipe()
// and the *at calls: callers hand those fds to real processes, streams and node:fs, so by default they
// are real pipes, and openat2/mkdirat/unlinkat work on the real filesystem (a test's temp dir).
import { readlinkSync } from "node:fs";
import { codeError } from "./errors.js";
import { LinuxSys } from "./linux.js";
import { MS_BIND, MS_REMOUNT, type ExitStatus, type FdReceiver, type Sys } from "./types.js";

export interface SysCall {
  method: keyof Sys;
  args: unknown[];
}

export interface FakeMount {
  source: string;
  target: string;
  fstype: string;
  flags: number;
  data: string;
}

type ChildState = { running: true } | { running: false; status: ExitStatus };

export class FakeSys implements Sys {
  /** Every call, in order. */
  readonly calls: SysCall[] = [];
  subreaper = false;
  /** Mounted filesystems, oldest first (a later mount on the same target hides an earlier one). */
  readonly mounts: FakeMount[] = [];
  /** The last wall-clock time set, if any. */
  realtimeNs: bigint | undefined;
  /** Last size set per fd. */
  readonly winsizes = new Map<number, { rows: number; cols: number }>();
  /** Receivers created by receiveFd that have not settled yet, by path. */
  readonly receivers = new Map<string, FakeFdReceiver>();
  /** What pipe() returns; replace it to hand out scripted fds instead of real pipes. */
  pipeImpl: () => [number, number] = () => new LinuxSys().pipe();
  private readonly real = new LinuxSys();

  private readonly children = new Map<number, ChildState>();
  private readonly oomWatchers = new Map<string, Set<() => void>>();
  private readonly sigchldListeners = new Set<() => void>();
  private readonly failures: Array<{ method: keyof Sys; code: string }> = [];

  // ---- scripting -------------------------------------------------------------------------------

  /** Declares `pid` as a running child (one that tryReap/peekExit know about). */
  addChild(pid: number): void {
    this.children.set(pid, { running: true });
  }

  /** Makes `pid` (declared or not) an exited child and delivers SIGCHLD to listeners on the next
   *  turn of the event loop, as the kernel would. */
  exit(pid: number, how: { code: number } | { signal: number }): void {
    const status: ExitStatus =
      "code" in how ? { pid, code: how.code, signal: null } : { pid, code: null, signal: how.signal };
    this.children.set(pid, { running: false, status });
    this.sigchld();
  }

  /** Delivers SIGCHLD to listeners on the next turn of the event loop. */
  sigchld(): void {
    setImmediate(() => {
      for (const listener of [...this.sigchldListeners]) listener();
    });
  }

  /** Reports an OOM in `memCgroupDir` to every watcher of it; returns how many were called. */
  oom(memCgroupDir: string): number {
    const watchers = [...(this.oomWatchers.get(memCgroupDir) ?? [])];
    for (const onOom of watchers) onOom();
    return watchers.length;
  }

  /** Makes the next call of `method` throw an Error with this errno code (queued, one per call). */
  failNext(method: keyof Sys, code: string): void {
    this.failures.push({ method, code });
  }

  /** Resolves the pending receiver at `path` with `fd` (throws if there is none). */
  deliverFd(path: string, fd: number): void {
    const receiver = this.receivers.get(path);
    if (!receiver) throw new Error(`FakeSys: no pending receiveFd at ${path}`);
    receiver.deliver(fd);
  }

  isWatchingOom(memCgroupDir: string): boolean {
    return (this.oomWatchers.get(memCgroupDir)?.size ?? 0) > 0;
  }

  /** Whether `pid` was declared and has not been reaped. */
  hasChild(pid: number): boolean {
    return this.children.has(pid);
  }

  /** Tells the fake that `from` was renamed to `to`: the kernel's mount table names mount points by
   *  where they are now, so mounts at or below `from` move along. */
  renamed(from: string, to: string): void {
    for (const m of this.mounts) {
      if (m.target === from || m.target.startsWith(from + "/")) m.target = to + m.target.slice(from.length);
    }
  }

  isMounted(target: string): boolean {
    return this.mounts.some((m) => m.target === target);
  }

  callsOf(method: keyof Sys): unknown[][] {
    return this.calls.filter((c) => c.method === method).map((c) => c.args);
  }

  // ---- Sys ---------------------------------------------------------------------------------------

  setChildSubreaper(): void {
    this.enter("setChildSubreaper", []);
    this.subreaper = true;
  }

  tryReap(pid: number): ExitStatus | null {
    this.enter("tryReap", [pid]);
    const status = this.statusOf(pid);
    if (status) this.children.delete(pid);
    return status;
  }

  peekExit(pid: number): ExitStatus | null {
    this.enter("peekExit", [pid]);
    return this.statusOf(pid);
  }

  mount(source: string, target: string, fstype: string, flags: number, data: string): void {
    this.enter("mount", [source, target, fstype, flags, data]);
    source = resolveFdLink(source);
    target = resolveFdLink(target);
    if (flags & MS_REMOUNT) {
      const current = this.topMount(target);
      if (!current) throw codeError("mount", "EINVAL", target);
      current.flags = flags & ~MS_REMOUNT;
      current.data = data;
      return;
    }
    if (flags & MS_BIND) {
      const from = this.topMount(source);
      this.mounts.push({ source, target, fstype: from?.fstype ?? "none", flags, data });
      return;
    }
    this.mounts.push({ source, target, fstype, flags, data });
  }

  umount(target: string, flags: number): void {
    this.enter("umount", [target, flags]);
    target = resolveFdLink(target);
    const current = this.topMount(target);
    if (!current) throw codeError("umount2", "EINVAL", target);
    this.mounts.splice(this.mounts.lastIndexOf(current), 1);
  }

  setWinsize(fd: number, rows: number, cols: number): void {
    this.enter("setWinsize", [fd, rows, cols]);
    this.winsizes.set(fd, { rows, cols });
  }

  receiveFd(path: string, timeoutMs = 30_000): FdReceiver {
    this.enter("receiveFd", [path, timeoutMs]);
    if (this.receivers.has(path)) throw codeError("bind", "EADDRINUSE", path);
    const receiver = new FakeFdReceiver(path, timeoutMs, () => this.receivers.delete(path));
    this.receivers.set(path, receiver);
    return receiver;
  }

  watchOomV1(memCgroupDir: string, onOom: () => void): () => void {
    this.enter("watchOomV1", [memCgroupDir]);
    const watcher = () => onOom();
    let set = this.oomWatchers.get(memCgroupDir);
    if (!set) this.oomWatchers.set(memCgroupDir, (set = new Set()));
    set.add(watcher);
    return () => {
      set.delete(watcher);
      if (set.size === 0 && this.oomWatchers.get(memCgroupDir) === set) this.oomWatchers.delete(memCgroupDir);
    };
  }

  onSigchld(listener: () => void): () => void {
    this.enter("onSigchld", []);
    const entry = () => listener();
    this.sigchldListeners.add(entry);
    return () => void this.sigchldListeners.delete(entry);
  }

  openPtyPeer(masterFd: number): number {
    this.enter("openPtyPeer", [masterFd]);
    return masterFd + 10000;
  }

  /** Sockets "bound" by listenUnix, by path. */
  readonly listening = new Set<string>();

  listenUnix(path: string, _backlog: number): number {
    this.enter("listenUnix", [path]);
    if (this.listening.has(path)) throw Object.assign(new Error(`bind ${path}: address already in use`), { code: "EADDRINUSE" });
    this.listening.add(path);
    return 1000 + this.listening.size;
  }

  pipe(): [number, number] {
    this.enter("pipe", []);
    return this.pipeImpl();
  }

  setRealtimeClock(unixNs: bigint): void {
    this.enter("setRealtimeClock", [unixNs]);
    this.realtimeNs = unixNs;
  }

  /** There are no namespaces to enter here: it always fails (ENOSYS). */
  listenLoopbackInNetns(netnsPath: string, backlog: number): { fd: number; port: number } {
    this.enter("listenLoopbackInNetns", [netnsPath, backlog]);
    throw codeError("listenLoopbackInNetns", "ENOSYS", netnsPath, "FakeSys has no network namespaces");
  }

  /** What originalDestination answers, by fd (undefined: no conntrack entry). */
  readonly originalDestinations = new Map<number, { address: string; port: number }>();

  originalDestination(fd: number): { address: string; port: number } | undefined {
    this.enter("originalDestination", [fd]);
    return this.originalDestinations.get(fd);
  }

  mountPoints(): string[] {
    this.enter("mountPoints", []);
    return this.mounts.map((m) => m.target);
  }

  openat2(dirFd: number, path: string, flags: number, mode: number, resolve: number): number {
    this.enter("openat2", [dirFd, path, flags, mode, resolve]);
    return this.real.openat2(dirFd, path, flags, mode, resolve);
  }

  mkdirat(dirFd: number, path: string, mode: number): void {
    this.enter("mkdirat", [dirFd, path, mode]);
    this.real.mkdirat(dirFd, path, mode);
  }

  unlinkat(dirFd: number, path: string, flags: number): void {
    this.enter("unlinkat", [dirFd, path, flags]);
    this.real.unlinkat(dirFd, path, flags);
  }

  // ---- internals --------------------------------------------------------------------------------

  private enter(method: keyof Sys, args: unknown[]): void {
    this.calls.push({ method, args });
    const i = this.failures.findIndex((f) => f.method === method);
    if (i >= 0) {
      const [failure] = this.failures.splice(i, 1);
      throw codeError(method, failure!.code, args.length > 0 ? String(args[0]) : undefined);
    }
  }

  private statusOf(pid: number): ExitStatus | null {
    const child = this.children.get(pid);
    if (!child) throw codeError("waitid", "ECHILD", `pid ${pid}`);
    return child.running ? null : { ...child.status };
  }

  private topMount(target: string): FakeMount | undefined {
    for (let i = this.mounts.length - 1; i >= 0; i--) if (this.mounts[i]!.target === target) return this.mounts[i];
    return undefined;
  }
}

/** Like the kernel, a path through /proc/self/fd/N means the file that fd is open on: mounts are
 *  recorded at that file's path, so tests see where a mount made through an fd really went. */
function resolveFdLink(p: string): string {
  const m = /^\/proc\/self\/fd\/(\d+)(\/.*)?$/.exec(p);
  if (!m) return p;
  return readlinkSync(`/proc/self/fd/${m[1]}`) + (m[2] ?? "");
}

/** The fake's receiver: settled by the test through deliver()/fail(), by close(), or by its timeout. */
export class FakeFdReceiver implements FdReceiver {
  readonly received: Promise<number>;
  private resolve!: (fd: number) => void;
  private reject!: (err: Error) => void;
  private settled = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    readonly path: string,
    readonly timeoutMs: number,
    private readonly onSettle: () => void,
  ) {
    this.received = new Promise<number>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.received.catch(() => {});
    // Like the real receiver, a pending one keeps the process alive until it settles or times out.
    this.timer = setTimeout(() => this.fail(codeError("receiveFd", "ETIMEDOUT", path)), timeoutMs);
  }

  get pending(): boolean {
    return !this.settled;
  }

  deliver(fd: number): void {
    if (this.settle()) this.resolve(fd);
  }

  fail(err: Error): void {
    if (this.settle()) this.reject(err);
  }

  close(): void {
    this.fail(codeError("receiveFd", "ECANCELED", this.path));
  }

  private settle(): boolean {
    if (this.settled) return false;
    this.settled = true;
    clearTimeout(this.timer);
    this.onSettle();
    return true;
  }
}
