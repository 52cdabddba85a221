import { test } from "node:test";
import assert from "node:assert/strict";
import { MountPropagation, NamespaceMode } from "../../src/gen/cri/runtime/v1/api_pb.js";
import { PodSpecError, parsePodSpec, toCriConfigs, validatePodSpec } from "../../src/cli/cri/pod-spec.js";

const YAML_SPEC = `
name: web
namespace: demo
runtimeHandler: cocoon
annotations:
  io.cocoon.example: "1"
containers:
  - name: app
    image: docker.io/library/busybox:1.36
    command: [sh, -c]
    args: ["echo hi; sleep 1"]
    env:
      GREETING: hello
      PORT: 8080
    workingDir: /tmp
    mounts:
      - {hostPath: /srv/data, containerPath: /data, readOnly: true}
    resources: {memoryLimitBytes: 134217728, cpuQuota: 50000, cpuPeriod: 100000, cpuShares: 512}
  - name: side
    image: busybox
    env: [{name: A, value: b}]
    tty: true
`;

function problems(doc: unknown): string[] {
  try {
    validatePodSpec(doc, "t");
  } catch (e) {
    assert.ok(e instanceof PodSpecError);
    return e.problems;
  }
  assert.fail("expected a PodSpecError");
}

test("a YAML spec parses with defaults filled in", () => {
  const s = parsePodSpec(YAML_SPEC, "web.yaml");
  assert.equal(s.name, "web");
  assert.equal(s.namespace, "demo");
  assert.equal(s.runtimeHandler, "cocoon");
  assert.equal(s.hostNetwork, false);
  assert.deepEqual(s.containers[0]!.env, [
    { name: "GREETING", value: "hello" },
    { name: "PORT", value: "8080" },
  ]);
  assert.deepEqual(s.containers[0]!.mounts, [{ hostPath: "/srv/data", containerPath: "/data", readOnly: true }]);
  assert.deepEqual(s.containers[1]!.env, [{ name: "A", value: "b" }]);
  assert.equal(s.containers[1]!.tty, true);
  assert.deepEqual(s.containers[1]!.resources, {});
});

test("JSON is accepted too; namespace defaults to default", () => {
  const s = parsePodSpec(JSON.stringify({ name: "p", containers: [{ name: "c", image: "i" }] }));
  assert.equal(s.namespace, "default");
  assert.equal(s.runtimeHandler, "");
});

test("every problem is reported with its location", () => {
  const got = problems({
    name: "Bad_Name",
    runtimeHandler: "x y",
    hostNetwork: "yes",
    extra: 1,
    containers: [
      { name: "c", image: "" },
      { name: "c", image: "i", mounts: [{ hostPath: "rel", containerPath: "/x" }], resources: { memoryLimitBytes: -1, cpuPeriod: 10 }, env: { "1BAD": "x" }, commnd: ["typo"] },
      "nope",
    ],
  });
  const want = [
    "extra: unknown field",
    'name: "Bad_Name" is not a DNS subdomain',
    'runtimeHandler: "x y" is not a DNS label',
    "hostNetwork: must be true or false",
    "containers[0].image: must not be empty",
    "containers[1].commnd: unknown field",
    "containers[1].env.1BAD: invalid variable name",
    "containers[1].mounts[0].hostPath: must be an absolute path",
    "containers[1].resources.memoryLimitBytes: must be an integer >= 0",
    "containers[1].resources.cpuPeriod: must be between 1000 and 1000000",
    'containers[1].name: duplicate container name "c"',
    "containers[2]: must be a map",
  ];
  for (const w of want) assert.ok(got.some((p) => p.startsWith(w)), `missing "${w}" in:\n${got.join("\n")}`);
  assert.equal(got.length, want.length, got.join("\n"));
});

test("missing containers, missing names and non-map documents are errors", () => {
  assert.deepEqual(problems({ name: "p" }), ["containers: must be a non-empty list"]);
  assert.deepEqual(problems({ containers: [{ image: "i" }] }), ["name: required", "containers[0].name: required"]);
  assert.throws(() => parsePodSpec("- a\n- b\n"), /must be a map/);
  assert.throws(() => parsePodSpec("name: [unclosed"), /not valid YAML/);
});

test("conversion to CRI configs follows kubelet's conventions", () => {
  const spec = parsePodSpec(YAML_SPEC);
  const pod = toCriConfigs(spec, { logRoot: "/var/log/pods", uid: "u-1" });
  assert.equal(pod.runtimeHandler, "cocoon");
  const sb = pod.sandbox;
  assert.deepEqual({ ...sb.metadata, $typeName: undefined }, { $typeName: undefined, name: "web", uid: "u-1", namespace: "demo", attempt: 0 });
  assert.equal(sb.hostname, "web");
  assert.equal(sb.logDirectory, "/var/log/pods/demo_web_u-1");
  assert.equal(sb.labels["io.kubernetes.pod.uid"], "u-1");
  assert.equal(sb.annotations["io.cocoon.example"], "1");
  assert.equal(sb.linux?.securityContext?.namespaceOptions?.network, NamespaceMode.POD);
  const [app, side] = pod.containers;
  assert.equal(app!.metadata?.name, "app");
  assert.equal(app!.image?.image, "docker.io/library/busybox:1.36");
  assert.deepEqual(app!.command, ["sh", "-c"]);
  assert.deepEqual(app!.envs.map((e) => `${e.key}=${e.value}`), ["GREETING=hello", "PORT=8080"]);
  assert.equal(app!.logPath, "app/0.log");
  assert.equal(app!.workingDir, "/tmp");
  assert.equal(app!.mounts[0]!.readonly, true);
  assert.equal(app!.labels["io.kubernetes.container.name"], "app");
  const r = app!.linux?.resources;
  assert.equal(r?.memoryLimitInBytes, 134217728n);
  assert.equal(r?.cpuQuota, 50000n);
  assert.equal(r?.cpuPeriod, 100000n);
  assert.equal(r?.cpuShares, 512n);
  assert.equal(side!.tty, true);
  assert.equal(side!.linux?.resources?.memoryLimitInBytes, 0n);
});

test("host networking maps to NODE namespaces and an empty hostname; uids are random by default", () => {
  const spec = validatePodSpec({ name: "h", hostNetwork: true, containers: [{ name: "c", image: "i" }] });
  const a = toCriConfigs(spec, { logRoot: "/logs" });
  const b = toCriConfigs(spec, { logRoot: "/logs" });
  assert.notEqual(a.sandbox.metadata?.uid, b.sandbox.metadata?.uid);
  assert.equal(a.sandbox.hostname, "");
  assert.equal(a.sandbox.linux?.securityContext?.namespaceOptions?.network, NamespaceMode.NODE);
  assert.equal(a.containers[0]!.linux?.securityContext?.namespaceOptions?.network, NamespaceMode.NODE);
});

test("namespace options, sysctls and mount propagation map as kubelet maps them", () => {
  const spec = parsePodSpec(`
name: ns
shareProcessNamespace: true
hostIPC: true
sysctls: {kernel.shm_rmid_forced: "1", fs.mqueue.msg_max: 100}
containers:
  - name: c
    image: i
    mounts:
      - {hostPath: /a, containerPath: /a, mountPropagation: Bidirectional}
      - {hostPath: /b, containerPath: /b, mountPropagation: HostToContainer}
      - {hostPath: /c, containerPath: /c}
`);
  const pod = toCriConfigs(spec, { logRoot: "/logs" });
  assert.deepEqual(pod.sandbox.linux?.sysctls, { "kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100" });
  for (const opts of [pod.sandbox.linux?.securityContext?.namespaceOptions, pod.containers[0]!.linux?.securityContext?.namespaceOptions]) {
    assert.equal(opts?.pid, NamespaceMode.POD);
    assert.equal(opts?.ipc, NamespaceMode.NODE);
    assert.equal(opts?.network, NamespaceMode.POD);
  }
  assert.deepEqual(pod.containers[0]!.mounts.map((m) => m.propagation), [MountPropagation.PROPAGATION_BIDIRECTIONAL, MountPropagation.PROPAGATION_HOST_TO_CONTAINER, MountPropagation.PROPAGATION_PRIVATE]);

  const plain = toCriConfigs(validatePodSpec({ name: "p", containers: [{ name: "c", image: "i" }] }), { logRoot: "/logs" });
  assert.equal(plain.sandbox.linux?.securityContext?.namespaceOptions?.pid, NamespaceMode.CONTAINER);
  assert.equal(plain.sandbox.linux?.securityContext?.namespaceOptions?.ipc, NamespaceMode.POD);
  const host = toCriConfigs(validatePodSpec({ name: "p", hostPID: true, containers: [{ name: "c", image: "i" }] }), { logRoot: "/logs" });
  assert.equal(host.containers[0]!.linux?.securityContext?.namespaceOptions?.pid, NamespaceMode.NODE);

  assert.deepEqual(problems({ name: "p", hostPID: true, shareProcessNamespace: true, sysctls: { "bad name": "1", "kernel.x": [] }, containers: [{ name: "c", image: "i", mounts: [{ hostPath: "/a", containerPath: "/a", mountPropagation: "rshared" }] }] }), [
    "sysctls.bad name: \"bad name\" is not a kernel parameter name",
    "sysctls.kernel.x: must be a string or a number",
    "shareProcessNamespace: cannot be true together with hostPID",
    "containers[0].mounts[0].mountPropagation: must be one of None, HostToContainer, Bidirectional",
  ]);
});

test("privileged and capabilities reach the container's security context; a privileged container makes the sandbox privileged", () => {
  const spec = validatePodSpec({
    name: "p",
    containers: [
      { name: "priv", image: "i", privileged: true },
      { name: "netadmin", image: "i", capabilities: { add: ["NET_ADMIN"], drop: ["CAP_MKNOD"] } },
      { name: "plain", image: "i" },
    ],
  });
  const pod = toCriConfigs(spec, { logRoot: "/logs" });
  assert.equal(pod.sandbox.linux?.securityContext?.privileged, true);
  const [priv, netadmin, plain] = pod.containers.map((c) => c.linux?.securityContext);
  assert.equal(priv?.privileged, true);
  assert.equal(netadmin?.privileged, false);
  assert.deepEqual(netadmin?.capabilities?.addCapabilities, ["NET_ADMIN"]);
  assert.deepEqual(netadmin?.capabilities?.dropCapabilities, ["CAP_MKNOD"]);
  assert.equal(plain?.capabilities, undefined);

  const unprivileged = toCriConfigs(validatePodSpec({ name: "q", containers: [{ name: "c", image: "i" }] }), { logRoot: "/logs" });
  assert.equal(unprivileged.sandbox.linux?.securityContext?.privileged, false);
  assert.deepEqual(problems({ name: "p", containers: [{ name: "c", image: "i", privileged: "yes", capabilities: { add: ["net admin"], keep: [] } }] }), [
    "containers[0].privileged: must be true or false, got \"yes\"",
    "containers[0].capabilities.keep: unknown field (allowed: add, drop)",
    'containers[0].capabilities.add: "net admin" is not a capability name (e.g. NET_ADMIN)',
  ]);
});
