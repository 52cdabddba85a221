// The console socket with the real runc: receive the pty master from `runc create --console-socket`,
// size it with setWinsize, and read the container's `stty size` through a tty.ReadStream.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ReadStream } from "node:tty";
import { describe, it } from "node:test";
import { sys, type ExitStatus } from "../../src/sys/index.js";

function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd, timeout: 15_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${cmd} ${args.join(" ")}: ${err.message} ${stderr}`)) : resolve(stdout),
    );
  });
}

/** A bundle whose rootfs is a static busybox, running `args` on a terminal. */
async function makeBundle(bundle: string, args: string[], cgroupsPath: string): Promise<void> {
  const bin = join(bundle, "rootfs", "bin");
  mkdirSync(bin, { recursive: true });
  copyFileSync("/bin/busybox", join(bin, "busybox"));
  chmodSync(join(bin, "busybox"), 0o755);
  for (const applet of ["sh", "sleep", "echo", "stty"]) symlinkSync("busybox", join(bin, applet));
  await run("runc", ["spec"], bundle);
  const spec = JSON.parse(readFileSync(join(bundle, "config.json"), "utf8"));
  spec.process.terminal = true;
  spec.process.args = args;
  spec.linux.cgroupsPath = cgroupsPath;
  writeFileSync(join(bundle, "config.json"), JSON.stringify(spec, null, 2));
}

/** Everything the pty shows until `want` appears (or the container side closes). */
function readUntil(pty: ReadStream, want: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    const done = (err?: Error) => {
      clearTimeout(timer);
      pty.off("data", onData);
      err ? reject(err) : resolve(text);
    };
    const onData = (chunk: Buffer) => {
      text += chunk.toString();
      if (text.includes(want)) done();
    };
    // EIO on a pty master means every slave fd is closed: the end of the stream, not a failure.
    pty.on("error", (err: NodeJS.ErrnoException) => (err.code === "EIO" ? done() : done(err)));
    pty.on("end", () => done());
    pty.on("data", onData);
    const timer = setTimeout(() => done(new Error(`no "${want}" within ${timeoutMs} ms; got ${JSON.stringify(text)}`)), timeoutMs);
  });
}

/** The exit status of our child `pid`, collected with tryReap as SIGCHLD arrives. */
function reaped(pid: number, timeoutMs = 10_000): Promise<ExitStatus> {
  return new Promise((resolve, reject) => {
    const check = () => {
      try {
        const status = sys.tryReap(pid);
        if (status) finish(null, status);
      } catch (err) {
        finish(err as Error);
      }
    };
    const finish = (err: Error | null, status?: ExitStatus) => {
      off();
      clearTimeout(timer);
      err ? reject(err) : resolve(status!);
    };
    const off = sys.onSigchld(check);
    const timer = setTimeout(() => finish(new Error(`pid ${pid} not reaped in ${timeoutMs} ms`)), timeoutMs);
    check();
  });
}

describe("sys console socket with the real runc", { timeout: 60_000 }, () => {
  it("receives the pty master and sizes the container's terminal", async () => {
    // This file runs in its own process under `node --test`; being subreaper there only lets it reap
    // the container it starts (as the shim does) instead of leaving a zombie for init.
    sys.setChildSubreaper();
    let initPid = 0;
    const dir = mkdtempSync(join(tmpdir(), "cocoon-sys-runc-"));
    const bundle = join(dir, "bundle");
    const root = join(dir, "runc-root");
    const id = `cocoon-sys-console-${process.pid}`;
    const cgroupsPath = `/cocoon-test-sys-console-${process.pid}`;
    const receiver = sys.receiveFd(join(dir, "console.sock"), 15_000);
    let pty: ReadStream | undefined;
    try {
      await makeBundle(bundle, ["sh", "-c", "stty size; sleep 1"], cgroupsPath);
      await run("runc", ["--root", root, "create", "--bundle", bundle, "--console-socket", receiver.path, id]);
      const master = await receiver.received;
      assert.equal(existsSync(receiver.path), false, "socket unlinked once the fd arrived");

      sys.setWinsize(master, 40, 100);
      // tty.ReadStream owns the fd from here on (destroy() closes it) and reads it through libuv's
      // epoll, not the threadpool; it is writable too, so it also carries stdin.
      pty = new ReadStream(master);
      const output = readUntil(pty, "40 100", 10_000);
      initPid = JSON.parse(await run("runc", ["--root", root, "state", id])).pid as number;
      await run("runc", ["--root", root, "start", id]);
      assert.match(await output, /40 100/);
    } finally {
      receiver.close();
      pty?.destroy();
      await run("runc", ["--root", root, "delete", "-f", id]).catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
    // runc exited after `create`, so the container's init was re-parented to us, the subreaper.
    const status = await reaped(initPid);
    assert.equal(status.pid, initPid);
    assert.ok(status.code === 0 || status.signal === 9, JSON.stringify(status));
    assert.equal(existsSync(join("/sys/fs/cgroup/memory", cgroupsPath)), false, "runc removed the cgroup");
  });
});
