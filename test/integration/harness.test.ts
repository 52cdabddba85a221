// Self-test of the integration harness against the real containerd and Debian's runc shim (not ours).
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { startContainerd, type Containerd } from "../helpers/containerd.js";
import { BUSYBOX_IMAGE, importImage, INDEX_HTML } from "../helpers/image.js";
import { assertNoLeaks, findLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { isAlive } from "../helpers/procfs.js";
import { tmpdir, waitFor } from "../helpers/util.js";

const RUNC = "io.containerd.runc.v2";
const APP_IMAGE = "cocoon.local/busybox-app:latest";
const id = (name: string) => `${name}-${process.pid}`;

describe("harness: private containerd with the runc shim", { timeout: 60_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd | undefined;

  before(async () => {
    host = await snapshotHost();
    ctrd = await startContainerd();
    await importImage(ctrd, BUSYBOX_IMAGE);
    await importImage(ctrd, APP_IMAGE, { user: "app", env: ["GREETING=hi"] });
  });
  after(async () => {
    await ctrd?.stop();
  });

  it("keeps its sockets and config inside its own temp dir", () => {
    const c = ctrd!;
    assert.ok(c.address.startsWith(c.dir + "/") && c.ttrpcAddress.startsWith(c.dir + "/"));
    const cfg = readFileSync(c.configPath, "utf8");
    assert.match(cfg, /disabled_plugins = \[ "io\.containerd\.grpc\.v1\.cri" \]/);
    assert.doesNotMatch(cfg, /\/run\/containerd|\/var\/lib\/containerd/);
  });

  it("runs a container and returns its output", async () => {
    const r = await ctrd!.ctr(["run", "--rm", "--runtime", RUNC, BUSYBOX_IMAGE, id("t1"), "sh", "-c", "echo hello; id -u; pwd"]);
    assert.deepEqual(r.stdout.split("\n"), ["hello", "0", "/", ""]);
  });

  it("propagates the exit code", async () => {
    const r = await ctrd!.ctr(["run", "--rm", "--runtime", RUNC, BUSYBOX_IMAGE, id("t2"), "sh", "-c", "exit 3"], { allowFail: true });
    assert.equal(r.code, 3);
  });

  it("builds the image layout it promises (tmp mode, files, user, env)", async () => {
    const script = "stat -c %a /tmp; cat /var/www/index.html; id -u; id -g; echo $GREETING; echo $PATH";
    const r = await ctrd!.ctr(["run", "--rm", APP_IMAGE, id("t3"), "sh", "-c", script]);
    assert.equal(r.stdout, `1777\n${INDEX_HTML}1000\n1000\nhi\n/bin:/usr/bin\n`);
  });

  it("finds shim binaries in the pathPrepend directories", async () => {
    // A stand-in shim that only announces itself: containerd reports its output as the start failure.
    const bin = tmpdir("cocoon-fakeshim-");
    try {
      writeFileSync(join(bin, "containerd-shim-harnessprobe-v2"), "#!/bin/sh\necho \"probe shim ran: $*\"\nexit 1\n", { mode: 0o755 });
      const c = await startContainerd({ pathPrepend: [bin] });
      try {
        await importImage(c, BUSYBOX_IMAGE);
        const r = await c.ctr(["run", "--rm", "--runtime", "io.containerd.harnessprobe.v2", BUSYBOX_IMAGE, id("probe"), "true"], { allowFail: true });
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, new RegExp(`probe shim ran: -namespace default -address ${c.address} .*-id ${id("probe")} start`));
      } finally {
        assert.deepEqual((await c.stop()).leftovers, []);
      }
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });

  it("stop() kills running tasks and leaves nothing behind", async () => {
    const c = ctrd!;
    await c.ctr(["run", "-d", "--runtime", RUNC, BUSYBOX_IMAGE, id("sleeper"), "sleep", "1000"]);
    const ls = await c.ctr(["tasks", "ls"]);
    assert.match(ls.stdout, new RegExp(`${id("sleeper")}\\s+\\d+\\s+RUNNING`));
    const report = await c.stop();
    assert.deepEqual(report.leftovers, []);
    assert.equal(existsSync(c.dir), false);
    assert.match(c.log(), /containerd successfully booted/, "the log survives stop()");
    assert.equal(await c.stop(), report, "stop() is idempotent");
    await assertNoLeaks(host, { harness: c });
  });
});

describe("harness: CRI-enabled containerd", { timeout: 30_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd | undefined;

  before(async () => {
    host = await snapshotHost();
  });
  after(async () => {
    await ctrd?.stop();
  });

  it("comes up with the CRI plugin loaded and stops cleanly", async () => {
    ctrd = await startContainerd({ cri: true });
    const v = await ctrd.ctr(["version"]);
    assert.match(v.stdout, /Server:\s+Version:\s+1\.6\./);
    const plugins = await ctrd.ctr(["plugins", "ls"]);
    assert.match(plugins.stdout, /io\.containerd\.grpc\.v1\s+cri\s+\S+\s+ok/);
    const cfg = readFileSync(ctrd.configPath, "utf8");
    assert.match(cfg, /restrict_oom_score_adj = true/);
    assert.match(cfg, /sandbox_image = "cocoon\.local\/pause:latest"/);
    const report = await ctrd.stop();
    assert.deepEqual(report.leftovers, []);
    await assertNoLeaks(host, { harness: ctrd });
  });
});

describe("harness: failed start", { timeout: 30_000 }, () => {
  it("rejects with the log tail and removes its temp dir", async () => {
    const host = await snapshotHost();
    // A wrong type for a known key makes containerd refuse the config and exit.
    const err: Error = await startContainerd({ extraConfig: 'oom_score = "high"' }).then(
      () => assert.fail("startContainerd should have failed"),
      (e: Error) => e,
    );
    assert.match(err.message, /containerd exited/);
    assert.match(err.message, /containerd log \(tail\)/);
    const dir = /private containerd in (\S+):/.exec(err.message)?.[1];
    assert.ok(dir, err.message);
    assert.equal(existsSync(dir), false);
    await assertNoLeaks(host);
  });
});

describe("harness: cleanup after containerd dies with a running container", { timeout: 60_000 }, () => {
  let ctrd: Containerd | undefined;
  after(async () => {
    await ctrd?.stop();
  });

  it("stop() kills the orphaned shim and container, unmounts, reports them, and leaves the host clean", async () => {
    const host = await snapshotHost();
    ctrd = await startContainerd();
    const c = ctrd;
    await importImage(c, BUSYBOX_IMAGE);
    const name = id("orphan");
    await c.ctr(["run", "-d", "--runtime", RUNC, BUSYBOX_IMAGE, name, "sleep", "1000"]);
    const pid = Number(/\s(\d+)\s+RUNNING/.exec((await c.ctr(["tasks", "ls"])).stdout)?.[1]);
    assert.ok(pid > 0);
    process.kill(c.pid, "SIGKILL");
    await waitFor(() => !isAlive(c.pid), { what: "containerd to die" });

    // The leak checker sees the orphans: the shim, the container process (another pid namespace), the rootfs.
    const seen = (await findLeaks(host)).join("\n");
    assert.match(seen, /process pid \d+: \S*containerd-shim-runc-v2 /);
    assert.match(seen, new RegExp(`process pid ${pid}: sleep 1000`));
    assert.match(seen, /mount .*\/rootfs \(overlay/);

    const report = await c.stop();
    const text = report.leftovers.join("\n");
    assert.match(text, /process pid \d+: \S*containerd-shim-runc-v2 .*-address /);
    assert.match(text, new RegExp(`runc container default/${name}`));
    assert.match(text, /mount .*\/rootfs \(overlay/);
    assert.match(text, /shim socket \/run\/containerd\/s\/[0-9a-f]{64}/);
    assert.equal(isAlive(pid), false, "the container process is gone");
    assert.equal(existsSync(c.dir), false);
    // The leftovers are leaks as far as the shim is concerned, but the host itself is clean again.
    await assert.rejects(assertNoLeaks(host, { harness: c, graceMs: 0 }), /containerd-shim-runc-v2/);
    await assertNoLeaks(host);
  });
});
