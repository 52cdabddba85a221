// `cocoon install` / `uninstall` against a fake node root: what lands where, idempotence, exact undo.
import { afterEach, beforeEach, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseToml } from "smol-toml";
import { parseConfig } from "../../src/shim/config.js";
import { BACKUP_SUFFIX, install, uninstall, type InstallOptions } from "../../src/cli/install/install.js";
import { ContainerdConfigError, END_MARKER } from "../../src/cli/install/containerd-config.js";
import { PREFIX_MARKER, WRAPPER_MARKER, makeLayout, type InstallLayout } from "../../src/cli/install/layout.js";
import { registerModes } from "../../src/shim/modes.js";
import { MODES } from "../../src/runtime/modes.js";
import { settingsFor } from "../../src/shim/config.js";
import type { VmConfig } from "../../src/runtime/vm/settings.js";
registerModes(MODES);

const HERE = new URL(".", import.meta.url).pathname;
const REPO = HERE.includes("/dist/js/") ? HERE.slice(0, HERE.indexOf("/dist/js/")) : join(HERE, "..", "..");

const ORIGINAL = `version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[debug]
  level = "info"
`;

let dir: string;
let src: string;
let host: string;

/** A package tree shaped like a build: bundles, launchers, configs, koffi and guest assets (small stand-ins). */
function fakeSource(root: string) {
  const w = (p: string, text: string, mode = 0o644) => {
    mkdirSync(join(root, p, ".."), { recursive: true });
    writeFileSync(join(root, p), text);
    chmodSync(join(root, p), mode);
  };
  w("package.json", JSON.stringify({ name: "cocoon" }));
  w("dist/containerd-shim-cocoon-v2.cjs", "// shim bundle\n");
  w("dist/containerd-shim-cocoon-v2.cjs.map", "{}");
  w("dist/containerd-shim-cocoon-v2-full.cjs", "// full shim bundle\n");
  w("dist/cocoon-agent.cjs", "// agent bundle\n");
  w("dist/cocoon.cjs", "// cli bundle\n");
  w("dist/start-protocol.sh", "run=/run/cocoon\n");
  w("bin/containerd-shim-cocoon-v2", "#!/bin/sh\necho shim\n", 0o755);
  w("bin/cocoon", "#!/bin/sh\necho cli\n", 0o755);
  w("node_modules/koffi/package.json", '{"name":"koffi"}');
  w("node_modules/koffi/index.js", "js");
  w("node_modules/@koromix/koffi-linux-x64/linux_x64/koffi.node", "binary");
  w("guest/out/vmlinuz", "kernel");
  w("guest/out/initramfs.cpio.zst", "initrd");
  w("guest/out/initramfs-9p.cpio.zst", "initrd 9p");
  w("guest/out/kernel-config", "not installed");
  w("guest/out/manifest.json", JSON.stringify({ initramfs: { file: "initramfs.cpio.zst" } }));
  w("guest/out/rootfs/bin/busybox", "bb", 0o755);
  w("guest/out/rootfs.erofs", "image");
  symlinkSync("busybox", join(root, "guest/out/rootfs/bin/sh"));
  w("guest/out/cache/big.deb", "not installed");
  w("fake-node", "#!/bin/sh\n", 0o755);
  for (const c of MODES.map((m) => m.configFile)) {
    mkdirSync(join(root, "deploy/config"), { recursive: true });
    copyFileSync(join(REPO, "deploy/config", c), join(root, "deploy/config", c));
  }
}

/** Every path under root with its type, mode and content (symlink targets), for before/after comparisons. */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string) => {
    for (const name of readdirSync(p).sort()) {
      const full = join(p, name);
      const st = lstatSync(full);
      const rel = full.slice(root.length);
      if (st.isSymbolicLink()) out[rel] = `link ${readlinkSync(full)}`;
      else if (st.isDirectory()) {
        out[rel] = `dir ${(st.mode & 0o7777).toString(8)}`;
        walk(full);
      } else {
        // The prefix marker records the install time; only its presence matters.
        const content = name === PREFIX_MARKER ? "(marker)" : readFileSync(full, "utf8");
        out[rel] = `file ${(st.mode & 0o7777).toString(8)} ${content}`;
      }
    }
  };
  walk(root);
  return out;
}

function options(layout: InstallLayout, extra: Partial<InstallOptions> = {}): InstallOptions {
  return { layout, sourceRoot: src, nodeBinary: join(src, "fake-node"), verify: "never", labelNode: "never", log: () => {}, ...extra };
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "cocoon-install-"));
  src = join(dir, "src");
  host = join(dir, "host");
  fakeSource(src);
  mkdirSync(join(host, "etc/containerd"), { recursive: true });
  // Present on any real node; install does not remove parent directories it had to create.
  for (const d of ["usr/local/bin", "usr/local/share", "opt"]) mkdirSync(join(host, d), { recursive: true });
  writeFileSync(join(host, "etc/containerd/config.toml"), ORIGINAL, { mode: 0o600 });
  chmodSync(join(host, "etc/containerd/config.toml"), 0o600);
  writeFileSync(join(host, "usr/local/bin/other-tool"), "keep me");
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

test("install puts every piece in place below the host root", async () => {
  const layout = makeLayout({ hostRoot: host });
  const r = await install(options(layout));
  assert.equal(r.containerdConfigChanged, true);
  assert.equal(r.restart?.restarted, false);
  assert.match(r.restart!.message, /systemctl restart containerd/);
  const at = (p: string) => join(host, p);
  for (const p of [
    "opt/cocoon/dist/containerd-shim-cocoon-v2.cjs",
    "opt/cocoon/dist/containerd-shim-cocoon-v2.cjs.map",
    "opt/cocoon/dist/containerd-shim-cocoon-v2-full.cjs",
    "opt/cocoon/dist/cocoon-agent.cjs",
    "opt/cocoon/dist/cocoon.cjs",
    "opt/cocoon/dist/start-protocol.sh",
    "opt/cocoon/bin/containerd-shim-cocoon-v2",
    "opt/cocoon/bin/node",
    "opt/cocoon/node_modules/koffi/index.js",
    "opt/cocoon/node_modules/@koromix/koffi-linux-x64/linux_x64/koffi.node",
    "opt/cocoon/" + PREFIX_MARKER,
    "usr/local/share/cocoon/vmlinuz",
    "usr/local/share/cocoon/initramfs.cpio.zst",
    "usr/local/share/cocoon/initramfs-9p.cpio.zst",
    "usr/local/share/cocoon/rootfs/bin/busybox",
    "usr/local/share/cocoon/rootfs.erofs",
  ]) {
    assert.ok(existsSync(at(p)), p);
  }
  assert.equal(readlinkSync(at("usr/local/share/cocoon/rootfs/bin/sh")), "busybox");
  assert.ok(!existsSync(at("usr/local/share/cocoon/cache")));
  assert.ok(!existsSync(at("usr/local/share/cocoon/kernel-config")));
  // The wrapper uses node paths (no host-root prefix) and is executable.
  const wrapper = readFileSync(at("usr/local/bin/containerd-shim-cocoon-v2"), "utf8");
  assert.ok(wrapper.includes(WRAPPER_MARKER));
  assert.match(wrapper, /^exec \/opt\/cocoon\/bin\/containerd-shim-cocoon-v2 "\$@"$/m);
  assert.match(wrapper, /^PATH=\/opt\/cocoon\/bin:\$PATH$/m);
  assert.equal(lstatSync(at("usr/local/bin/containerd-shim-cocoon-v2")).mode & 0o777, 0o755);
  // Configs are valid for the shim.
  const vm = parseConfig(readFileSync(at("etc/cocoon/cocoon-vm.toml"), "utf8"), "vm");
  assert.equal(vm.mode, "vm");
  // The initrd is named as the guest build's manifest says.
  assert.equal(settingsFor<VmConfig>(vm, "vm").initrd, "/usr/local/share/cocoon/initramfs.cpio.zst");
  assert.equal(settingsFor<VmConfig>(vm, "vm").kernel, "/usr/local/share/cocoon/vmlinux");
  assert.equal(parseConfig(readFileSync(at("etc/cocoon/cocoon-runc.toml"), "utf8"), "runc").mode, "runc");
  // containerd config: original kept as a backup with its mode, our block appended.
  const cfg = readFileSync(at("etc/containerd/config.toml"), "utf8");
  assert.ok(cfg.startsWith(ORIGINAL));
  assert.ok(cfg.trimEnd().endsWith(END_MARKER));
  assert.equal(lstatSync(at("etc/containerd/config.toml")).mode & 0o777, 0o600);
  assert.equal(readFileSync(at("etc/containerd/config.toml" + BACKUP_SUFFIX), "utf8"), ORIGINAL);
  const doc = parseToml(cfg) as Record<string, any>;
  assert.equal(doc["plugins"]["io.containerd.grpc.v1.cri"].containerd.runtimes.cocoon.options.ConfigPath, "/etc/cocoon/cocoon-vm.toml");
});

test("installing twice leaves the same tree as installing once", async () => {
  const layout = makeLayout({ hostRoot: host });
  await install(options(layout));
  const once = snapshot(host);
  const r = await install(options(layout));
  assert.equal(r.containerdConfigChanged, false);
  assert.equal(r.restart, undefined);
  assert.deepEqual(snapshot(host), once);
});

test("uninstall after install restores the node exactly", async () => {
  const layout = makeLayout({ hostRoot: host });
  const before = snapshot(host);
  await install(options(layout));
  await install(options(layout));
  const r = await uninstall({ layout, sourceRoot: src, labelNode: "never", log: () => {} });
  assert.equal(r.containerdConfigChanged, true);
  assert.deepEqual(r.warnings, []);
  assert.deepEqual(snapshot(host), before);
  // Idempotent as well.
  const again = await uninstall({ layout, sourceRoot: src, labelNode: "never", log: () => {} });
  assert.equal(again.containerdConfigChanged, false);
  assert.deepEqual(snapshot(host), before);
});

test("without a containerd config, install writes one and uninstall deletes it", async () => {
  rmSync(join(host, "etc/containerd"), { recursive: true });
  const layout = makeLayout({ hostRoot: host });
  await install(options(layout));
  assert.ok(existsSync(join(host, "etc/containerd/config.toml")));
  assert.ok(!existsSync(join(host, "etc/containerd/config.toml" + BACKUP_SUFFIX)));
  await uninstall({ layout, sourceRoot: src, labelNode: "never", log: () => {} });
  assert.ok(!existsSync(join(host, "etc/containerd/config.toml")));
});

test("operator edits survive: changed Cocoon configs and foreign wrappers are kept", async () => {
  const layout = makeLayout({ hostRoot: host });
  writeFileSync(join(host, "usr/local/bin/cocoon"), "#!/bin/sh\n# someone else's cocoon\n");
  await install(options(layout));
  assert.equal(readFileSync(join(host, "usr/local/bin/cocoon"), "utf8"), "#!/bin/sh\n# someone else's cocoon\n");
  const vm = join(host, "etc/cocoon/cocoon-vm.toml");
  const edited = readFileSync(vm, "utf8").replace("memory_mib = 512", "memory_mib = 1024");
  writeFileSync(vm, edited);
  const r = await install(options(layout));
  assert.equal(readFileSync(vm, "utf8"), edited);
  assert.ok(r.warnings.some((w) => w.includes("cocoon-vm.toml") && w.includes("kept")));
  await install(options(layout, { overwriteConfig: true }));
  assert.match(readFileSync(vm, "utf8"), /memory_mib = 512/);
  writeFileSync(vm, edited);
  const u = await uninstall({ layout, sourceRoot: src, labelNode: "never", log: () => {} });
  assert.equal(readFileSync(vm, "utf8"), edited);
  assert.ok(u.warnings.some((w) => w.includes("cocoon-vm.toml")));
  assert.ok(existsSync(join(host, "usr/local/bin/cocoon")));
});

test("a moved asset dir is written into the VM config", async () => {
  const layout = makeLayout({ hostRoot: host, assetDir: "/srv/cocoon-assets" });
  await install(options(layout));
  const cfg = parseConfig(readFileSync(join(host, "etc/cocoon/cocoon-vm.toml"), "utf8"), "vm");
  assert.equal(settingsFor<VmConfig>(cfg, "vm").kernel, "/srv/cocoon-assets/vmlinux");
  assert.equal(settingsFor<VmConfig>(cfg, "vm").initrd, "/srv/cocoon-assets/initramfs.cpio.zst");
  assert.ok(existsSync(join(host, "srv/cocoon-assets/vmlinuz")));
});

test("dry runs change nothing", async () => {
  const layout = makeLayout({ hostRoot: host });
  const before = snapshot(host);
  const r = await install(options(layout, { dryRun: true }));
  assert.ok(r.actions.length > 5 && r.actions.every((a) => a.startsWith("would ")));
  assert.deepEqual(snapshot(host), before);
  await install(options(layout));
  const installed = snapshot(host);
  await uninstall({ layout, sourceRoot: src, labelNode: "never", dryRun: true, log: () => {} });
  assert.deepEqual(snapshot(host), installed);
});

test("a refused containerd config stops install before anything is copied", async () => {
  writeFileSync(join(host, "etc/containerd/config.toml"), '[plugins.cri]\n  sandbox_image = "x"\n');
  const before = snapshot(host);
  await assert.rejects(install(options(makeLayout({ hostRoot: host }))), (e: unknown) => e instanceof ContainerdConfigError && /version 1/.test(e.message));
  assert.deepEqual(snapshot(host), before);
});

test("a missing build is an error (but only a warning in a dry run)", async () => {
  rmSync(join(src, "dist"), { recursive: true });
  await assert.rejects(install(options(makeLayout({ hostRoot: host }))), /npm run build/);
  const r = await install(options(makeLayout({ hostRoot: host }), { dryRun: true }));
  assert.ok(r.warnings.some((w) => /npm run build/.test(w)));
});

test("consent decides about the restart; uninstall --label-only touches no files", async () => {
  const layout = makeLayout({ hostRoot: host });
  const calls: boolean[] = [];
  const restart = async (consent: boolean) => {
    calls.push(consent);
    return { restarted: consent, message: consent ? "restarted" : "not restarted" };
  };
  const r = await install(options(layout, { restartContainerd: true, restart }));
  assert.deepEqual(calls, [true]);
  assert.equal(r.restart?.restarted, true);
  const installed = snapshot(host);
  await uninstall({ layout, labelOnly: true, labelNode: "never", restart, log: () => {} });
  assert.deepEqual(snapshot(host), installed);
  assert.deepEqual(calls, [true]);
});

const HAVE_CONTAINERD = (() => {
  try {
    execFileSync("containerd", ["--version"], { stdio: "ignore", timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
})();

test("with host root / and every path overridden, install verifies with containerd config dump", { skip: !HAVE_CONTAINERD && "containerd not installed" }, async () => {
  const layout = makeLayout({
    prefix: join(host, "opt/cocoon"),
    binDir: join(host, "usr/local/bin"),
    configDir: join(host, "etc/cocoon"),
    assetDir: join(host, "share"),
    containerdConfig: join(host, "etc/containerd/config.toml"),
  });
  const actions: string[] = [];
  await install(options(layout, { verify: "always", log: (l) => actions.push(l) }));
  assert.ok(actions.some((a) => /containerd config dump: ok/.test(a)), actions.join("\n"));
  assert.ok(!existsSync(join(host, "etc/containerd/config.toml.cocoon-verify")));
  const cfg = readFileSync(join(host, "etc/containerd/config.toml"), "utf8");
  assert.ok(cfg.includes(`ConfigPath = "${join(host, "etc/cocoon/cocoon-vm.toml")}"`));
});
