// The real launcher script (bin/containerd-shim-cocoon-v2) against the real Node side: `start` is
// answered by the script alone exactly when the Node side left it what it needs (a memo whose daemon
// is alive, an idle live spare) and runs Node otherwise; either way the address is the one the Node
// side computes for the container's group. A `node` on PATH that counts its runs tells the paths apart.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { repoRoot, waitFor } from "../helpers/util.js";
import { registerModes } from "../../src/shim/modes.js";
import { MODES } from "../../src/runtime/modes.js";

// The Node side parses configs as the shim does, with every mode registered.
registerModes(MODES);

// A private run dir, set before the shim modules load: they read it then.
const dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-launcher-"));
const runDir = path.join(dir, "run");
mkdirSync(runDir, { mode: 0o700 });
process.env["COCOON_RUN_DIR"] = runDir;
const { daemonSocket } = await import("../../src/shim/bootstrap.js");
const { toAddress } = await import("../../src/shim/address.js");
const { parseShimFlags } = await import("../../src/shim/flags.js");
const { resolveConfig } = await import("../../src/shim/options.js");
const { ensureStartDirs, liveDaemons } = await import("../../src/shim/fast-start.js");
const { liveSpares, poolDir, poolOf } = await import("../../src/shim/spare-pool.js");
const { SPARE_FILES } = await import("../../src/shim/start-protocol.js");
const { assertNoLeaks, snapshotHost } = await import("../helpers/leaks.js");
const { isAlive, listProcesses } = await import("../helpers/procfs.js");

const SHIM = path.join(repoRoot, "bin", "containerd-shim-cocoon-v2");
const NS = "default";
/**
 * containerd's address, one per config as containerd's environment (COCOON_CONFIG) is one per
 * containerd: spares serve only while it exists; nothing here connects to it.
 */
const ctrdOf = (cfgFile: string) => cfgFile.replace(/\.toml$/, ".sock");
const POD = "io.kubernetes.cri.sandbox-id";
const COCOON_GROUP = "io.cocoon.group";
const RUNC_GROUP = "io.containerd.runc.v2.group";
const tag = `${process.pid}`;

/** Runs of the `node` the launcher execs (the Node path); the shim's own children use Node's real path. */
const nodeRuns = () => (existsSync(path.join(dir, "node-runs")) ? readFileSync(path.join(dir, "node-runs"), "utf8").split("\n").length - 1 : 0);

function config(name: string, body: string): string {
  const file = path.join(dir, `${name}.toml`);
  writeFileSync(file, `mode = "runc"\n${body}\n[runc]\nroot = "${dir}/runc"\n`);
  writeFileSync(ctrdOf(file), "");
  return file;
}

interface Started {
  address: string;
  viaNode: boolean;
  /** What the Node side computes for this container: its group's daemon address. */
  expected: string;
}

/** `start` through the launcher, with a config.json holding `annotations` (or the text `spec`). */
function start(id: string, cfgFile: string, annotations: Record<string, string>, spec?: string): Started {
  const bundle = path.join(dir, "bundles", id);
  mkdirSync(bundle, { recursive: true });
  writeFileSync(path.join(bundle, "config.json"), spec ?? JSON.stringify({ ociVersion: "1.0.2", annotations }));
  const argv = ["-namespace", NS, "-address", ctrdOf(cfgFile), "-publish-binary", "/bin/false", "-id", id, "start"];
  const runs = nodeRuns();
  const r = spawnSync(SHIM, argv, {
    cwd: bundle,
    env: { PATH: `${path.join(dir, "tools")}:${process.env["PATH"]}`, COCOON_CONFIG: cfgFile, COCOON_RUN_DIR: runDir },
    input: "",
    timeout: 20_000,
  });
  assert.equal(r.status, 0, `start ${id}: ${r.stdout}${r.stderr}`);
  const address = r.stdout.toString();
  assert.equal(readFileSync(path.join(bundle, "address"), "utf8"), address, "the address file says what start printed");
  const cfg = resolveConfig({ kind: "none" }, { COCOON_CONFIG: cfgFile });
  return { address, viaNode: nodeRuns() > runs, expected: toAddress(daemonSocket(parseShimFlags(argv), cfg, annotations)) };
}

/** The live daemon the Node side recorded for this address, 0 if none. */
function daemonOf(address: string): number {
  const sock = address.replace(/^unix:\/\//, "");
  return [...liveDaemons()].find(([, s]) => s === sock)?.[0] ?? 0;
}

/** Waits until the Node side records the address's daemon as live: from then on its memo holds. */
const serving = (s: Started) => waitFor(() => daemonOf(s.address), { timeoutMs: 10_000, what: `a daemon for ${s.address}` });

describe("the launcher script and the Node side", { timeout: 120_000 }, () => {
  let host: Awaited<ReturnType<typeof snapshotHost>>;
  let memoCfg = "";
  let nodeCfg = "";
  let spareCfg = "";
  const addresses = new Set<string>();
  const started = (s: Started) => {
    addresses.add(s.address);
    return s;
  };

  before(async () => {
    host = await snapshotHost();
    // As any earlier start on the node would have: until then the launcher has nowhere to hash.
    ensureStartDirs();
    mkdirSync(path.join(dir, "tools"));
    writeFileSync(path.join(dir, "tools", "node"), `#!/bin/sh\necho >>'${dir}/node-runs'\nexec '${process.execPath}' "$@"\n`);
    chmodSync(path.join(dir, "tools", "node"), 0o755);
    memoCfg = config("memo", "spare_daemons = 0");
    nodeCfg = config("node", 'grouping = "node"\nspare_daemons = 0');
    spareCfg = config("spare", "spare_daemons = 1");
  });

  after(async () => {
    // Spares leave once containerd's address is gone; daemons (nothing runs in them) on SIGTERM,
    // sent again to one that was still booting and had no handler yet.
    for (const cfg of [memoCfg, nodeCfg, spareCfg]) rmSync(ctrdOf(cfg), { force: true });
    const ours = () => listProcesses().filter((p) => p.pid !== process.pid && p.args.some((a) => a.includes(dir)));
    const stopAll = () => {
      const left = ours();
      for (const p of left) {
        try {
          process.kill(p.pid, "SIGTERM");
        } catch {}
      }
      return !left.length;
    };
    await waitFor(stopAll, { timeoutMs: 10_000, intervalMs: 500, what: "the shims to exit" }).catch((e) => {
      throw new Error(`${(e as Error).message}: ${ours().map((p) => `${p.pid} ${p.args.join(" ")}`).join("; ")}`);
    });
    // Sockets of daemons this test SIGKILLed.
    for (const a of addresses) rmSync(a.replace(/^unix:\/\//, ""), { force: true });
    rmSync(dir, { recursive: true, force: true });
    await assertNoLeaks(host);
  });

  it("a group's first start runs Node; later ones of the group are answered from the memo", async () => {
    const g = `g-${tag}`;
    const first = started(start("m1", memoCfg, { [COCOON_GROUP]: g, [POD]: `p1-${tag}` }));
    assert.equal(first.address, first.expected);
    assert.ok(first.viaNode, "no daemon yet: Node");
    await serving(first);
    // The same group by the annotations' order: io.cocoon.group, then runc's group, then the pod.
    for (const [id, ann] of [["m2", { [COCOON_GROUP]: g, [POD]: `p2-${tag}` }], ["m3", { [RUNC_GROUP]: g, [POD]: `p1-${tag}` }]] as const) {
      const s = start(id, memoCfg, ann);
      assert.deepEqual([s.address, s.viaNode], [first.address, false], `${id}: the memo, for ${first.address}`);
      assert.equal(s.expected, first.address);
    }
    // Another group (the pod's id), whose daemon is not there yet: Node.
    const pod = started(start("m4", memoCfg, { [POD]: `p1-${tag}` }));
    assert.notEqual(pod.address, first.address);
    assert.deepEqual([pod.address, pod.viaNode], [pod.expected, true]);
    await serving(pod);
    // An empty annotation does not count, for either side.
    const empty = start("m5", memoCfg, { [COCOON_GROUP]: "", [POD]: `p1-${tag}` });
    assert.deepEqual([empty.address, empty.expected, empty.viaNode], [pod.address, pod.address, false]);
    // No annotation: the container is its own group.
    const alone = started(start(`m6-${tag}`, memoCfg, {}));
    assert.deepEqual([alone.address, alone.viaNode], [alone.expected, true]);
  });

  it("what the launcher cannot read as Node does is left to Node", async () => {
    // A value with a JSON escape: Node decodes it; the launcher does not try.
    const odd = `q"uo\\te-${tag}`;
    const a = started(start("e1", memoCfg, { [COCOON_GROUP]: odd }));
    await serving(a);
    const b = start("e2", memoCfg, { [COCOON_GROUP]: odd });
    assert.deepEqual([a.address, a.viaNode, b.address, b.viaNode], [a.expected, true, a.expected, true]);
    // A group key outside the annotations as well: only Node knows which one counts.
    const pod = started(start("e3", memoCfg, { [POD]: `e-${tag}` }));
    await serving(pod);
    const spec = JSON.stringify({ ociVersion: "1.0.2", linux: { sysctl: { [POD]: `other-${tag}` } }, annotations: { [POD]: `e-${tag}` } });
    const twice = start("e4", memoCfg, { [POD]: `e-${tag}` }, spec);
    assert.deepEqual([twice.address, twice.expected, twice.viaNode], [pod.address, pod.address, true]);
  });

  it("a memo whose daemon is gone is not trusted", async () => {
    const g = `dead-${tag}`;
    const first = started(start("d1", memoCfg, { [COCOON_GROUP]: g }));
    const pid = await serving(first);
    process.kill(pid, "SIGKILL");
    await waitFor(() => !isAlive(pid), { what: "the daemon to die" });
    const again = start("d2", memoCfg, { [COCOON_GROUP]: g });
    assert.deepEqual([again.address, again.viaNode], [first.address, true]);
    assert.notEqual(await serving(again), pid, "a new daemon serves the group");
    const warm = start("d3", memoCfg, { [COCOON_GROUP]: g });
    assert.deepEqual([warm.address, warm.viaNode], [first.address, false]);
  });

  it("with node grouping one memo serves every group", async () => {
    const a = started(start("n1", nodeCfg, { [POD]: `n1-${tag}` }));
    await serving(a);
    const b = start("n2", nodeCfg, { [POD]: `n2-${tag}` });
    assert.deepEqual([a.address, a.viaNode], [a.expected, true]);
    assert.deepEqual([b.address, b.expected, b.viaNode], [a.address, a.address, false]);
  });

  it("a cold start goes to an idle spare; a dead spare leaves it to Node", async () => {
    const first = started(start("s1", spareCfg, { [COCOON_GROUP]: `s1-${tag}` }));
    assert.ok(first.viaNode);
    // The daemon Node started tops up the pool the launcher named.
    const key = await waitFor(() => poolOf(ctrdOf(spareCfg)), { timeoutMs: 15_000, what: "a spare in the launcher's pool" });
    const spare = await waitFor(() => liveSpares(key)[0], { timeoutMs: 15_000, what: "an idle spare" });
    const cold = started(start("s2", spareCfg, { [COCOON_GROUP]: `s2-${tag}` }));
    assert.deepEqual([cold.address, cold.viaNode], [cold.expected, false], "the spare answers");
    assert.equal(await serving(cold), spare, "the spare became the group's daemon");
    // The spare wrote the memo under the launcher's key.
    const warm = start("s3", spareCfg, { [COCOON_GROUP]: `s2-${tag}` });
    assert.deepEqual([warm.address, warm.viaNode], [cold.address, false], "the memo the spare wrote");
    // Its replacement, killed: its registration stays, but no launcher claims a dead spare.
    const next = await waitFor(() => liveSpares(key).find((p) => p !== spare), { timeoutMs: 15_000, what: "the replacement spare" });
    process.kill(next, "SIGKILL");
    await waitFor(() => !isAlive(next), { what: "the spare to die" });
    const late = started(start("s4", spareCfg, { [COCOON_GROUP]: `s4-${tag}` }));
    assert.deepEqual([late.address, late.viaNode], [late.expected, true], "no live spare: Node");
    const claimed = listDir(poolDir(key)).filter((n) => existsSync(path.join(poolDir(key), n, SPARE_FILES.claim)));
    assert.deepEqual(claimed, [], "no claim on a dead spare");
  });
});

function listDir(d: string): string[] {
  try {
    return readdirSync(d);
  } catch {
    return [];
  }
}
