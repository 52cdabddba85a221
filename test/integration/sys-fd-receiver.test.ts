// Real SCM_RIGHTS reception from another process (a python3 sender), cancellation, timeout, and proof
// that pending receivers hold no threadpool thread. Also TIOCSWINSZ on a real pty master.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import {
  closeSync,
  existsSync,
  fstatSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { sys, type FdReceiver } from "../../src/sys/index.js";

const SENDER = `
import os, socket, sys
path, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
if mode == "fd":
    socket.send_fds(s, [b"console"], [os.open("/dev/null", os.O_RDONLY)])
elif mode == "two-fds":
    socket.send_fds(s, [b"console"], [os.open("/dev/null", os.O_RDONLY), os.open("/dev/zero", os.O_RDONLY)])
elif mode == "nofd":
    s.sendall(b"no fd here")
s.close()
`;

function send(path: string, mode: "fd" | "two-fds" | "nofd"): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile("python3", ["-c", SENDER, path, mode], { timeout: 10_000 }, (err, _out, stderr) =>
      err ? reject(new Error(`sender: ${err.message} ${stderr}`)) : resolve(),
    );
  });
}

/** Our open descriptors, to check that nothing but the received fd is left behind. */
function openFds(): Set<string> {
  // The listing includes the descriptor used to read the directory; it is gone once readdir returns.
  return new Set(readdirSync("/proc/self/fd").filter((fd) => existsSync(`/proc/self/fd/${fd}`)));
}

describe("sys.receiveFd (real sockets)", { timeout: 30_000 }, () => {
  let dir = "";
  const pending: FdReceiver[] = [];
  const sock = (name: string) => join(dir, `${name}.sock`);

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "cocoon-sys-fd-"));
  });
  after(() => {
    for (const r of pending) r.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("receives an fd sent with SCM_RIGHTS, then removes the socket", async () => {
    const before = openFds();
    const r = sys.receiveFd(sock("one"), 10_000);
    pending.push(r);
    assert.equal(r.path, sock("one"));
    assert.ok(existsSync(r.path), "path exists as soon as receiveFd returns");
    const [fd] = await Promise.all([r.received, send(r.path, "fd")]);
    try {
      assert.ok(fstatSync(fd).isCharacterDevice());
      assert.equal(readlinkSync(`/proc/self/fd/${fd}`), "/dev/null");
      assert.equal(existsSync(r.path), false);
      // Only the received fd is new: listener and connection are closed.
      const added = [...openFds()].filter((f) => !before.has(f));
      assert.deepEqual(added, [String(fd)]);
    } finally {
      closeSync(fd);
    }
  });

  it("keeps the first fd and closes extra ones", async () => {
    const before = openFds();
    const r = sys.receiveFd(sock("two"), 10_000);
    pending.push(r);
    const [fd] = await Promise.all([r.received, send(r.path, "two-fds")]);
    try {
      assert.equal(readlinkSync(`/proc/self/fd/${fd}`), "/dev/null");
      assert.deepEqual([...openFds()].filter((f) => !before.has(f)), [String(fd)]);
    } finally {
      closeSync(fd);
    }
  });

  it("rejects when the peer closes without sending an fd", async () => {
    const r = sys.receiveFd(sock("nofd"), 10_000);
    pending.push(r);
    await Promise.all([assert.rejects(r.received, { code: "ECONNRESET" }), send(r.path, "nofd")]);
    assert.equal(existsSync(r.path), false);
  });

  it("rejects with ECANCELED on close() and unlinks the path", async () => {
    const before = openFds();
    const r = sys.receiveFd(sock("closed"), 10_000);
    r.close();
    r.close();
    await assert.rejects(r.received, { code: "ECANCELED" });
    assert.equal(existsSync(r.path), false);
    assert.deepEqual([...openFds()].filter((f) => !before.has(f)), []);
  });

  it("rejects with ETIMEDOUT after timeoutMs and unlinks the path", async () => {
    const r = sys.receiveFd(sock("slow"), 100);
    const started = Date.now();
    await assert.rejects(r.received, { code: "ETIMEDOUT" });
    assert.ok(Date.now() - started < 2000);
    assert.equal(existsSync(r.path), false);
  });

  it("throws synchronously for an existing path or a path too long for sun_path", () => {
    const taken = join(dir, "taken");
    writeFileSync(taken, "");
    assert.throws(() => sys.receiveFd(taken), { code: "EADDRINUSE" });
    assert.ok(existsSync(taken), "someone else's file is left alone");
    assert.throws(() => sys.receiveFd(join(dir, "x".repeat(120))), { code: "ENAMETOOLONG" });
  });

  it("holds no threadpool thread or event-loop time while waiting", async () => {
    const receivers = Array.from({ length: 8 }, (_, i) => sys.receiveFd(sock(`idle${i}`), 10_000));
    pending.push(...receivers);
    let ticks = 0;
    const tick = setInterval(() => ticks++, 5);
    try {
      // With 4 threadpool threads, this would stall if each receiver held one.
      const started = Date.now();
      for (let i = 0; i < 8; i++) await stat("/");
      assert.ok(Date.now() - started < 1000);
      await new Promise((r) => setTimeout(r, 100));
      assert.ok(ticks >= 5, `event loop ran (${ticks} ticks)`);
    } finally {
      clearInterval(tick);
      for (const r of receivers) r.close();
    }
  });
});

describe("sys.pipe (real)", () => {
  it("returns a close-on-exec pipe that a child can write through spawn stdio", async () => {
    const [r, w] = sys.pipe();
    try {
      const flags = parseInt(/flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${w}`, "utf8"))![1]!, 8);
      assert.equal(flags & 0o2000000, 0o2000000, "O_CLOEXEC");
      assert.equal(flags & 0o4000, 0, "blocking");
      const child = spawn("sh", ["-c", "echo hello >&3"], { stdio: ["ignore", "ignore", "inherit", w] });
      await new Promise((resolve) => child.on("close", resolve));
      closeSync(w);
      const buf = Buffer.alloc(16);
      assert.equal(buf.subarray(0, readSync(r, buf)).toString(), "hello\n");
    } finally {
      closeSync(r);
      try {
        closeSync(w);
      } catch {
        // closed above
      }
    }
  });
});

describe("sys.setWinsize (real pty)", () => {
  it("sets the size that TIOCGWINSZ reads back, and fails with ENOTTY on a non-tty", async () => {
    const master = openSync("/dev/ptmx", "r+");
    try {
      sys.setWinsize(master, 40, 100);
      const reader =
        "import fcntl, struct, termios; print(*struct.unpack('HHHH', fcntl.ioctl(3, termios.TIOCGWINSZ, bytes(8)))[:2])";
      // TIOCGWINSZ works on the master too; python reads it on the master passed as its fd 3.
      const out = await new Promise<string>((resolve, reject) => {
        const child = spawn("python3", ["-c", reader], { stdio: ["ignore", "pipe", "inherit", master] });
        let text = "";
        child.stdout!.on("data", (d) => (text += d));
        child.on("error", reject);
        child.on("close", () => resolve(text));
      });
      assert.equal(out.trim(), "40 100");
    } finally {
      closeSync(master);
    }
    const devnull = openSync("/dev/null", "r");
    try {
      assert.throws(() => sys.setWinsize(devnull, 1, 1), { code: "ENOTTY" });
    } finally {
      closeSync(devnull);
    }
  });
});
