// The CRI subset must be wire-identical to upstream runtime.v1: encode/decode with field numbers checked byte by byte.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import {
  ContainerConfigSchema,
  ContainerStatsSchema,
  ContainerStatusSchema,
  ContainerState,
  ExecSyncRequestSchema,
  ExecSyncResponseSchema,
  ImageService,
  LinuxPodSandboxConfigSchema,
  NamespaceMode,
  PodSandboxStatusResponseSchema,
  RunPodSandboxRequestSchema,
  RuntimeService,
  VersionResponseSchema,
} from "../../src/gen/cri/runtime/v1/api_pb.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const ascii = (s: string) => Buffer.from(s).toString("hex");
function encode<D extends DescMessage>(schema: D, init: MessageInitShape<D>): string {
  return hex(toBinary(schema, create(schema, init)));
}

test("RunPodSandboxRequest.runtime_handler is field 2", () => {
  assert.equal(encode(RunPodSandboxRequestSchema, { runtimeHandler: "cocoon" }), "1206" + ascii("cocoon"));
});

test("PodSandboxConfig.metadata fields 1-4 nest under RunPodSandboxRequest.config (field 1)", () => {
  const got = encode(RunPodSandboxRequestSchema, { config: { metadata: { name: "p", uid: "u", namespace: "n", attempt: 1 } } });
  const meta = "0a0170" + "120175" + "1a016e" + "2001";
  assert.equal(got, "0a0d" + "0a0b" + meta);
  const back = fromBinary(RunPodSandboxRequestSchema, Buffer.from(got, "hex"));
  assert.equal(back.config?.metadata?.namespace, "n");
  assert.equal(back.config?.metadata?.attempt, 1);
});

test("PodSandboxConfig log_directory (3), labels (6) as map entries, linux (8)", () => {
  const got = encode(RunPodSandboxRequestSchema, { config: { logDirectory: "/l", labels: { a: "b" }, linux: { cgroupParent: "/c" } } });
  // labels entry: key field 1, value field 2; linux.cgroup_parent field 1.
  const inner = "1a022f6c" + "3206" + "0a0161" + "120162" + "4204" + "0a022f63";
  assert.equal(got, "0a" + (inner.length / 2).toString(16).padStart(2, "0") + inner);
});

test("LinuxSandboxSecurityContext.namespace_options.network = NODE", () => {
  assert.equal(encode(LinuxPodSandboxConfigSchema, { securityContext: { namespaceOptions: { network: NamespaceMode.NODE } } }), "1204" + "0a02" + "0802");
  assert.equal(NamespaceMode.POD, 0);
  assert.equal(NamespaceMode.CONTAINER, 1);
  assert.equal(NamespaceMode.NODE, 2);
});

test("ContainerConfig: image (2), command (3), args (4), envs (6), log_path (11), tty (14), linux.resources (15.1)", () => {
  const got = encode(ContainerConfigSchema, {
    image: { image: "i" },
    command: ["c"],
    args: ["a"],
    envs: [{ key: "K", value: "V" }],
    logPath: "x",
    tty: true,
    linux: { resources: { memoryLimitInBytes: 1048576n, cpuQuota: 50000n, cpuPeriod: 100000n, cpuShares: 512n } },
  });
  const resources = "08a08d06" + "10d08603" + "188004" + "20808040";
  const r = resources.length / 2;
  const linux = "0a" + r.toString(16).padStart(2, "0") + resources;
  const want =
    "1203" + "0a0169" + "1a0163" + "220161" + "3206" + "0a014b" + "120156" + "5a0178" + "7001" +
    "7a" + (linux.length / 2).toString(16).padStart(2, "0") + linux;
  assert.equal(got, want);
});

test("ContainerConfig mounts (7): container_path 1, host_path 2, readonly 3, propagation 5", () => {
  const got = encode(ContainerConfigSchema, { mounts: [{ containerPath: "/c", hostPath: "/h", readonly: true, propagation: 2 }] });
  assert.equal(got, "3a0c" + "0a022f63" + "12022f68" + "1801" + "2802");
});

test("ExecSyncRequest encodes container_id 1, cmd 2 (repeated), timeout 3", () => {
  assert.equal(encode(ExecSyncRequestSchema, { containerId: "c", cmd: ["a", "b"], timeout: 5n }), "0a0163" + "120161" + "120162" + "1805");
});

test("ExecSyncResponse decodes stdout 1, stderr 2, exit_code 3", () => {
  const r = fromBinary(ExecSyncResponseSchema, Buffer.from("0a02" + ascii("hi") + "1201" + ascii("e") + "1807", "hex"));
  assert.equal(Buffer.from(r.stdout).toString(), "hi");
  assert.equal(Buffer.from(r.stderr).toString(), "e");
  assert.equal(r.exitCode, 7);
});

test("ContainerStatus decodes state 3, started_at 5, finished_at 6, exit_code 7, reason 10, message 11, log_path 15", () => {
  const bytes = "0a0169" + "1802" + "2864" + "30c801" + "3801" + "5206" + ascii("Error!") + "5a01" + ascii("m") + "7a01" + ascii("l");
  const s = fromBinary(ContainerStatusSchema, Buffer.from(bytes, "hex"));
  assert.equal(s.id, "i");
  assert.equal(s.state, ContainerState.CONTAINER_EXITED);
  assert.equal(s.startedAt, 100n);
  assert.equal(s.finishedAt, 200n);
  assert.equal(s.exitCode, 1);
  assert.equal(s.reason, "Error!");
  assert.equal(s.message, "m");
  assert.equal(s.logPath, "l");
});

test("ContainerStats decodes cpu.usage_core_nano_seconds (2.2) and memory.working_set_bytes (3.2)", () => {
  const s = fromBinary(ContainerStatsSchema, Buffer.from("1205" + "120308e807" + "1a05" + "1203088020", "hex"));
  assert.equal(s.cpu?.usageCoreNanoSeconds?.value, 1000n);
  assert.equal(s.memory?.workingSetBytes?.value, 4096n);
});

test("PodSandboxStatusResponse decodes status.network.ip (1.5.1)", () => {
  const ip = ascii("10.0.0.2");
  const s = fromBinary(PodSandboxStatusResponseSchema, Buffer.from("0a0c" + "2a0a" + "0a08" + ip, "hex"));
  assert.equal(s.status?.network?.ip, "10.0.0.2");
});

test("fields this subset leaves out are skipped when decoding", () => {
  // VersionResponse{runtime_name: "containerd"} followed by an unknown field 99 (varint).
  const bytes = "120a" + ascii("containerd") + "98060" + "1";
  const v = fromBinary(VersionResponseSchema, Buffer.from(bytes, "hex"));
  assert.equal(v.runtimeName, "containerd");
});

test("services carry the upstream names, so gRPC paths match containerd's", () => {
  assert.equal(RuntimeService.typeName, "runtime.v1.RuntimeService");
  assert.equal(ImageService.typeName, "runtime.v1.ImageService");
  const names = RuntimeService.methods.map((m) => m.name);
  for (const n of ["Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus", "ListPodSandbox", "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer", "ListContainers", "ContainerStatus", "ExecSync", "ContainerStats", "ListContainerStats", "UpdateContainerResources"]) {
    assert.ok(names.includes(n), n);
  }
  assert.deepEqual(ImageService.methods.map((m) => m.name).sort(), ["ImageStatus", "ListImages", "PullImage"]);
});
