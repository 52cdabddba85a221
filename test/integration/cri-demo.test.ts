// `cocoon demo`: a private containerd with CRI, a pod through it, and nothing left afterwards, also when
// interrupted.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { runDemo } from "../../src/cli/demo.js";
import { bridgeConflist, cidrsOverlap, planCniNetwork, readCniNetwork, writeCniConfig } from "../../src/cli/lab/cni.js";
import { LAB_DIR_PREFIX } from "../../src/cli/lab/lab.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { repoRoot } from "../helpers/util.js";

const labDirs = () => readdirSync(os.tmpdir()).filter((n) => n.startsWith(LAB_DIR_PREFIX));

async function demo(opts: Parameters<typeof runDemo>[0] = {}): Promise<{ code: number; out: string }> {
  let out = "";
  // runc mode unless a test asks otherwise: VM boots are slow under TCG; one test covers the default.
  const code = await runDemo({ sourceRoot: repoRoot, out: (s) => (out += s), ...(opts.mode || opts.handler ? {} : { handler: "cocoon-runc" as const }), ...opts });
  return { code, out };
}

const manifest = path.join(repoRoot, "guest", "out", "manifest.json");
const guestBuilt = existsSync(manifest);
const guestRelease: string = guestBuilt ? JSON.parse(readFileSync(manifest, "utf8")).kernel?.release ?? "" : "";

async function runDemoDefault(): Promise<{ code: number; out: string }> {
  let out = "";
  const code = await runDemo({ sourceRoot: repoRoot, out: (s) => (out += s) });
  return { code, out };
}

/** The demo's messages about the private instance, to check that it was removed. */
function instanceOf(out: string): { dir: string; bridge: string } {
  const dir = /in (\/\S+cocoon-demo-\w+)/.exec(out)?.[1] ?? "";
  const bridge = /CNI bridge (\S+),/.exec(out)?.[1] ?? "";
  assert.ok(dir && bridge, `instance named in:\n${out}`);
  return { dir, bridge };
}

describe("cocoon demo", { timeout: 180_000 }, () => {
  let host: HostSnapshot;
  let tmp: string;
  let before_: string[];

  before(async () => {
    host = await snapshotHost();
    tmp = mkdtempSync(path.join(os.tmpdir(), "cocoon-specs-"));
    before_ = labDirs();
  });

  after(async () => {
    rmSync(tmp, { recursive: true, force: true });
    await assertNoLeaks(host, { graceMs: 10_000 });
    assert.deepEqual(labDirs().filter((d) => !before_.includes(d)), []);
  });

  it("by default runs the built-in pod in its own VM (vm mode) and prints what it printed", { skip: !guestBuilt && "guest/out not built" }, async () => {
    const { code, out } = await runDemoDefault();
    assert.equal(code, 0, out);
    assert.match(out, /pod cocoon-demo is running with handler cocoon, pod IP \d+\.\d+\.\d+\.\d+/);
    assert.match(out, new RegExp(`hello from a Cocoon pod: ${guestRelease.replace(/[.]/g, "\\.")}, cocoon-demo`));
    assert.match(out, /cleaned up: nothing left behind/);
    await assertNoLeaks(host, { graceMs: 10_000 });
  });

  it("runs the built-in pod on cocoon-runc and prints what it printed", async () => {
    const { code, out } = await demo();
    assert.equal(code, 0, out);
    const podIp = /pod cocoon-demo is running with handler cocoon-runc, pod IP (\d+\.\d+\.\d+\.\d+)/.exec(out)?.[1];
    assert.ok(podIp, out);
    assert.match(out, new RegExp(`hello from a Cocoon pod: ${os.release().replace(/[.]/g, "\\.")}, cocoon-demo`));
    // The container saw the address the CRI reported for its pod.
    assert.match(out, new RegExp(`\\n\\s+pod IP: ${podIp.replace(/\./g, "\\.")}\\n`));
    assert.match(out, /container PID 1: sh, user root, memory limit 67108864/);
    assert.match(out, /container hello exited with code 0/);
    assert.match(out, /cleaned up: nothing left behind/);
    const { dir, bridge } = instanceOf(out);
    assert.ok(!labDirs().includes(path.basename(dir)), `${dir} removed`);
    assert.ok(!readdirSync("/sys/class/net").includes(bridge), `${bridge} removed`);
    await assertNoLeaks(host, { graceMs: 5_000 });
  });

  it("runs examples/pod.yaml with --spec", async () => {
    const { code, out } = await demo({ spec: path.join(repoRoot, "examples", "pod.yaml") });
    assert.equal(code, 0, out);
    assert.match(out, /pod hello-pod is running with handler cocoon-runc/);
    assert.match(out, /hello from hello-pod, kernel/);
    assert.match(out, /\[stderr\] warnings go to stderr/);
    assert.match(out, /memory limit: 67108864/);
    assert.match(out, /fetched from localhost:8080: <html><body>hello from cocoon<\/body><\/html>/);
  });

  it("fails (exit 1) when a container fails, and still cleans up", async () => {
    const spec = path.join(tmp, "failing.yaml");
    writeFileSync(spec, "name: failing\ncontainers:\n  - name: oops\n    image: cocoon.local/busybox\n    command: [sh, -c, 'echo trying; exit 3']\n");
    const { code, out } = await demo({ spec });
    assert.equal(code, 1, out);
    assert.match(out, /container oops exited with code 3 \(Error\)/);
    assert.match(out, /\n\s+trying\n/);
    assert.match(out, /cleaned up: nothing left behind/);
  });

  it("refuses images it cannot have and conflicting options, before starting anything", async () => {
    const spec = path.join(tmp, "remote.yaml");
    writeFileSync(spec, "name: remote\ncontainers:\n  - name: nginx\n    image: nginx:1.25\n");
    const r1 = await demo({ spec });
    assert.equal(r1.code, 1);
    assert.match(r1.out, /no registry to pull from; container nginx asks for nginx:1\.25/);
    const r2 = await demo({ handler: "cocoon-runc", mode: "vm" });
    assert.equal(r2.code, 1);
    assert.match(r2.out, /disagree/);
    const r3 = await demo({ handler: "kata" });
    assert.equal(r3.code, 1);
    assert.match(r3.out, /unknown runtime handler "kata"/);
    assert.doesNotMatch(r1.out + r2.out + r3.out, /starting a private containerd/);
  });

  it("cleans up when interrupted with Ctrl-C (SIGINT), here while --keep holds the pod", async () => {
    const d = spawnDemo(["--keep"]);
    try {
      await d.waitFor(/keeping everything running/);
      const { dir } = instanceOf(d.out());
      assert.ok(labDirs().includes(path.basename(dir)), "the instance is still there while kept");
      d.child.kill("SIGINT");
      const code = await d.exited;
      assert.equal(code, 0, d.out());
      assert.match(d.out(), /SIGINT: stopping/);
      assert.match(d.out(), /cleaned up: nothing left behind/);
      assert.ok(!labDirs().includes(path.basename(dir)), `${dir} removed`);
    } finally {
      d.kill();
    }
    await assertNoLeaks(host, { graceMs: 5_000 });
  });

  it("removes an instance whose demo was SIGKILLed on the next run", async () => {
    const d = spawnDemo(["--keep"]);
    let dir: string;
    try {
      await d.waitFor(/keeping everything running/);
      dir = instanceOf(d.out()).dir;
    } finally {
      d.kill();
    }
    await d.exited;
    assert.ok(labDirs().includes(path.basename(dir)), "a SIGKILLed demo cannot clean up");
    const { code, out } = await demo();
    assert.equal(code, 0, out);
    assert.match(out, new RegExp(`removed an abandoned demo instance: ${dir} \\(owner pid \\d+ is gone\\)`));
    assert.ok(!labDirs().includes(path.basename(dir)), `${dir} removed`);
    await assertNoLeaks(host, { graceMs: 5_000 });
  });
});

describe("lab CNI network", () => {
  it("tells overlapping CIDRs apart", () => {
    assert.ok(cidrsOverlap("10.88.5.0/24", "10.88.0.0/16"));
    assert.ok(cidrsOverlap("10.88.5.7", "10.88.5.0/24"));
    assert.ok(!cidrsOverlap("10.88.5.0/24", "10.88.6.0/24"));
    assert.ok(cidrsOverlap("0.0.0.0/0", "192.0.2.0/24"));
    assert.ok(!cidrsOverlap("garbage", "10.0.0.0/8"));
  });

  it("plans a free bridge and subnet and writes a conflist it can read back", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-cnitest-"));
    try {
      // Everything but 10.88.200.0/24 is taken.
      const avoid = Array.from({ length: 256 }, (_, i) => `10.88.${i}.0/24`).filter((c) => c !== "10.88.200.0/24");
      const net = await planCniNetwork({ confDir: path.join(dir, "conf"), ipamDir: path.join(dir, "ipam"), avoid });
      assert.equal(net.subnet, "10.88.200.0/24");
      assert.equal(net.gateway, "10.88.200.1");
      assert.match(net.bridge, /^cni-cocoon[0-9a-f]{4}$/);
      assert.ok(net.bridge.length <= 15);
      writeCniConfig(net);
      const conf = bridgeConflist(net) as { plugins: Record<string, unknown>[] };
      assert.deepEqual(conf.plugins.map((p) => p["type"]), ["bridge", "loopback"]);
      assert.equal(conf.plugins[0]!["isGateway"], true);
      assert.equal(conf.plugins[0]!["ipMasq"], false);
      assert.equal((conf.plugins[0]!["ipam"] as Record<string, unknown>)["dataDir"], net.ipamDir);
      const back = readCniNetwork(net.confDir, net.ipamDir);
      assert.deepEqual(back && { ...back, ipForwardBefore: net.ipForwardBefore }, net);
      await assert.rejects(planCniNetwork({ confDir: dir, ipamDir: dir, avoid: ["10.88.0.0/16"] }), /no free \/24/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

interface DemoChild {
  child: ChildProcess;
  out(): string;
  exited: Promise<number | null>;
  waitFor(re: RegExp): Promise<void>;
  kill(): void;
}

/** The demo as a separate process (its CLI options, its signal handling), bounded by a timer. */
function spawnDemo(args: string[]): DemoChild {
  const demoModule = path.join(repoRoot, "dist", "js", "src", "cli", "demo.js");
  const script = `const { demoCommand } = await import(${JSON.stringify(demoModule)}); await demoCommand().parseAsync(process.argv.slice(1), { from: "user" });`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script, "--", "--handler", "cocoon-runc", ...args], { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const killer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const exited = new Promise<number | null>((resolve) =>
    child.on("close", (c) => {
      clearTimeout(killer);
      resolve(c);
    }),
  );
  return {
    child,
    out: () => out,
    exited,
    async waitFor(re) {
      const deadline = Date.now() + 60_000;
      while (!re.test(out) && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      assert.match(out, re);
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
  };
}
