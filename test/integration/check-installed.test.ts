// `cocoon check` as an installed node runs it: `cocoon install` into a temporary tree (every node path
// of the layout under it, so the installed configs name the installed assets), then the installed
// launcher's `cocoon check`, away from the checkout. Its accelerator probe really boots the installed
// guest kernel (under KVM if this host has a working one, else under TCG), and everything the check
// loads must come from the installed tree.
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { kvmDeviceProblem } from "../../src/runtime/vm/kvm.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { repoRoot, run, tailLines, tmpdir } from "../helpers/util.js";

interface Result {
  name: string;
  ok: boolean;
  level: "ok" | "warn" | "fail";
  detail: string;
  fix: string;
}

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return "needs root (cocoon install)";
  if (!existsSync(join(repoRoot, "guest", "out", "manifest.json"))) return "guest/out has not been built (run guest/build.sh)";
  if (!existsSync(join(repoRoot, "dist", "cocoon.cjs"))) return "dist/ is not built (npm run build)";
  return false;
}
const skip = skipReason();

describe("cocoon check on an installed node", { skip }, () => {
  let root = "";
  let host: HostSnapshot;
  let results: Result[] = [];
  let stderr = "";
  const at = (p: string) => join(root, p);
  const byName = (name: string) => {
    const r = results.find((x) => x.name === name);
    assert.ok(r, `no "${name}" line in ${JSON.stringify(results.map((x) => x.name))}`);
    return r;
  };

  before(async () => {
    host = await snapshotHost();
    root = tmpdir("cocoon-check-installed-");
    const layout = ["--prefix", at("opt/cocoon"), "--bin-dir", at("bin"), "--config-dir", at("etc/cocoon"), "--asset-dir", at("share/cocoon"), "--containerd-config", at("etc/containerd/config.toml")];
    const install = await run(join(repoRoot, "bin", "cocoon"), ["install", ...layout, "--no-label-node", "--verify", "never"], { timeoutMs: 120_000 });
    assert.equal(install.code, 0, `cocoon install failed:\n${install.stdout}\n${install.stderr}`);

    // As containerd would run it: the installed launcher, with the installed node and wrappers first on
    // PATH, from a directory below which nothing of the checkout can be found.
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${at("opt/cocoon/bin")}:${at("bin")}:${process.env["PATH"] ?? ""}` };
    delete env["NODE_PATH"];
    const check = await run(at("opt/cocoon/bin/cocoon"), ["check", "--json", "--containerd-config", at("etc/containerd/config.toml")], { env, cwd: root, timeoutMs: 150_000 });
    stderr = check.stderr;
    assert.equal(check.timedOut, false, "cocoon check did not finish");
    try {
      results = JSON.parse(check.stdout) as Result[];
    } catch {
      assert.fail(`cocoon check printed no JSON (exit ${check.code}):\n${tailLines(check.stdout, 20)}\n${tailLines(check.stderr, 20)}`);
    }
  });

  after(async () => {
    if (root) rmSync(root, { recursive: true, force: true });
    // The probe's QEMU and its temporary directory are gone.
    if (host) await assertNoLeaks(host);
  });

  it("runs the installed bundle, which finds everything it loads in the installed tree", () => {
    assert.doesNotMatch(stderr, /Cannot find module|ERR_MODULE_NOT_FOUND/);
    assert.equal(existsSync(at("opt/cocoon/guest")), false, "no guest scripts are installed: the probe is in the bundle");
    const koffi = byName("koffi");
    assert.equal(koffi.level, "ok", koffi.detail);
    for (const name of ["cri handlers", "config cocoon", "shim binary", "guest assets"]) {
      const r = byName(name);
      assert.equal(r.level, "ok", `${name}: ${r.detail}`);
    }
    assert.match(byName("guest assets").detail, new RegExp(`^${at("share/cocoon/vmlinux")}`));
  });

  it("names the QEMU it found", () => {
    const q = byName("qemu");
    assert.equal(q.level, "ok", q.detail);
    assert.match(q.detail, /^QEMU emulator version \d+\.\d+/);
  });

  it("ran the accelerator probe: KVM, or TCG with the reason and a real TCG boot of the installed kernel", (t) => {
    const k = byName("kvm");
    t.diagnostic(`${k.level.toUpperCase()} kvm ${k.detail}`);
    const vmConfig = readFileSync(at("etc/cocoon/cocoon-vm.toml"), "utf8");
    assert.match(vmConfig, /^accel = "auto"$/m, "the shipped VM config probes");
    const device = kvmDeviceProblem();
    if (k.detail.startsWith("kvm ")) {
      assert.equal(device, undefined, "KVM reported without a usable /dev/kvm");
      assert.equal(k.level, "ok");
      assert.match(k.detail, /^kvm \(the guest kernel booted under KVM in \d+ ms\)$/);
      return;
    }
    // A TCG verdict names why KVM is out: this host's device problem, or how the KVM boot went.
    const why = device ? device.reason.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&") : "(QEMU exited under KVM: .+|the guest kernel did not finish booting under KVM within \\d+ ms)";
    assert.match(k.detail, new RegExp(`^tcg \\(no KVM: ${why}\\); the guest kernel booted under TCG in \\d+ ms; VMs run under TCG emulation`));
    assert.equal(k.level, "warn");
    assert.match(k.fix, device?.problem === "absent" ? /enable virtualisation/ : /./);
  });
});
