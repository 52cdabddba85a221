// The containerd config edit: exact round trips, idempotence, refusals, and what real containerd makes of it.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseToml } from "smol-toml";
import {
  BEGIN_MARKER,
  CREATED_HEADER,
  ContainerdConfigError,
  END_MARKER,
  cocoonRuntimes,
  criRuntimes,
  mergeContainerdConfig,
  renderRuntimeTables,
  unmergeContainerdConfig,
} from "../../src/cli/install/containerd-config.js";
import { verifyWithContainerd } from "../../src/cli/install/install.js";
import { makeLayout } from "../../src/cli/install/layout.js";

const HERE = new URL(".", import.meta.url).pathname;
const REPO = HERE.includes("/dist/js/") ? HERE.slice(0, HERE.indexOf("/dist/js/")) : join(HERE, "..", "..");

/** A realistic config: runc with options, a custom kata runtime, registry settings, a debug section. No final newline. */
export const FIXTURE = `version = 2
root = "/srv/fixture/containerd/root"
state = "/srv/fixture/containerd/state"
oom_score = 0

[debug]
  level = "debug"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      snapshotter = "overlayfs"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            SystemdCgroup = true
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
          runtime_type = "io.containerd.kata.v2"
          privileged_without_host_devices = true
          pod_annotations = ["io.katacontainers.*"]
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata.options]
            ConfigPath = "/opt/kata/share/defaults/kata-containers/configuration.toml"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/srv/fixture/opt"
# a last comment, no newline after it`;

const RT = cocoonRuntimes();
type T = Record<string, any>;
const plain = (v: unknown) => JSON.parse(JSON.stringify(v));

test("install then uninstall restores the original bytes", () => {
  for (const original of [FIXTURE, FIXTURE + "\n", FIXTURE.replace(/\n/g, "\r\n") + "\r\n", "version = 2\n", "version = 2"]) {
    const m = mergeContainerdConfig(original, RT);
    assert.ok(m.text.startsWith(original));
    assert.equal(m.created, false);
    assert.equal(m.unchanged, false);
    const u = unmergeContainerdConfig(m.text);
    assert.equal(u.removed, true);
    assert.equal(u.text, original);
  }
});

test("the merged config has our runtimes and keeps everything else", () => {
  const m = mergeContainerdConfig(FIXTURE, RT);
  assert.equal(m.addedDefaultRunc, false);
  const doc = parseToml(m.text) as T;
  const cri = doc["plugins"]["io.containerd.grpc.v1.cri"];
  assert.equal(cri.sandbox_image, "registry.k8s.io/pause:3.9");
  assert.equal(cri.registry.config_path, "/etc/containerd/certs.d");
  assert.equal(cri.containerd.runtimes.runc.options.SystemdCgroup, true);
  assert.equal(cri.containerd.runtimes.kata.runtime_type, "io.containerd.kata.v2");
  assert.deepEqual(plain(cri.containerd.runtimes.cocoon), {
    runtime_type: "io.containerd.cocoon.v2",
    pod_annotations: ["io.cocoon.*"],
    privileged_without_host_devices: true,
    options: { ConfigPath: "/etc/cocoon/cocoon-vm.toml" },
  });
  assert.deepEqual(plain(cri.containerd.runtimes["cocoon-runc"]), {
    runtime_type: "io.containerd.cocoon.v2",
    pod_annotations: ["io.cocoon.*"],
    options: { ConfigPath: "/etc/cocoon/cocoon-runc.toml" },
  });
  assert.equal(doc["debug"].level, "debug");
  const block = m.text.slice(FIXTURE.length);
  assert.ok(block.startsWith(`\n${BEGIN_MARKER}\n`));
  assert.ok(block.endsWith(`${END_MARKER}\n`));
});

test("installing twice is the same as once", () => {
  const once = mergeContainerdConfig(FIXTURE, RT);
  const twice = mergeContainerdConfig(once.text, RT);
  assert.equal(twice.text, once.text);
  assert.equal(twice.unchanged, true);
  assert.equal(unmergeContainerdConfig(twice.text).text, FIXTURE);
});

test("a re-install with other paths replaces the block in place and keeps text added after it", () => {
  const once = mergeContainerdConfig(FIXTURE, RT).text;
  const edited = once + "\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n";
  const again = mergeContainerdConfig(edited, cocoonRuntimes("/srv/cocoon"));
  assert.match(again.text, /ConfigPath = "\/srv\/cocoon\/cocoon-vm.toml"/);
  assert.doesNotMatch(again.text, /\/etc\/cocoon\//);
  assert.ok(again.text.endsWith('bin_dir = "/usr/lib/cni"\n'));
  assert.equal(unmergeContainerdConfig(again.text).text, FIXTURE + "\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n");
});

test("without any runtimes the block restates containerd's default runc runtime", () => {
  const original = 'version = 2\n\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "x/pause:1"\n';
  const m = mergeContainerdConfig(original, RT);
  assert.equal(m.addedDefaultRunc, true);
  const rts = criRuntimes(parseToml(m.text) as T);
  assert.deepEqual(rts.map((r) => r.name).sort(), ["cocoon", "cocoon-gvisor", "cocoon-runc", "runc"]);
  assert.equal(rts.find((r) => r.name === "runc")!.runtimeType, "io.containerd.runc.v2");
  assert.equal(unmergeContainerdConfig(m.text).text, original);
});

test("no config file: a minimal version 2 config is written, and uninstall deletes it", () => {
  const m = mergeContainerdConfig(undefined, RT);
  assert.equal(m.created, true);
  assert.ok(m.text.startsWith(CREATED_HEADER));
  assert.equal((parseToml(m.text) as T)["version"], 2);
  assert.equal(unmergeContainerdConfig(m.text).text, undefined);
  assert.equal(mergeContainerdConfig(m.text, RT).unchanged, true);
});

test("uninstall without our block changes nothing", () => {
  assert.deepEqual(unmergeContainerdConfig(FIXTURE), { text: FIXTURE, removed: false });
});

function refuses(text: string | undefined, re: RegExp) {
  assert.throws(() => mergeContainerdConfig(text, RT), (e: unknown) => e instanceof ContainerdConfigError && re.test(e.message));
}

test("refusals: config version 1, version 3, our runtimes defined elsewhere, damaged block, bad TOML", () => {
  refuses('[plugins.cri]\n  sandbox_image = "x"\n', /config version 1/);
  refuses("version = 1\n", /config version 1/);
  refuses("version = 3\n", /version = 3/);
  refuses(FIXTURE + '\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon]\n  runtime_type = "x"\n', /already defines runtime "cocoon"/);
  refuses('version = 2\nplugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon-runc.runtime_type = "x"\n', /already defines runtime "cocoon-runc"/);
  refuses(`version = 2\n${BEGIN_MARKER}\n`, /damaged/);
  refuses(`version = 2\n${END_MARKER}\n${BEGIN_MARKER}\n`, /damaged/);
  refuses("version = 2\n[oops\n", /not valid TOML/);
  // An inline runtimes table cannot be extended by appending tables.
  refuses('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  runtimes = { runc = { runtime_type = "io.containerd.runc.v2" } }\n', /not valid TOML|did not take effect/);
});

test("a disabled CRI plugin is a warning, not a refusal", () => {
  const m = mergeContainerdConfig('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n', RT);
  assert.ok(m.warnings.some((w) => /disabled_plugins/.test(w)));
});

test("deploy/containerd/cocoon.toml holds exactly the tables install adds", () => {
  const shipped = parseToml(readFileSync(join(REPO, "deploy", "containerd", "cocoon.toml"), "utf8"));
  assert.deepEqual(shipped, parseToml(renderRuntimeTables(RT)));
});

// ---- With the real containerd 1.6: `config dump` parses the file as the daemon would, without starting it.

const HAVE_CONTAINERD = (() => {
  try {
    execFileSync("containerd", ["--version"], { stdio: "ignore", timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
})();

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "cocoon-ctrd-cfg-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function dump(path: string): T {
  return parseToml(execFileSync("containerd", ["--config", path, "config", "dump"], { encoding: "utf8", timeout: 30_000 })) as T;
}

test("containerd config dump of the merged fixture shows our runtimes and everything the fixture had", { skip: !HAVE_CONTAINERD && "containerd not installed" }, () => {
  const path = join(dir, "config.toml");
  writeFileSync(path, mergeContainerdConfig(FIXTURE, RT).text);
  const d = dump(path);
  const cri = d["plugins"]["io.containerd.grpc.v1.cri"];
  const rts = cri.containerd.runtimes;
  assert.equal(rts.cocoon.runtime_type, "io.containerd.cocoon.v2");
  assert.equal(rts.cocoon.options.ConfigPath, "/etc/cocoon/cocoon-vm.toml");
  assert.deepEqual(rts.cocoon.pod_annotations, ["io.cocoon.*"]);
  assert.equal(rts.cocoon.privileged_without_host_devices, true);
  assert.equal(rts["cocoon-runc"].options.ConfigPath, "/etc/cocoon/cocoon-runc.toml");
  assert.equal(rts.runc.runtime_type, "io.containerd.runc.v2");
  assert.equal(rts.runc.options.SystemdCgroup, true);
  assert.equal(rts.kata.runtime_type, "io.containerd.kata.v2");
  assert.equal(rts.kata.options.ConfigPath, "/opt/kata/share/defaults/kata-containers/configuration.toml");
  assert.equal(cri.registry.config_path, "/etc/containerd/certs.d");
  assert.equal(cri.sandbox_image, "registry.k8s.io/pause:3.9");
  assert.equal(d["debug"].level, "debug");
  assert.equal(d["plugins"]["io.containerd.internal.v1.opt"].path, "/srv/fixture/opt");
});

test("containerd config dump of a new minimal config keeps the default runc runtime", { skip: !HAVE_CONTAINERD && "containerd not installed" }, () => {
  const path = join(dir, "minimal.toml");
  writeFileSync(path, mergeContainerdConfig(undefined, RT).text);
  const rts = dump(path)["plugins"]["io.containerd.grpc.v1.cri"].containerd.runtimes;
  assert.deepEqual(Object.keys(rts).sort(), ["cocoon", "cocoon-gvisor", "cocoon-runc", "runc"]);
});

test("containerd 1.6: an imports drop-in replaces the main file's CRI table (why install edits the main file)", { skip: !HAVE_CONTAINERD && "containerd not installed" }, () => {
  const dropin = join(dir, "dropin.toml");
  writeFileSync(dropin, "version = 2\n" + renderRuntimeTables(RT));
  const main = join(dir, "with-imports.toml");
  writeFileSync(main, FIXTURE.replace("version = 2\n", `version = 2\nimports = [${JSON.stringify(dropin)}]\n`));
  const cri = dump(main)["plugins"]["io.containerd.grpc.v1.cri"];
  assert.ok(cri.containerd.runtimes.cocoon, "the drop-in's runtime is there");
  // …but the main file's CRI settings are gone. If containerd ever merges instead, revisit the approach.
  assert.equal(cri.containerd.runtimes.kata, undefined);
  assert.notEqual(cri.sandbox_image, "registry.k8s.io/pause:3.9");
  assert.notEqual(cri.registry.config_path, "/etc/containerd/certs.d");
});

test("verifyWithContainerd accepts the merged config and reports a missing runtime", { skip: !HAVE_CONTAINERD && "containerd not installed" }, async () => {
  const layout = makeLayout();
  const good = join(dir, "good.toml");
  writeFileSync(good, mergeContainerdConfig(FIXTURE, RT).text);
  assert.equal(await verifyWithContainerd(layout, good, RT), undefined);
  const bad = join(dir, "bad.toml");
  writeFileSync(bad, FIXTURE);
  assert.match((await verifyWithContainerd(layout, bad, RT)) ?? "", /does not see runtime "cocoon(-runc)?"/);
  assert.ok(!existsSync(join(dir, "root")));
});
