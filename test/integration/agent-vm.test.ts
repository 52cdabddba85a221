// The guest agent in a real VM: boots guest/out (q35, PVH vmlinux, 9p root, TCG) and drives the
// agent API over QEMU's virtio-serial socket with the TTRPC client, as the vm runtime will:
// containers from a busybox rootfs in the 9p share, stdio through ReadOutput/WriteStdin, execs,
// a terminal, signals, stats, and a Shutdown that ends QEMU.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { Agent, Stream } from "../../src/gen/cocoon/agent/v1/agent_pb.js";
import { MetricsSchema } from "../../src/gen/cgroups/v2/metrics_pb.js";
import { TtrpcClient, type TypedClient } from "../../src/ttrpc/index.js";
import { Code, TtrpcError } from "../../src/ttrpc/codes.js";
import { AGENT_SERVICE, GUEST_SHARED_DIR } from "../../src/core/guest-abi.js";
import { qemuArgs } from "../../src/runtime/vm/qemu.js";
import { repoRoot, run, settlesWithin, sleep, tailLines, tmpdir } from "../helpers/util.js";

const OUT = join(repoRoot, "guest", "out");
const MANIFEST = join(OUT, "manifest.json");
const AGENT_BUNDLE = join(repoRoot, "dist", "cocoon-agent.cjs");
const BOOT_TIMEOUT_MS = 90_000;
const CALL_MS = 30_000;
const GUEST_MAC = "52:54:00:c0:c0:01";
const APPLETS = ["sh", "echo", "cat", "sleep", "uname", "id", "ls", "stty", "dd", "tr", "yes", "head", "wc", "seq"];

function which(cmd: string): boolean {
  return (process.env["PATH"] ?? "").split(":").some((d) => d && existsSync(join(d, cmd)));
}

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return "needs root (QEMU 9p share with security_model=none, crun in the guest)";
  if (!existsSync(MANIFEST)) return "guest/out has not been built (run guest/build.sh)";
  if (!which("qemu-system-x86_64")) return "qemu-system-x86_64 is not installed";
  if (!existsSync(AGENT_BUNDLE)) return "dist/cocoon-agent.cjs is missing (npm run build)";
  if (!existsSync("/bin/busybox")) return "/bin/busybox (busybox-static) is needed for the container rootfs";
  if (!which("crun")) return "crun is needed on the host to generate the OCI spec";
  return false;
}
const skip = skipReason();

const sha256 = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");

/** guest/out must carry the agent that dist/ holds; build.sh is a cached no-op when it does. */
async function ensureGuestHasAgent(): Promise<void> {
  const manifest = JSON.parse(readFileSync(MANIFEST, "utf8"));
  if (manifest.agent?.sha256 === sha256(AGENT_BUNDLE)) return;
  const r = await run(join(repoRoot, "guest", "build.sh"), [], { timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`guest/build.sh failed:\n${tailLines(r.stderr, 20)}`);
  const again = JSON.parse(readFileSync(MANIFEST, "utf8"));
  assert.equal(again.agent?.sha256, sha256(AGENT_BUNDLE), "guest/out still has another agent after guest/build.sh");
}

function makeRootfs(rootfs: string) {
  for (const d of ["bin", "proc", "sys", "dev", "tmp", "etc"]) mkdirSync(join(rootfs, d), { recursive: true });
  copyFileSync("/bin/busybox", join(rootfs, "bin", "busybox"));
  chmodSync(join(rootfs, "bin", "busybox"), 0o755);
  for (const a of APPLETS) symlinkSync("busybox", join(rootfs, "bin", a));
}

/** `crun spec`'s default, pointed at the shared rootfs as the guest sees it. */
async function baseSpec(dir: string): Promise<Record<string, any>> {
  mkdirSync(dir, { recursive: true });
  const r = await run("crun", ["spec"], { cwd: dir });
  assert.equal(r.code, 0, `crun spec: ${r.stderr}`);
  const spec = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
  spec.root = { path: `${GUEST_SHARED_DIR}/c1/rootfs`, readonly: true };
  spec.process.terminal = false;
  spec.process.env = ["PATH=/bin", "TERM=xterm"];
  return spec;
}

function specWith(base: Record<string, any>, args: string[]): Uint8Array {
  const spec = structuredClone(base);
  spec.process.args = args;
  return Buffer.from(JSON.stringify(spec));
}

function processJson(args: string[], terminal = false): Uint8Array {
  return Buffer.from(JSON.stringify({ args, env: ["PATH=/bin", "TERM=xterm"], cwd: "/", user: { uid: 0, gid: 0 }, terminal }));
}

async function grpcCodeOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof TtrpcError, `expected a TtrpcError, got ${String(err)}`);
    return err.code;
  }
  assert.fail("the call succeeded");
}

describe("guest agent in a VM (QEMU TCG)", { skip }, () => {
  let runDir = "";
  let qemu: ChildProcess | undefined;
  let qemuExit: Promise<number | string | null> | undefined;
  let client: TtrpcClient | undefined;
  let agent: TypedClient<typeof Agent>;
  let base: Record<string, any>;
  let kernelRelease = "";
  let t0 = 0;
  const timings: Record<string, number> = {};
  const mark = (name: string) => (timings[name] = Math.round(performance.now() - t0));

  /** Everything one output stream carries until eof. */
  async function readAll(containerId: string, execId: string, stream: Stream): Promise<string> {
    const parts: Buffer[] = [];
    for (;;) {
      const r = await agent.readOutput({ containerId, execId, stream }, { timeoutMs: CALL_MS });
      if (r.data.length) parts.push(Buffer.from(r.data));
      if (r.eof) return Buffer.concat(parts).toString("utf8");
    }
  }

  before(async () => {
    await ensureGuestHasAgent();
    kernelRelease = JSON.parse(readFileSync(MANIFEST, "utf8")).kernel.release;
    runDir = tmpdir("cocoon-agent-vm-");
    const share = join(runDir, "share");
    makeRootfs(join(share, "c1", "rootfs"));
    base = await baseSpec(join(runDir, "spec"));
    const sock = join(runDir, "agent.sock");
    const initrd = join(OUT, JSON.parse(readFileSync(MANIFEST, "utf8")).initramfs9p.file);
    // The runtime's own command line (a 9p root, no tap), plus a NIC for SetupNetwork: user
    // networking with no way out, and no option ROM (PVH boot).
    const args = [
      ...qemuArgs({
        runDir, kernel: join(OUT, "vmlinux"), initrd, root: { kind: "dir", path: join(OUT, "rootfs") }, sharedDir: share,
        vcpus: 1, memoryMiB: 512, accel: "tcg", tcgCacheMiB: 0, kernelParams: "",
      }),
      "-netdev", "user,id=n0,restrict=on",
      "-device", `virtio-net-pci,netdev=n0,mac=${GUEST_MAC},romfile=`,
    ];
    t0 = performance.now();
    const child = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "ignore", "pipe"] });
    qemu = child;
    let qemuErr = "";
    child.stderr!.on("data", (d) => (qemuErr += d));
    qemuExit = new Promise((resolve) => child.once("exit", (code, signal) => resolve(code ?? signal)));
    // QEMU makes the socket at once; the guest answers once the agent runs (~5 s here).
    const deadline = Date.now() + BOOT_TIMEOUT_MS;
    while (!client) {
      if (child.exitCode !== null) throw new Error(`QEMU exited early: ${qemuErr}`);
      try {
        client = await TtrpcClient.connect(sock, { timeoutMs: 2000 });
      } catch {
        if (Date.now() > deadline) throw new Error("QEMU's agent socket never accepted a connection");
        await sleep(50);
      }
    }
    mark("socketConnected");
    agent = client.makeClient(Agent, AGENT_SERVICE);
  });

  after(async () => {
    client?.close();
    if (qemu && qemu.exitCode === null && qemu.signalCode === null) {
      qemu.kill("SIGKILL");
      await settlesWithin(qemuExit!, 5000);
    }
    const consoleLog = runDir ? join(runDir, "console.log") : "";
    if (process.env["COCOON_TEST_VERBOSE"] && consoleLog && existsSync(consoleLog)) {
      process.stderr.write(`guest console:\n${tailLines(readFileSync(consoleLog, "utf8"), 60)}\n`);
    }
    process.stderr.write(`agent-vm timings (ms since QEMU spawn): ${JSON.stringify(timings)}\n`);
    if (runDir) rmSync(runDir, { recursive: true, force: true });
  });

  it("answers Health with the guest kernel's release", async () => {
    const h = await agent.health({}, { timeoutMs: BOOT_TIMEOUT_MS });
    mark("health");
    assert.equal(h.kernelRelease, kernelRelease);
    assert.match(h.agentVersion, /^\d+\.\d+\.\d+/);
    assert.ok(h.uptimeMs > 0n);
  });

  it("runs a container: stdin in, stdout out, exit status 3", async () => {
    const args = ["sh", "-c", "echo hello-from-vm; uname -r; read x; echo got:$x; echo to-stderr >&2; exit 3"];
    const created = await agent.createContainer(
      { containerId: "c1", specJson: specWith(base, args), stdio: { stdin: true, stdout: true, stderr: true } },
      { timeoutMs: CALL_MS },
    );
    mark("c1Created");
    assert.ok(created.pid > 1);
    assert.equal(
      await grpcCodeOf(agent.createContainer({ containerId: "c1", specJson: specWith(base, args), stdio: {} }, { timeoutMs: CALL_MS })),
      Code.ALREADY_EXISTS,
    );
    const early = agent.waitProcess({ containerId: "c1" }, { timeoutMs: CALL_MS });
    const out = readAll("c1", "", Stream.STDOUT);
    const err = readAll("c1", "", Stream.STDERR);
    const started = await agent.startProcess({ containerId: "c1" }, { timeoutMs: CALL_MS });
    assert.equal(started.pid, created.pid);
    await agent.writeStdin({ containerId: "c1", data: Buffer.from("hi\n") }, { timeoutMs: CALL_MS });
    await agent.closeStdin({ containerId: "c1" }, { timeoutMs: CALL_MS });
    assert.equal(await out, `hello-from-vm\n${kernelRelease}\ngot:hi\n`);
    assert.equal(await err, "to-stderr\n");
    const exit = await early;
    assert.equal(exit.exitStatus, 3);
    assert.ok(Math.abs(Number(exit.exitedAtMs) - Date.now()) < 120_000, "exited_at is the guest's wall clock");
    // Waiting again after the exit answers at once.
    assert.equal((await agent.waitProcess({ containerId: "c1" }, { timeoutMs: CALL_MS })).exitStatus, 3);
    assert.equal(
      await grpcCodeOf(agent.signalProcess({ containerId: "c1", signal: 9 }, { timeoutMs: CALL_MS })),
      Code.NOT_FOUND,
    );
    await agent.removeContainer({ containerId: "c1" }, { timeoutMs: CALL_MS });
    mark("c1Done");
    assert.equal(await grpcCodeOf(agent.waitProcess({ containerId: "c1" }, { timeoutMs: CALL_MS })), Code.NOT_FOUND);
  });

  it("reports crun's error for a spec it cannot run", async () => {
    const bad = JSON.parse(Buffer.from(specWith(base, ["/no/such/binary"])).toString());
    bad.root.path = `${GUEST_SHARED_DIR}/missing/rootfs`;
    await assert.rejects(
      agent.createContainer({ containerId: "bad", specJson: Buffer.from(JSON.stringify(bad)), stdio: {} }, { timeoutMs: CALL_MS }),
      (err: TtrpcError) => err.code === Code.INVALID_ARGUMENT && /crun create failed: .*missing\/rootfs/.test(err.message),
    );
    assert.equal(
      await grpcCodeOf(agent.createContainer({ containerId: "bad", specJson: Buffer.from("{nope"), stdio: {} }, { timeoutMs: CALL_MS })),
      Code.INVALID_ARGUMENT,
    );
    // The id is free again.
    assert.equal(await grpcCodeOf(agent.startProcess({ containerId: "bad" }, { timeoutMs: CALL_MS })), Code.NOT_FOUND);
  });

  it("keeps serving after the host reconnects", async () => {
    client!.close();
    // The agent notices the disconnect on its next read of the port.
    await sleep(300);
    client = await TtrpcClient.connect(join(runDir, "agent.sock"), { timeoutMs: 5000 });
    agent = client.makeClient(Agent, AGENT_SERVICE);
    const h = await agent.health({}, { timeoutMs: CALL_MS });
    assert.equal(h.kernelRelease, kernelRelease);
    mark("reconnected");
  });

  it("configures the pod network (interface by MAC, MTU, address, default route, hostname)", async () => {
    await agent.setupNetwork(
      {
        interfaces: [{ mac: GUEST_MAC.toUpperCase(), name: "eth7", mtu: 1400, addresses: [{ cidr: "10.0.2.15/24" }] }],
        routes: [{ destination: "default", gateway: "10.0.2.2" }],
        hostname: "pod-a",
      },
      { timeoutMs: CALL_MS },
    );
    assert.equal(
      await grpcCodeOf(agent.setupNetwork({ interfaces: [{ mac: "02:00:00:00:00:99", name: "eth9" }] }, { timeoutMs: CALL_MS })),
      Code.NOT_FOUND,
    );
    // Containers share the VM's network: look at it from one.
    const spec = JSON.parse(Buffer.from(specWith(base, ["sh", "-c", "cat /sys/class/net/eth7/mtu /sys/class/net/eth7/operstate /proc/net/route"])).toString());
    await agent.createContainer({ containerId: "net", specJson: Buffer.from(JSON.stringify(spec)), stdio: { stdout: true } }, { timeoutMs: CALL_MS });
    const out = readAll("net", "", Stream.STDOUT);
    await agent.startProcess({ containerId: "net" }, { timeoutMs: CALL_MS });
    const text = await out;
    assert.match(text, /^1400\nup\n/);
    assert.match(text, /eth7\s+00000000\s+0202000A/, "default route via 10.0.2.2 on eth7");
    assert.equal((await agent.waitProcess({ containerId: "net" }, { timeoutMs: CALL_MS })).exitStatus, 0);
    await agent.removeContainer({ containerId: "net" }, { timeoutMs: CALL_MS });
    mark("network");
  });

  it("runs an init on a terminal", async () => {
    const spec = specWith(base, ["sh", "-c", "read x; echo got:$x; exit 5"]);
    await agent.createContainer(
      { containerId: "tty0", specJson: spec, stdio: { stdin: true, stdout: true, terminal: true } },
      { timeoutMs: CALL_MS },
    );
    await agent.resizeTty({ containerId: "tty0", rows: 40, cols: 120 }, { timeoutMs: CALL_MS });
    const out = readAll("tty0", "", Stream.STDOUT);
    await agent.startProcess({ containerId: "tty0" }, { timeoutMs: CALL_MS });
    await agent.writeStdin({ containerId: "tty0", data: Buffer.from("abc\n") }, { timeoutMs: CALL_MS });
    // The terminal echoes the input, then the answer.
    assert.equal(await out, "abc\r\ngot:abc\r\n");
    assert.equal((await agent.waitProcess({ containerId: "tty0" }, { timeoutMs: CALL_MS })).exitStatus, 5);
    await agent.removeContainer({ containerId: "tty0" }, { timeoutMs: CALL_MS });
  });

  describe("a long-running container", () => {
    before(async () => {
      await agent.createContainer({ containerId: "c2", specJson: specWith(base, ["sleep", "1000"]), stdio: {} }, { timeoutMs: CALL_MS });
      await agent.startProcess({ containerId: "c2" }, { timeoutMs: CALL_MS });
      mark("c2Started");
    });

    it("runs an exec with its own output and exit status", async () => {
      await agent.execProcess(
        {
          containerId: "c2",
          execId: "e1",
          processJson: processJson(["sh", "-c", "echo exec-out; echo exec-err >&2; id -u; exit 7"]),
          stdio: { stdout: true, stderr: true },
        },
        { timeoutMs: CALL_MS },
      );
      assert.equal(
        await grpcCodeOf(agent.execProcess({ containerId: "c2", execId: "e1", processJson: processJson(["true"]), stdio: {} }, { timeoutMs: CALL_MS })),
        Code.ALREADY_EXISTS,
      );
      const out = readAll("c2", "e1", Stream.STDOUT);
      const err = readAll("c2", "e1", Stream.STDERR);
      const { pid } = await agent.startProcess({ containerId: "c2", execId: "e1" }, { timeoutMs: CALL_MS });
      assert.ok(pid > 1);
      assert.equal(await out, "exec-out\n0\n");
      assert.equal(await err, "exec-err\n");
      assert.equal((await agent.waitProcess({ containerId: "c2", execId: "e1" }, { timeoutMs: CALL_MS })).exitStatus, 7);
      await agent.removeProcess({ containerId: "c2", execId: "e1" }, { timeoutMs: CALL_MS });
      assert.equal(await grpcCodeOf(agent.waitProcess({ containerId: "c2", execId: "e1" }, { timeoutMs: CALL_MS })), Code.NOT_FOUND);
      mark("execDone");
    });

    it("gives an exec a terminal that ResizeTty sizes", async () => {
      await agent.execProcess(
        {
          containerId: "c2",
          execId: "t1",
          processJson: processJson(["sh", "-c", "sleep 1; stty size"], true),
          stdio: { stdin: true, stdout: true, terminal: true },
        },
        { timeoutMs: CALL_MS },
      );
      const out = readAll("c2", "t1", Stream.STDOUT);
      const err = readAll("c2", "t1", Stream.STDERR);
      await agent.startProcess({ containerId: "c2", execId: "t1" }, { timeoutMs: CALL_MS });
      await agent.resizeTty({ containerId: "c2", execId: "t1", rows: 30, cols: 100 }, { timeoutMs: CALL_MS });
      assert.match(await out, /^30 100\r?\n$/);
      assert.equal(await err, "", "a terminal has no separate stderr");
      assert.equal((await agent.waitProcess({ containerId: "c2", execId: "t1" }, { timeoutMs: CALL_MS })).exitStatus, 0);
      await agent.removeProcess({ containerId: "c2", execId: "t1" }, { timeoutMs: CALL_MS });
      mark("ttyDone");
    });

    it("lists pids, marking execs", async () => {
      await agent.execProcess(
        { containerId: "c2", execId: "s1", processJson: processJson(["sleep", "1000"]), stdio: {} },
        { timeoutMs: CALL_MS },
      );
      const { pid } = await agent.startProcess({ containerId: "c2", execId: "s1" }, { timeoutMs: CALL_MS });
      const { processes } = await agent.pids({ containerId: "c2" }, { timeoutMs: CALL_MS });
      assert.ok(processes.some((p) => p.pid === pid && p.execId === "s1"), JSON.stringify(processes));
      assert.ok(processes.some((p) => p.execId === ""), "the init is listed");
      // A running exec cannot be removed.
      assert.equal(await grpcCodeOf(agent.removeProcess({ containerId: "c2", execId: "s1" }, { timeoutMs: CALL_MS })), Code.FAILED_PRECONDITION);
    });

    it("SIGKILLs an exec (137), then answers NotFound for a finished process", async () => {
      await agent.signalProcess({ containerId: "c2", execId: "s1", signal: 9 }, { timeoutMs: CALL_MS });
      assert.equal((await agent.waitProcess({ containerId: "c2", execId: "s1" }, { timeoutMs: CALL_MS })).exitStatus, 137);
      assert.equal(
        await grpcCodeOf(agent.signalProcess({ containerId: "c2", execId: "s1", signal: 9 }, { timeoutMs: CALL_MS })),
        Code.NOT_FOUND,
      );
    });

    it("returns cgroup v2 metrics", async () => {
      const s = await agent.stats({ containerId: "c2" }, { timeoutMs: CALL_MS });
      assert.equal(s.typeUrl, "io.containerd.cgroups.v2.Metrics");
      const m = fromBinary(MetricsSchema, s.value);
      assert.ok((m.memory?.usage ?? 0n) > 0n, `memory usage ${m.memory?.usage}`);
      assert.ok((m.pids?.current ?? 0n) >= 1n, `pids ${m.pids?.current}`);
      assert.ok((m.cpu?.usageUsec ?? 0n) > 0n, `cpu ${m.cpu?.usageUsec}`);
    });

    it("carries megabytes of output through the bounded buffer", async () => {
      const bytes = 3_000_000;
      await agent.execProcess(
        { containerId: "c2", execId: "big", processJson: processJson(["sh", "-c", `yes 0123456789abcdef | head -c ${bytes}`]), stdio: { stdout: true } },
        { timeoutMs: CALL_MS },
      );
      const t = performance.now();
      const out = readAll("c2", "big", Stream.STDOUT);
      await agent.startProcess({ containerId: "c2", execId: "big" }, { timeoutMs: CALL_MS });
      const text = await out;
      timings["bigOutputMs"] = Math.round(performance.now() - t);
      assert.equal(text.length, bytes);
      assert.equal(text.slice(0, 34), "0123456789abcdef\n0123456789abcdef\n");
      assert.equal((await agent.waitProcess({ containerId: "c2", execId: "big" }, { timeoutMs: CALL_MS })).exitStatus, 0);
      await agent.removeProcess({ containerId: "c2", execId: "big" }, { timeoutMs: CALL_MS });
    });

    it("reports an OOM kill after UpdateResources lowered the memory limit", async () => {
      const oom = agent.nextOomEvent({}, { timeoutMs: CALL_MS });
      const limit = 24 * 1024 * 1024;
      await agent.updateResources(
        { containerId: "c2", resourcesJson: Buffer.from(JSON.stringify({ memory: { limit, swap: limit } })) },
        { timeoutMs: CALL_MS },
      );
      const s = fromBinary(MetricsSchema, (await agent.stats({ containerId: "c2" }, { timeoutMs: CALL_MS })).value);
      assert.equal(s.memory?.usageLimit, BigInt(limit));
      await agent.execProcess(
        { containerId: "c2", execId: "hog", processJson: processJson(["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]), stdio: {} },
        { timeoutMs: CALL_MS },
      );
      await agent.startProcess({ containerId: "c2", execId: "hog" }, { timeoutMs: CALL_MS });
      assert.equal((await agent.waitProcess({ containerId: "c2", execId: "hog" }, { timeoutMs: CALL_MS })).exitStatus, 137);
      assert.equal((await oom).containerId, "c2");
      const after = fromBinary(MetricsSchema, (await agent.stats({ containerId: "c2" }, { timeoutMs: CALL_MS })).value);
      assert.ok((after.memoryEvents?.oomKill ?? 0n) >= 1n);
      mark("oom");
    });

    it("pauses and resumes", async () => {
      await agent.pause({ containerId: "c2" }, { timeoutMs: CALL_MS });
      await agent.resume({ containerId: "c2" }, { timeoutMs: CALL_MS });
    });

    it("SIGKILLs the init (137) and removes the container", async () => {
      const waiting = agent.waitProcess({ containerId: "c2" }, { timeoutMs: CALL_MS });
      await agent.signalProcess({ containerId: "c2", signal: 9 }, { timeoutMs: CALL_MS });
      assert.equal((await waiting).exitStatus, 137);
      await agent.removeContainer({ containerId: "c2" }, { timeoutMs: CALL_MS });
      assert.equal(await grpcCodeOf(agent.stats({ containerId: "c2" }, { timeoutMs: CALL_MS })), Code.NOT_FOUND);
      mark("c2Done");
    });
  });

  it("shuts down: QEMU exits by itself", async () => {
    // A container left running is killed by Shutdown.
    await agent.createContainer({ containerId: "c3", specJson: specWith(base, ["sleep", "1000"]), stdio: {} }, { timeoutMs: CALL_MS });
    await agent.startProcess({ containerId: "c3" }, { timeoutMs: CALL_MS });
    const asked = performance.now();
    await agent.shutdown({}, { timeoutMs: CALL_MS });
    assert.ok(await settlesWithin(qemuExit!, 15_000), "QEMU did not exit within 15 s of Shutdown");
    timings["shutdownToQemuExit"] = Math.round(performance.now() - asked);
    mark("qemuExit");
  });
});
