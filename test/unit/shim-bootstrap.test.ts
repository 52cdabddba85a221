import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { AnySchema } from "@bufbuild/protobuf/wkt";
import { parseShimFlags, FlagError } from "../../src/shim/flags.js";
import { socketPath } from "../../src/shim/address.js";
import { daemonSocket, decodeOptionsEnv, encodeOptions, parseStartInput, startReply } from "../../src/shim/bootstrap.js";
import { groupOf } from "../../src/shim/start-protocol.js";
import { BootstrapParamsSchema, BootstrapResultSchema } from "../../src/gen/containerd/runtime/bootstrap/v1/bootstrap_pb.js";
import { fromBinary } from "@bufbuild/protobuf";
import { decodeOptionsAny, resolveConfig } from "../../src/shim/options.js";
import { parseConfig, defaultConfig } from "../../src/shim/config.js";
import { OptionsSchema as RuncOptions } from "../../src/gen/containerd/runc/options/oci_pb.js";
import { OptionsSchema as GenericOptions } from "../../src/gen/containerd/runtimeoptions/v1/api_pb.js";
import { ShimError } from "../../src/core/errors.js";
import { registerModes } from "../../src/shim/modes.js";
import { MODES } from "../../src/runtime/modes.js";
import { settingsFor } from "../../src/shim/config.js";
import type { VmConfig } from "../../src/runtime/vm/settings.js";
import { containerSettings, type RuncSettings } from "../../src/runtime/runc/settings.js";
registerModes(MODES);

test("parses containerd 1.6 start and delete argv", () => {
  const f = parseShimFlags(["-namespace", "default", "-address", "/run/containerd/containerd.sock", "-publish-binary", "/usr/bin/containerd", "-id", "probe1", "start"]);
  assert.deepEqual([f.namespace, f.address, f.publishBinary, f.id, f.action, f.debug], ["default", "/run/containerd/containerd.sock", "/usr/bin/containerd", "probe1", "start", false]);
  const d = parseShimFlags(["-namespace=k8s.io", "--address", "/a", "-id", "x", "-bundle", "/b", "-debug", "delete"]);
  assert.deepEqual([d.namespace, d.bundle, d.debug, d.action], ["k8s.io", "/b", true, "delete"]);
  assert.equal(parseShimFlags(["-v"]).version, true);
  assert.throws(() => parseShimFlags(["-nosuch", "x"]), FlagError);
  assert.throws(() => parseShimFlags(["-id"]), FlagError);
});

test("socket names follow containerd's sha256(address/ns/group) rule", () => {
  const want = createHash("sha256").update("/run/containerd/containerd.sock/default/probe1").digest("hex");
  assert.equal(want, "dc7bf9183bb2efe907527d8b5c3681c5c43e1212adb1142ab1529db78a2e1e92");
  assert.equal(socketPath("/run/containerd/containerd.sock", ["default", "probe1"]), `/run/containerd/s/${want}`);
  assert.equal(socketPath("/run/containerd/containerd.sock", ["default", "probe1"], "/tmp/s"), `/tmp/s/${want}`);
});

test("containers of one pod share a daemon; node grouping shares one per config", () => {
  const flags = parseShimFlags(["-namespace", "k8s.io", "-address", "/c.sock", "-id", "app1", "start"]);
  const cfg = defaultConfig();
  assert.equal(groupOf({ "io.kubernetes.cri.sandbox-id": "pod1" }, "app1"), "pod1");
  assert.equal(groupOf(undefined, "app1"), "app1");
  const a = daemonSocket(flags, cfg, { "io.kubernetes.cri.sandbox-id": "pod1" });
  const b = daemonSocket({ ...flags, id: "app2" }, cfg, { "io.kubernetes.cri.sandbox-id": "pod1" });
  const c = daemonSocket({ ...flags, id: "lonely" }, cfg, {});
  assert.equal(a, b);
  assert.notEqual(a, c);
  const node = { ...cfg, grouping: "node" as const };
  assert.equal(daemonSocket(flags, node, { "io.kubernetes.cri.sandbox-id": "p1" }), daemonSocket({ ...flags, id: "z" }, node, {}));
  assert.notEqual(daemonSocket(flags, node, {}), daemonSocket(flags, { ...node, mode: "vm" }, {}));
});

test("runtime options: runc options override runc mode's settings per container, generic options select the config file", () => {
  const value = toBinary(RuncOptions, create(RuncOptions, { binaryName: "crun", root: "/run/x", noNewKeyring: true, ioUid: 1000, ioGid: 1001 }));
  const runc = toBinary(AnySchema, create(AnySchema, { typeUrl: "containerd.runc.v1.Options", value }));
  const o = decodeOptionsAny(runc);
  assert.equal(o.kind, "runc");
  // The config does not change: runc mode applies the options to each container it creates.
  const base = settingsFor<RuncSettings>(resolveConfig(o, {}), "runc");
  assert.equal(base.binary, "runc");
  const { runc: s, ioOwner } = containerSettings(base, { typeUrl: "containerd.runc.v1.Options", value });
  assert.deepEqual([s.binary, s.root, s.noNewKeyring, s.systemdCgroup], ["crun", "/run/x", true, false]);
  assert.deepEqual(ioOwner, { uid: 1000, gid: 1001 });
  assert.deepEqual(containerSettings(base, undefined), { runc: base });
  const generic = toBinary(AnySchema, create(AnySchema, {
    typeUrl: "runtimeoptions.v1.Options",
    value: toBinary(GenericOptions, create(GenericOptions, { configBody: new TextEncoder().encode('mode = "runc"\ngrouping = "node"\n') })),
  }));
  assert.equal(resolveConfig(decodeOptionsAny(generic), {}).grouping, "node");
  assert.equal(decodeOptionsAny(new Uint8Array()).kind, "none");
  assert.throws(() => decodeOptionsAny(new Uint8Array([0xff, 0xff, 0xff])), (e: ShimError) => e.kind === "InvalidArgument");
  const other = toBinary(AnySchema, create(AnySchema, { typeUrl: "foo.Bar", value: new Uint8Array() }));
  assert.throws(() => decodeOptionsAny(other), (e: ShimError) => e.kind === "InvalidArgument" && /unsupported runtime options/.test(e.message));
  assert.throws(() => resolveConfig({ kind: "generic", configPath: "/nonexistent/cocoon.toml", configBody: new Uint8Array() }, {}),
    (e: ShimError) => e.kind === "InvalidArgument" && /nonexistent/.test(e.message));
});

test("config: defaults, validation, unknown keys are errors", () => {
  const c = parseConfig('mode = "vm"\n[vm]\nvcpus = 2\nmemory_mib = 256\n', "t.toml");
  assert.equal(c.mode, "vm");
  assert.equal(settingsFor<VmConfig>(c, "vm").vcpus, 2);
  assert.equal(settingsFor<RuncSettings>(c, "runc").binary, "runc");
  assert.throws(() => parseConfig('mode = "vmm"', "t.toml"), /mode must be one of/);
  assert.throws(() => parseConfig('mdoe = "vm"', "t.toml"), /unknown key "mdoe"/);
  assert.throws(() => parseConfig("[vm]\nvcpus = 0", "t.toml"), /vcpus/);
  assert.throws(() => parseConfig("mode = ", "t.toml"), (e: ShimError) => e.kind === "InvalidArgument");
});

test("config: vm.shared_fs is gone, but an old file's shared_fs = \"9p\" still loads", () => {
  const c = parseConfig('mode = "vm"\n[vm]\nshared_fs = "9p"\n', "old.toml");
  assert.equal(c.mode, "vm");
  assert.ok(!("sharedFs" in settingsFor<VmConfig>(c, "vm")));
  for (const v of ['"virtio-fs"', '"9P"', "9"]) {
    assert.throws(
      () => parseConfig(`[vm]\nshared_fs = ${v}\n`, "t.toml"),
      (e: ShimError) => e.kind === "InvalidArgument" && /vm\.shared_fs is no longer an option .*9p/.test(e.message),
    );
  }
});

test("config: spare_daemons defaults to one, 0 disables, anything but a small integer is an error", () => {
  assert.equal(defaultConfig().spareDaemons, 1);
  assert.equal(parseConfig("", "t.toml").spareDaemons, 1);
  assert.equal(parseConfig("spare_daemons = 0", "t.toml").spareDaemons, 0);
  assert.equal(parseConfig('grouping = "pod"\nspare_daemons = 3', "t.toml").spareDaemons, 3);
  assert.throws(() => parseConfig("spare_daemons = -1", "t.toml"), /spare_daemons must be an integer from 0 to 8/);
  assert.throws(() => parseConfig("spare_daemons = 1.5", "t.toml"), /spare_daemons/);
  assert.throws(() => parseConfig("spare_daemons = 100", "t.toml"), /spare_daemons/);
  assert.throws(() => parseConfig('spare_daemons = "1"', "t.toml"), /"spare_daemons" must be a number/);
  assert.throws(() => parseConfig("[runc]\nspare_daemons = 1", "t.toml"), /unknown key "runc.spare_daemons"/);
});

test("containerd 2.x bootstrap: protobuf params in, protobuf result out; 1.6 stays plain", () => {
  const flags = parseShimFlags(["-namespace", "k8s.io", "-address", "/c.sock", "-id", "c1", "start"]);
  const opts = create(AnySchema, {
    typeUrl: "type.googleapis.com/runtimeoptions.v1.Options",
    value: toBinary(GenericOptions, create(GenericOptions, { configPath: "/etc/cocoon/x.toml" })),
  });
  const params = toBinary(BootstrapParamsSchema, create(BootstrapParamsSchema, {
    instanceId: "c1", namespace: "k8s.io", containerdTtrpcAddress: "unix:///run/c.sock.ttrpc", socketDir: "/run/x/s",
    extensions: [{ value: opts }],
  }));
  const input = parseStartInput(params, flags);
  assert.equal(input.protocol, "bootstrap-v1");
  assert.equal(input.ttrpcAddress, "/run/c.sock.ttrpc");
  assert.equal(input.socketDir, "/run/x/s");
  assert.deepEqual(input.options, { kind: "generic", configPath: "/etc/cocoon/x.toml", configBody: new Uint8Array() });
  const reply = startReply(input, "unix:///run/x/s/abc");
  assert.ok(reply instanceof Uint8Array);
  const res = fromBinary(BootstrapResultSchema, reply as Uint8Array);
  assert.deepEqual([res.version, res.address, res.protocol], [2, "unix:///run/x/s/abc", "ttrpc"]);

  // containerd 1.6: the bare options Any; an Any never matches our id/namespace, so it stays legacy.
  const legacy = toBinary(AnySchema, opts);
  const l = parseStartInput(legacy, flags);
  assert.equal(l.protocol, "legacy");
  assert.equal(l.options.kind, "generic");
  assert.equal(startReply(l, "unix:///x"), "unix:///x");
  assert.equal(parseStartInput(new Uint8Array(), flags).protocol, "legacy");
  // Params for another container are not ours: treated as legacy options, which then fail clearly.
  const other = toBinary(BootstrapParamsSchema, create(BootstrapParamsSchema, { instanceId: "zz", namespace: "k8s.io" }));
  assert.throws(() => parseStartInput(other, flags), (e: ShimError) => e.kind === "InvalidArgument");
});

test("the daemon receives the decoded options intact", () => {
  const o = { kind: "generic" as const, configPath: "/a", configBody: new Uint8Array([1, 2, 3]) };
  assert.deepEqual(decodeOptionsEnv(encodeOptions(o)), o);
  assert.deepEqual(decodeOptionsEnv(undefined), { kind: "none" });
});

import { readBootstrapParams, readRuncOptions, readGenericOptions, writeBootstrapResult } from "../../src/shim/options-wire.js";
test("the start path's wire decoders agree with the generated ones", () => {
  const runc = create(RuncOptions, { noPivotRoot: true, noNewKeyring: true, shimCgroup: "/s", ioUid: 7, ioGid: 8, binaryName: "crun", root: "/r", criuPath: "/c", systemdCgroup: true, criuImagePath: "/x" });
  const w = readRuncOptions(toBinary(RuncOptions, runc));
  assert.deepEqual(w, { noPivotRoot: true, noNewKeyring: true, shimCgroup: "/s", ioUid: 7, ioGid: 8, binaryName: "crun", root: "/r", criuPath: "/c", systemdCgroup: true });
  const gen = create(GenericOptions, { typeUrl: "t", configPath: "/p", configBody: new Uint8Array([1, 2]) });
  assert.deepEqual(readGenericOptions(toBinary(GenericOptions, gen)), { typeUrl: "t", configPath: "/p", configBody: new Uint8Array([1, 2]) });
  const params = create(BootstrapParamsSchema, {
    instanceId: "i", namespace: "n", logLevel: -4, containerdVersion: "2.3", containerdTtrpcAddress: "t", containerdGrpcAddress: "g", containerdBinary: "b",
    extensions: [{ value: { typeUrl: "u", value: new Uint8Array([9]) } }], socketDir: "/sd",
  });
  assert.deepEqual(readBootstrapParams(toBinary(BootstrapParamsSchema, params)), {
    instanceId: "i", namespace: "n", logLevel: -4, containerdTtrpcAddress: "t", containerdGrpcAddress: "g", containerdBinary: "b",
    extensions: [{ typeUrl: "u", value: new Uint8Array([9]) }], socketDir: "/sd",
  });
  const res = fromBinary(BootstrapResultSchema, writeBootstrapResult(2, "unix:///a", "ttrpc"));
  assert.deepEqual([res.version, res.address, res.protocol], [2, "unix:///a", "ttrpc"]);
});
