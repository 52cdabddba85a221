// The guest agent's pieces that need no VM: the spec rewrite, the bounded output buffer, the OOM
// event queue, waits, /etc/hosts. (Shared pieces: test/unit/core-*.test.ts.)
import assert from "node:assert/strict";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, describe, it } from "node:test";
import { ShimError } from "../../src/core/errors.js";
import { hostsFile, linkByMac } from "../../src/agent/network.js";
import { OomEvents } from "../../src/agent/oom.js";
import { MAX_CHUNK, OutputBuffer } from "../../src/agent/output.js";
import { AgentProcess } from "../../src/agent/process.js";
import { guestSpec } from "../../src/agent/spec.js";
import type { ProcessStdio } from "../../src/agent/stdio.js";
import { Code } from "../../src/ttrpc/codes.js";
import { sleep, tmpdir } from "../helpers/util.js";

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function scratch(): string {
  const d = tmpdir("cocoon-agent-parts-");
  dirs.push(d);
  return d;
}

const codeOf = (fn: () => unknown) => {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ShimError, String(err));
    return err.grpcCode;
  }
  return Code.OK;
};

describe("guestSpec", () => {
  const hostSpec = {
    ociVersion: "1.0.2",
    process: { args: ["sh"], terminal: false, apparmorProfile: "cri-containerd.apparmor.d", selinuxLabel: "x", capabilities: { bounding: ["CAP_KILL"] } },
    root: { path: "/mnt/cocoon/c1/rootfs", readonly: true },
    mounts: [{ destination: "/data", type: "bind", source: "/mnt/cocoon/vol", options: ["rbind"] }],
    hooks: { createRuntime: [{ path: "/usr/bin/nvidia-ctk" }, { path: "/bin/sh" }] },
    linux: {
      cgroupsPath: "/kubepods/burstable/pod1/c1",
      mountLabel: "system_u:object_r:container_file_t",
      namespaces: [
        { type: "pid" },
        { type: "network", path: "/var/run/netns/cni-1" },
        { type: "ipc", path: "/proc/42/ns/ipc" },
        { type: "uts", path: "/proc/42/ns/uts" },
        { type: "mount" },
        { type: "network" },
      ],
      sysctl: { "net.ipv4.ip_unprivileged_port_start": "0", "kernel.msgmax": "8192" },
      resources: { memory: { limit: 1000, kernel: 5, swappiness: 60 }, cpu: { shares: 512 } },
      seccomp: { defaultAction: "SCMP_ACT_ERRNO" },
    },
  };

  it("keeps the container's own settings and takes out what only the host had", () => {
    const { spec, netSysctls, notes } = guestSpec(JSON.stringify(hostSpec), "c1", true, new Map([[42, "sandbox"]]));
    const s = spec as any;
    assert.equal(s.linux.cgroupsPath, "/cocoon/c1");
    assert.deepEqual(s.linux.namespaces, [
      { type: "pid" },
      { type: "ipc", path: "/proc/42/ns/ipc" },
      { type: "uts", path: "/proc/42/ns/uts" },
      { type: "mount" },
      { type: "cgroup" },
    ]);
    assert.equal(s.process.terminal, true);
    assert.equal(s.process.apparmorProfile, undefined);
    assert.equal(s.process.selinuxLabel, undefined);
    assert.equal(s.linux.mountLabel, undefined);
    assert.deepEqual(s.process.capabilities, { bounding: ["CAP_KILL"] });
    assert.deepEqual(s.linux.seccomp, hostSpec.linux.seccomp);
    assert.deepEqual(s.mounts, hostSpec.mounts);
    assert.deepEqual(s.root, hostSpec.root);
    assert.deepEqual(netSysctls, { "net.ipv4.ip_unprivileged_port_start": "0" });
    assert.deepEqual(s.linux.sysctl, { "kernel.msgmax": "8192" });
    assert.deepEqual(s.linux.resources, { memory: { limit: 1000 }, cpu: { shares: 512 } });
    assert.deepEqual(s.hooks.createRuntime, [{ path: "/bin/sh" }]);
    assert.ok(notes.length >= 5, notes.join("; "));
  });

  it("refuses what is not a spec", () => {
    assert.equal(codeOf(() => guestSpec("{", "c", false)), Code.INVALID_ARGUMENT);
    assert.equal(codeOf(() => guestSpec("[]", "c", false)), Code.INVALID_ARGUMENT);
    assert.equal(codeOf(() => guestSpec(JSON.stringify({ process: {} }), "c", false)), Code.INVALID_ARGUMENT);
    assert.equal(codeOf(() => guestSpec(JSON.stringify({ root: { path: "/r" } }), "c", false)), Code.INVALID_ARGUMENT);
  });
});

describe("OutputBuffer", () => {
  it("hands out chunks in order, splits big ones, then eof", async () => {
    const b = new OutputBuffer();
    b.push(Buffer.from("ab"));
    b.push(Buffer.from("cd"));
    assert.equal((await b.read()).data.toString(), "abcd");
    const big = Buffer.alloc(MAX_CHUNK + 10, 7);
    b.push(big);
    b.end();
    assert.equal((await b.read()).data.length, MAX_CHUNK);
    const rest = await b.read();
    assert.deepEqual([rest.data.length, rest.eof], [10, false]);
    assert.deepEqual(await b.read(), { data: Buffer.alloc(0), eof: true });
    assert.equal((await b.read()).eof, true, "eof again, as often as asked");
  });

  it("answers a waiting reader, and an abandoned read consumes nothing", async () => {
    const b = new OutputBuffer();
    const ctl = new AbortController();
    const abandoned = b.read(ctl.signal);
    ctl.abort(new Error("gone"));
    await assert.rejects(abandoned, /gone/);
    const waiting = b.read();
    b.push(Buffer.from("x"));
    assert.equal((await waiting).data.toString(), "x");
    const atEnd = b.read();
    b.end();
    assert.equal((await atEnd).eof, true);
  });

  it("pauses a source that outruns the reader and resumes it once drained", async () => {
    const b = new OutputBuffer(1024);
    const src = new PassThrough();
    b.attach(src);
    for (let i = 0; i < 8; i++) src.write(Buffer.alloc(512, i));
    await sleep(20);
    assert.equal(src.isPaused(), true);
    assert.ok(b.buffered <= 1536, `buffered ${b.buffered}`);
    let total = 0;
    src.end();
    for (;;) {
      const c = await b.read();
      if (c.eof) break;
      total += c.data.length;
    }
    assert.equal(total, 8 * 512);
  });

  it("ends on a source error (a pty master's EIO)", async () => {
    const b = new OutputBuffer();
    const src = new PassThrough();
    b.attach(src);
    src.write("last");
    await sleep(5);
    src.destroy(Object.assign(new Error("read EIO"), { code: "EIO" }));
    assert.equal((await b.read()).data.toString(), "last");
    assert.equal((await b.read()).eof, true);
  });
});

describe("OomEvents", () => {
  it("answers a waiting host first, queues the rest, and lets an abandoned wait go", async () => {
    const ev = new OomEvents();
    const next = ev.next();
    ev.publish("c9");
    assert.equal(await next, "c9");
    ev.publish("queued");
    assert.equal(await ev.next(), "queued");
    const ctl = new AbortController();
    const gone = ev.next(ctl.signal);
    ctl.abort(new Error("left"));
    await assert.rejects(gone, /left/);
    ev.publish("after");
    assert.equal(await ev.next(), "after");
  });
});

describe("AgentProcess.wait", () => {
  const stdio = { processExited() {} } as unknown as ProcessStdio;

  it("answers waits before and after the exit, and lets abandoned waits go", async () => {
    const p = new AgentProcess("c", "e", stdio);
    const before = p.wait();
    const ctl = new AbortController();
    const gone = p.wait(ctl.signal);
    ctl.abort(new Error("left"));
    await assert.rejects(gone, /left/);
    const at = new Date();
    p.exited({ status: 137, at });
    p.exited({ status: 0, at: new Date() });
    assert.deepEqual(await before, { status: 137, at });
    assert.deepEqual(await p.wait(), { status: 137, at });
  });
});

describe("network helpers", () => {
  it("finds a link by MAC, whatever the case", () => {
    const d = scratch();
    for (const [name, mac] of [["lo", "00:00:00:00:00:00"], ["eth0", "52:54:00:ab:cd:ef"]]) {
      mkdirSync(join(d, name));
      writeFileSync(join(d, name, "address"), mac + "\n");
    }
    assert.equal(linkByMac("52:54:00:AB:CD:EF", d), "eth0");
    assert.equal(linkByMac("02:00:00:00:00:01", d), undefined);
  });

  it("writes the pod's name next to its first IPv4 address", () => {
    const text = hostsFile("pod-a", ["fd00::5/64", "10.88.0.5/16"]);
    assert.match(text, /^127\.0\.0\.1\tlocalhost\n/);
    assert.match(text, /\n10\.88\.0\.5\tpod-a\n$/);
  });
});
