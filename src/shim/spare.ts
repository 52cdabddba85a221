// A spare daemon: a Node process that has already booted the full shim and waits, idle, for the
// launcher script to hand it a cold `start`. It then does what `start` does (bootstrap.ts) and,
// for a new group, binds the socket itself and becomes that group's daemon in-process, so no Node
// start-up is left on containerd's critical path. Anything else (a live daemon already serves the
// group, an error) it answers and goes back to waiting.
//
// Protocol (docs/start-protocol.md; names in start-protocol.ts; the launcher side is plain sh, see
// bin/containerd-shim-cocoon-v2): the launcher claims our registration dir (spare-pool.ts) by
// creating `claim` in it exclusively, writes its argv (NUL-separated) to `argv` there, and one line
// "<its pid> <pod memo key> <node memo key>" into our `req` FIFO. Its environment, cwd (the
// bundle), stdin (fd 3, a copy of containerd's) and parent (containerd) we read from /proc. We
// answer with one line on the `reply` FIFO, which the launcher reads under `timeout`:
//   "ok <address>"      print the address, exit 0 (the address file is written)
//   "error <text>"      print the text, exit 1
//   "fallback"          run the Node `start` as if there were no spare
import net from "node:net";
import { execFileSync } from "node:child_process";
import { closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, readlinkSync, renameSync, rmSync, writeSync } from "node:fs";
import path from "node:path";
import type { Sys } from "../sys/types.js";
import { procStat } from "../sys/procstat.js";
import { adjustOomScore, bindDaemonSocket, joinCgroup, parseStartInput, planStart, writeAddressFile } from "./bootstrap.js";
import { parseConfig } from "./config.js";
import type { DaemonHandoff } from "./daemon.js";
import { processStartTime, runSubdir } from "./fast-start.js";
import { SPARE_FILES, SPARE_REPLY, SPARE_REPLY_TIMEOUT_S, START_KEYS_ENV } from "./start-protocol.js";
import { readStateFile } from "./statefs.js";
import { parseShimFlags, type ShimFlags } from "./flags.js";
import {
  clearBootMarker, isSpareKey, poolDir, SPARES_DIR, removeEmptyPoolDirs, SPARE_KEY_ENV, SPARE_WANT_ENV, SPARE_WATCH_ENV,
  topUpSpares, watchAlive, watchOf,
} from "./spare-pool.js";

export interface SpareDeps {
  sys: Sys;
  /** Runs this process as the daemon for a claimed start; the spare is gone by then. */
  becomeDaemon(flags: ShimFlags, handoff: DaemonHandoff): Promise<void>;
}

const POLL_MS = 250;
/** An unused spare exits after this long; the next cold start boots a new one. */
const IDLE_EXIT_MS = 10 * 60_000;
/** A claim without a request: its launcher died between the two. */
const CLAIM_GRACE_MS = 3_000;
/** How long we wait for the launcher to open the reply FIFO (it reads under the same `timeout`). */
const REPLY_WAIT_MS = SPARE_REPLY_TIMEOUT_S * 1000;

interface Request {
  argv: string[];
  env: NodeJS.ProcessEnv;
  bundle: string;
  stdin: Uint8Array;
  containerdPid: number;
}

/** Continue as this group's new daemon, on this listening socket. */
interface Becoming {
  flags: ShimFlags;
  handoff: DaemonHandoff;
  containerdPid: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function parseEnviron(bytes: Buffer): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const entry of bytes.toString("utf8").split("\0")) {
    const eq = entry.indexOf("=");
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}

/** What the launcher (pid `pid`) asks: its own argv file, and the rest from its /proc entry. */
function readRequest(pid: number, claim: string): Request {
  const argv = (readStateFile(path.join(claim, SPARE_FILES.argv)) ?? "").split("\0");
  if (argv[argv.length - 1] === "") argv.pop();
  const stat = procStat(pid);
  if (!stat) throw new Error(`the launcher (pid ${pid}) is gone`);
  return {
    argv,
    env: parseEnviron(readFileSync(`/proc/${pid}/environ`)),
    bundle: readlinkSync(`/proc/${pid}/cwd`),
    // The launcher keeps containerd's stdin (the options) as fd 3, an unlinked copy.
    stdin: readFileSync(`/proc/${pid}/fd/3`),
    containerdPid: stat.ppid,
  };
}

function replaceEnv(env: NodeJS.ProcessEnv) {
  for (const k of Object.keys(process.env)) delete process.env[k];
  Object.assign(process.env, env);
}

/**
 * Runs now, once, what the first request and the daemon would otherwise run for the first time on
 * containerd's critical path: koffi's loading and bindings (socket calls ~10 ms), the config parser,
 * the lazily compiled code of start's steps.
 */
async function prewarm(sys: Sys, dir: string) {
  try {
    const [r, w] = sys.pipe();
    closeSync(r);
    closeSync(w);
  } catch {}
  const sock = path.join(dir, `.warm-${process.pid}.sock`);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const fd = await bindDaemonSocket(sys, sock);
    if (fd !== "reused") closeSync(fd);
  } catch {}
  rmSync(sock, { force: true });
  try {
    parseConfig('mode = "runc"\ngrouping = "pod"\n[runc]\nbinary = "runc"\n', "(warm-up)");
    parseStartInput(new Uint8Array(), parseShimFlags(["-namespace", "n", "-address", "/a", "-id", "x", "start"]));
  } catch {}
}

export async function runSpare(flags: ShimFlags, deps: SpareDeps): Promise<void> {
  const key = process.env[SPARE_KEY_ENV];
  const watch = process.env[SPARE_WATCH_ENV] ?? "";
  const want = Number(process.env[SPARE_WANT_ENV] ?? "1");
  const start = processStartTime(process.pid);
  if (!isSpareKey(key) || !start || !watchAlive(watch) || !existsSync(flags.address)) {
    // Not needed after all: the marker naming us must not outlive us.
    if (isSpareKey(key)) clearBootMarker(key);
    process.exit(0);
  }
  process.chdir("/");
  const ownEnv = { ...process.env };
  const me = `${process.pid}-${start}`;
  const regDir = path.join(poolDir(key), me);
  let fifo: net.Socket | undefined;
  // Busy until registered: the poll must not take the missing dir for a removed one.
  let state: "idle" | "busy" | "gone" = "busy";
  let idleSince = Date.now();
  let claimedSince = 0;

  const closeFifo = () => {
    fifo?.destroy();
    fifo = undefined;
  };
  const removeOwnDirs = () => {
    rmSync(regDir, { recursive: true, force: true });
    rmSync(path.join(poolDir(key), `.new-${me}`), { recursive: true, force: true });
    clearBootMarker(key);
    removeEmptyPoolDirs(key);
  };
  const quit = () => {
    if (state === "gone") return;
    state = "gone";
    closeFifo();
    removeOwnDirs();
    process.exit(0);
  };

  /** Publishes our dir with its FIFOs; built aside and renamed, so a launcher never sees half of it. */
  const register = () => {
    for (let attempt = 0; ; attempt++) {
      const tmp = path.join(poolDir(key), `.new-${me}`);
      try {
        rmSync(tmp, { recursive: true, force: true });
        runSubdir("spares", key);
        mkdirSync(tmp, { mode: 0o700 });
        execFileSync("mkfifo", ["-m", "600", path.join(tmp, SPARE_FILES.req), path.join(tmp, SPARE_FILES.reply)], { stdio: "ignore" });
        // Read-write, so that it never reports EOF and a writer never blocks on open.
        const fd = openSync(path.join(tmp, SPARE_FILES.req), constants.O_RDWR | constants.O_NONBLOCK);
        fifo = new net.Socket({ fd, readable: true, writable: false });
        let buf = "";
        fifo.on("data", (d) => {
          // One line per claim; anything arriving while busy belongs to no claim of ours.
          buf = state === "idle" ? buf + d.toString("utf8") : "";
          const nl = buf.indexOf("\n");
          if (nl < 0) return;
          const line = buf.slice(0, nl);
          buf = "";
          void onRequest(line);
        });
        fifo.on("error", () => undefined);
        renameSync(tmp, regDir);
        return;
      } catch (err) {
        rmSync(tmp, { recursive: true, force: true });
        // An exiting spare may have just removed the (empty) pool dirs.
        if ((err as NodeJS.ErrnoException).code !== "ENOENT" || attempt >= 2) throw err;
      }
    }
  };

  const onRequest = async (line: string) => {
    const [pidText, ...keys] = line.trim().split(" ");
    const pid = Number(pidText);
    if (!Number.isInteger(pid) || pid <= 0) return;
    state = "busy";
    let reply: string = SPARE_REPLY.fallback;
    let becoming: Becoming | undefined;
    try {
      const req = readRequest(pid, regDir);
      // /proc shows the environment the launcher was started with, not what it exported since.
      req.env[START_KEYS_ENV] = keys.join(" ");
      ({ reply, becoming } = await serve(req));
    } catch (err) {
      // As the Node path prints it (shim-main.ts): containerd shows this as the reason.
      reply = `${SPARE_REPLY.error} containerd-shim-cocoon-v2: ${(err as Error).message}`;
    }
    await sendReply(regDir, reply);
    if (becoming) return become(becoming);
    replaceEnv(ownEnv);
    release();
  };

  /** Back to the pool, same dir and FIFOs: the request's files go, the claim last. */
  const release = () => {
    if (!existsSync(regDir)) return quit();
    rmSync(path.join(regDir, SPARE_FILES.argv), { force: true });
    rmSync(path.join(regDir, SPARE_FILES.claim), { force: true });
    idleSince = Date.now();
    claimedSince = 0;
    state = "idle";
  };

  const serve = async (req: Request): Promise<{ reply: string; becoming?: Becoming }> => {
    let reqFlags: ShimFlags;
    try {
      reqFlags = parseShimFlags(req.argv);
    } catch {
      return { reply: SPARE_REPLY.fallback };
    }
    // Only the containerd we watch: another one's request goes the ordinary way.
    if (reqFlags.action !== "start" || reqFlags.version || reqFlags.address !== flags.address) return { reply: SPARE_REPLY.fallback };
    replaceEnv(req.env);
    const plan = planStart(reqFlags, req.bundle, req.stdin);
    // containerd 2.x wants a protobuf reply the launcher does not relay; spare_daemons = 0 means none for this config.
    if (plan.input.protocol !== "legacy" || plan.cfg.spareDaemons === 0) return { reply: SPARE_REPLY.fallback };
    const fd = await bindDaemonSocket(deps.sys, plan.sock);
    try {
      writeAddressFile(plan.bundle, plan.address);
    } catch (err) {
      // Nobody will serve the socket we bound: leave no listener behind to be mistaken for a daemon.
      if (fd !== "reused") {
        closeSync(fd);
        rmSync(plan.sock, { force: true });
      }
      throw err;
    }
    const reply = `${SPARE_REPLY.ok} ${plan.address}`;
    if (fd === "reused") return { reply };
    return {
      reply,
      becoming: {
        flags: reqFlags,
        containerdPid: req.containerdPid,
        handoff: {
          listenFd: fd,
          socket: plan.sock,
          options: plan.input.options,
          bundle: plan.bundle,
          spares: { key, watch: watchOf(req.containerdPid) ?? watch },
        },
      },
    };
  };

  const become = async (b: Becoming) => {
    state = "gone";
    clearInterval(poll);
    closeFifo();
    process.removeListener("SIGTERM", quit);
    process.removeListener("SIGINT", quit);
    process.removeListener("uncaughtException", onCrash);
    removeOwnDirs();
    adjustOomScore(process.pid, b.containerdPid);
    const o = b.handoff.options;
    if (o.kind === "runc" && o.runc.shimCgroup) joinCgroup(o.runc.shimCgroup, process.pid);
    await deps.becomeDaemon(b.flags, b.handoff);
  };

  const onCrash = () => quit();
  process.on("SIGTERM", quit);
  process.on("SIGINT", quit);
  process.on("uncaughtException", onCrash);

  const poll = setInterval(() => {
    if (state !== "idle") return;
    // containerd gone (or restarted: a new one has its own spares), idle too long: nothing to wait for.
    if (!watchAlive(watch) || !existsSync(flags.address) || Date.now() - idleSince > IDLE_EXIT_MS) return quit();
    // Someone removed our dir: nobody can claim us any more.
    if (!existsSync(regDir)) return quit();
    if (!existsSync(path.join(regDir, SPARE_FILES.claim))) claimedSince = 0;
    else if (!claimedSince) claimedSince = Date.now();
    else if (Date.now() - claimedSince > CLAIM_GRACE_MS) release();
  }, POLL_MS);

  await prewarm(deps.sys, SPARES_DIR);
  try {
    register();
    state = "idle";
  } catch {
    quit();
  }
  clearBootMarker(key);
  // A pool of more than one fills one Node start-up at a time: each new spare starts the next.
  topUpSpares({ key, want, address: flags.address, watch, nodeArgs: [...process.execArgv, process.argv[1]!], env: ownEnv });
}

/** Writes the one reply line once the launcher has the FIFO open (ENXIO until then). */
async function sendReply(claim: string, text: string): Promise<boolean> {
  const deadline = Date.now() + REPLY_WAIT_MS;
  for (;;) {
    let fd: number;
    try {
      fd = openSync(path.join(claim, SPARE_FILES.reply), constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENXIO" || Date.now() > deadline) return false;
      await sleep(2);
      continue;
    }
    try {
      writeSync(fd, text + "\n");
      return true;
    } catch {
      return false;
    } finally {
      closeSync(fd);
    }
  }
}
