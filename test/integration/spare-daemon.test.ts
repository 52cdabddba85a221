// Spare daemons through the real containerd: a pod's first container is served by an already booted
// spare that becomes its daemon; the pool refills, falls back to Node when a spare is dead or hung,
// honours spare_daemons = 0 and node grouping, and a spare never outlives its containerd.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { parseSpareName, poolDir, poolOf, SPARES_DIR } from "../../src/shim/spare-pool.js";
import { startContainerd, type Containerd } from "../helpers/containerd.js";
import { BUSYBOX_IMAGE, importImage } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { cocoonShims, isAlive } from "../helpers/procfs.js";
import { procStat } from "../../src/sys/procstat.js";
import { repoRoot, sleep, waitFor } from "../helpers/util.js";

const RT = ["--runtime", "io.containerd.cocoon.v2"];
const POD = "io.kubernetes.cri.sandbox-id";
let seq = 0;
const uid = (name: string) => `${name}-${process.pid}-${++seq}`;
/** The pool the launcher uses for this containerd (found through a registered spare). */
const poolKey = (address: string) => poolOf(address) ?? "";

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Idle spares registered in this containerd's pool (live ones). */
function registeredSpares(ctrd: Containerd): number[] {
  const key = poolKey(ctrd.address);
  return key ? listDir(poolDir(key)).map(parseSpareName).filter((p): p is number => !!p) : [];
}

/** Waits for exactly one registered spare (the pool's default size) and returns its pid. */
async function oneSpare(ctrd: Containerd, not?: number): Promise<number> {
  return waitFor(() => {
    const s = registeredSpares(ctrd).filter((p) => p !== not);
    return s.length === 1 ? s[0] : undefined;
  }, { timeoutMs: 15_000, what: "a registered spare daemon" });
}

/** The pid of the shim serving a running container: the parent of its init process. */
async function shimOf(ctrd: Containerd, id: string): Promise<number> {
  const line = (await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(id + " "));
  const pid = Number(line?.split(/\s+/)[1]);
  return procStat(pid)?.ppid ?? 0;
}

async function removeContainer(ctrd: Containerd, id: string) {
  await ctrd.ctr(["task", "kill", "-s", "SIGKILL", id], { allowFail: true });
  await waitFor(async () => !/RUNNING/.test((await ctrd.ctr(["task", "ls"])).stdout.split("\n").find((l) => l.startsWith(id + " ")) ?? ""), { timeoutMs: 10_000, what: `${id} stopped` });
  await ctrd.ctr(["task", "rm", "-f", id], { allowFail: true });
  await ctrd.ctr(["container", "rm", id]);
}

/** Stops every spare of the pool and waits until they are gone. */
async function drainPool(ctrd: Containerd) {
  const spares = cocoonShims(ctrd.address, "spare");
  for (const p of spares) process.kill(p, "SIGTERM");
  await waitFor(() => spares.every((p) => !isAlive(p)) && registeredSpares(ctrd).length === 0, { timeoutMs: 10_000, what: "spares to exit" });
}

describe("spare daemons", { timeout: 240_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let cfgDir: string;

  before(async () => {
    host = await snapshotHost();
    cfgDir = mkdtempSync(path.join(os.tmpdir(), "cocoon-spare-"));
    writeFileSync(path.join(cfgDir, "cocoon.toml"), `mode = "runc"\n[runc]\nroot = "${cfgDir}/runc"\n`);
    writeFileSync(path.join(cfgDir, "nospare.toml"), `mode = "runc"\nspare_daemons = 0\n[runc]\nroot = "${cfgDir}/runc"\n`);
    writeFileSync(path.join(cfgDir, "node.toml"), `mode = "runc"\ngrouping = "node"\n[runc]\nroot = "${cfgDir}/runc"\n`);
    ctrd = await startContainerd({ env: { COCOON_CONFIG: path.join(cfgDir, "cocoon.toml") }, pathPrepend: [path.join(repoRoot, "bin")] });
    await importImage(ctrd, BUSYBOX_IMAGE);
  });

  afterEach(async () => {
    await assertNoLeaks(host);
  });

  after(async () => {
    await ctrd?.stop();
    await assertNoLeaks(host, { harness: ctrd });
    rmSync(cfgDir, { recursive: true, force: true });
  });

  it("a new pod's container is served by the spare, which is replaced", async () => {
    const first = uid("a");
    await ctrd.ctr(["run", "-d", ...RT, "--annotation", `${POD}=${uid("pod")}`, BUSYBOX_IMAGE, first, "sleep", "1000"]);
    const spare = await oneSpare(ctrd);
    const second = uid("b");
    await ctrd.ctr(["run", "-d", ...RT, "--annotation", `${POD}=${uid("pod")}`, BUSYBOX_IMAGE, second, "sleep", "1000"]);
    assert.equal(await shimOf(ctrd, second), spare, "the spare serves the new pod");
    assert.ok(cocoonShims(ctrd.address, "daemon").includes(spare), "the former spare counts as a daemon");
    const ex = await ctrd.ctr(["task", "exec", "--exec-id", "e1", second, "sh", "-c", "echo from-spare; exit 4"], { allowFail: true });
    assert.equal(ex.stdout, "from-spare\n");
    assert.equal(ex.code, 4);
    const replacement = await oneSpare(ctrd, spare);
    assert.notEqual(replacement, spare);
    // The replacement serves a whole `ctr run` with output and exit code.
    const r = await ctrd.ctr(["run", "--rm", ...RT, "--annotation", `${POD}=${uid("pod")}`, BUSYBOX_IMAGE, uid("c"), "sh", "-c", "echo hello; exit 3"], { allowFail: true });
    assert.equal(r.stdout, "hello\n");
    assert.equal(r.code, 3);
    assert.ok(!isAlive(replacement) || !registeredSpares(ctrd).includes(replacement), "the replacement was used");
    await removeContainer(ctrd, first);
    await removeContainer(ctrd, second);
    await waitFor(() => !isAlive(spare), { timeoutMs: 10_000, what: "the former spare to exit with its pod" });
  });

  it("a spare killed while idle, or mid-request, leaves the start to Node", async () => {
    let spare = await oneSpare(ctrd);
    process.kill(spare, "SIGKILL");
    await waitFor(() => !isAlive(spare), { what: "spare dead" });
    const a = uid("k");
    const r = await ctrd.ctr(["run", "--rm", ...RT, "--annotation", `${POD}=${uid("pod")}`, BUSYBOX_IMAGE, a, "echo", "after-kill"]);
    assert.equal(r.stdout, "after-kill\n");
    // Mid-request: the spare stops answering after the launcher claimed it.
    spare = await oneSpare(ctrd, spare);
    process.kill(spare, "SIGSTOP");
    const b = uid("k");
    const t0 = Date.now();
    const run = ctrd.ctr(["run", "--rm", ...RT, "--annotation", `${POD}=${uid("pod")}`, BUSYBOX_IMAGE, b, "echo", "after-hang"]);
    const key = poolKey(ctrd.address);
    const dir = listDir(poolDir(key)).find((c) => c.startsWith(`${spare}-`));
    await waitFor(() => existsSync(path.join(poolDir(key), dir!, "claim")), { timeoutMs: 10_000, what: "the launcher to claim the stopped spare" });
    process.kill(spare, "SIGKILL");
    const r2 = await run;
    assert.equal(r2.stdout, "after-hang\n");
    assert.ok(Date.now() - t0 < 10_000);
    // The launcher removed the dead spare's dir; a new spare replaces the dead ones.
    assert.ok(!listDir(poolDir(key)).some((c) => c.startsWith(`${spare}-`)));
    await oneSpare(ctrd, spare);
  });

  it("spare_daemons = 0 and node grouping start no spare and are not served by one", async () => {
    await drainPool(ctrd);
    for (const cfg of ["nospare.toml", "node.toml"]) {
      const id = uid("none");
      await ctrd.ctr(["run", "-d", ...RT, "--runtime-config-path", path.join(cfgDir, cfg), "--annotation", `${POD}=${uid("pod")}`, BUSYBOX_IMAGE, id, "sleep", "1000"]);
      await sleep(2500);
      assert.deepEqual(cocoonShims(ctrd.address, "spare"), [], `${cfg}: no spare started`);
      await removeContainer(ctrd, id);
      await sleep(500);
      assert.deepEqual(cocoonShims(ctrd.address, "spare"), [], `${cfg}: no spare started when its daemon exits`);
    }
    // With a spare present, a container whose config disables spares is still not served by it.
    await ctrd.ctr(["run", "--rm", ...RT, "--annotation", `${POD}=${uid("pod")}`, BUSYBOX_IMAGE, uid("warm"), "true"]);
    const spare = await oneSpare(ctrd);
    const id = uid("none");
    await ctrd.ctr(["run", "-d", ...RT, "--runtime-config-path", path.join(cfgDir, "nospare.toml"), "--annotation", `${POD}=${uid("pod")}`, BUSYBOX_IMAGE, id, "sleep", "1000"]);
    assert.notEqual(await shimOf(ctrd, id), spare);
    assert.deepEqual(registeredSpares(ctrd), [spare], "the spare went back to the pool");
    await removeContainer(ctrd, id);
  });

  it("a spare exits with its containerd and leaves nothing behind", async () => {
    const other = await startContainerd({ env: { COCOON_CONFIG: path.join(cfgDir, "cocoon.toml") }, pathPrepend: [path.join(repoRoot, "bin")] });
    try {
      await importImage(other, BUSYBOX_IMAGE);
      await other.ctr(["run", "--rm", ...RT, BUSYBOX_IMAGE, uid("x"), "true"]);
      const spare = await oneSpare(other);
      const key = poolKey(other.address);
      process.kill(other.pid, "SIGKILL");
      await waitFor(() => !isAlive(spare), { timeoutMs: 5_000, what: "the spare to exit after containerd" });
      assert.ok(!existsSync(poolDir(key)), "pool dir removed");
      assert.ok(!existsSync(path.join(SPARES_DIR, `${key}.starting`)), "boot marker removed");
    } finally {
      await other.stop();
    }
    assert.deepEqual(other.leftovers, []);
  });
});
