// deploy/: every Kubernetes manifest checked as Kubernetes objects against a small schema of the fields we
// use, the containerd snippet as TOML, the Cocoon configs with the shim's own parser, and the cocoon
// command lines in the DaemonSets against the CLI's options.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { parse as parseToml } from "smol-toml";
import { parseConfig } from "../../src/shim/config.js";
import { installCommand, uninstallCommand } from "../../src/cli/install/command.js";
import { NODE_LABEL } from "../../src/cli/install/node-label.js";
import { registerModes } from "../../src/shim/modes.js";
import { MODES } from "../../src/runtime/modes.js";
import { settingsFor } from "../../src/shim/config.js";
import type { VmConfig } from "../../src/runtime/vm/settings.js";
import type { RuncSettings } from "../../src/runtime/runc/settings.js";
registerModes(MODES);

const HERE = new URL(".", import.meta.url).pathname;
const REPO = HERE.includes("/dist/js/") ? HERE.slice(0, HERE.indexOf("/dist/js/")) : join(HERE, "..", "..");
const DEPLOY = join(REPO, "deploy");

type Obj = Record<string, any>;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const QUANTITY = /^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$/;
const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

/** Problems of one object, as "<kind>/<name>: <path>: <problem>". */
class Problems {
  readonly list: string[] = [];
  constructor(private readonly where: string) {}
  add(path: string, msg: string) {
    this.list.push(`${this.where}: ${path}: ${msg}`);
  }
  need(cond: unknown, path: string, msg: string) {
    if (!cond) this.add(path, msg);
  }
  stringMap(v: unknown, path: string, keyRe = LABEL_KEY, valueRe: RegExp | undefined = LABEL_VALUE) {
    if (v === undefined) return;
    if (!isObj(v)) return this.add(path, "must be a map");
    for (const [k, val] of Object.entries(v)) {
      this.need(keyRe.test(k), `${path}.${k}`, "invalid key");
      this.need(typeof val === "string", `${path}.${k}`, "value must be a string (quote it)");
      if (valueRe && typeof val === "string") this.need(valueRe.test(val), `${path}.${k}`, "invalid value");
    }
  }
}

const KINDS: Record<string, string> = {
  Namespace: "v1",
  ServiceAccount: "v1",
  ClusterRole: "rbac.authorization.k8s.io/v1",
  ClusterRoleBinding: "rbac.authorization.k8s.io/v1",
  DaemonSet: "apps/v1",
  RuntimeClass: "node.k8s.io/v1",
};
const NAMESPACED = new Set(["ServiceAccount", "DaemonSet"]);

function checkMeta(o: Obj, p: Problems) {
  p.need(KINDS[o["kind"]] !== undefined, "kind", `unexpected kind ${o["kind"]}`);
  p.need(o["apiVersion"] === KINDS[o["kind"]], "apiVersion", `must be ${KINDS[o["kind"]]}`);
  const m = o["metadata"];
  if (!isObj(m)) return p.add("metadata", "required");
  p.need(typeof m["name"] === "string" && DNS_SUBDOMAIN.test(m["name"]), "metadata.name", "must be a DNS subdomain");
  if (NAMESPACED.has(o["kind"])) p.need(typeof m["namespace"] === "string" && DNS_LABEL.test(m["namespace"]), "metadata.namespace", "required DNS label");
  else p.need(m["namespace"] === undefined, "metadata.namespace", "cluster-scoped kind must not have one");
  p.stringMap(m["labels"], "metadata.labels");
}

function checkRuntimeClass(o: Obj, p: Problems) {
  p.need(typeof o["handler"] === "string" && DNS_LABEL.test(o["handler"]) && o["handler"].length <= 63, "handler", "must be a DNS label");
  if (o["overhead"] !== undefined) {
    const pf = o["overhead"]?.["podFixed"];
    p.need(isObj(pf), "overhead.podFixed", "must be a map");
    for (const [k, v] of Object.entries(pf ?? {})) {
      p.need(["cpu", "memory"].includes(k), `overhead.podFixed.${k}`, "unexpected resource");
      p.need(typeof v === "string" && QUANTITY.test(v), `overhead.podFixed.${k}`, "must be a quantity string");
    }
  }
  if (o["scheduling"] !== undefined) p.stringMap(o["scheduling"]["nodeSelector"], "scheduling.nodeSelector");
  for (const k of Object.keys(o)) p.need(["apiVersion", "kind", "metadata", "handler", "overhead", "scheduling"].includes(k), k, "unknown field");
}

function checkClusterRole(o: Obj, p: Problems) {
  const rules = o["rules"];
  p.need(Array.isArray(rules) && rules.length > 0, "rules", "non-empty list required");
  (rules ?? []).forEach((r: Obj, i: number) => {
    for (const f of ["apiGroups", "resources", "verbs"]) {
      p.need(Array.isArray(r[f]) && r[f].every((s: unknown) => typeof s === "string"), `rules[${i}].${f}`, "list of strings required");
    }
  });
}

function checkBinding(o: Obj, p: Problems, all: Obj[]) {
  const ref = o["roleRef"];
  p.need(ref?.apiGroup === "rbac.authorization.k8s.io" && ref?.kind === "ClusterRole", "roleRef", "must reference a ClusterRole");
  p.need(all.some((x) => x["kind"] === "ClusterRole" && x["metadata"]?.name === ref?.name), "roleRef.name", `ClusterRole ${ref?.name} is not defined in this file`);
  const subjects = o["subjects"];
  p.need(Array.isArray(subjects) && subjects.length > 0, "subjects", "required");
  for (const s of subjects ?? []) {
    p.need(s.kind === "ServiceAccount", "subjects", "only ServiceAccounts expected");
    p.need(
      all.some((x) => x["kind"] === "ServiceAccount" && x["metadata"]?.name === s.name && x["metadata"]?.namespace === s.namespace),
      "subjects",
      `ServiceAccount ${s.namespace}/${s.name} is not defined in this file`,
    );
  }
}

function checkDaemonSet(o: Obj, p: Problems, all: Obj[]) {
  const spec = o["spec"];
  if (!isObj(spec)) return p.add("spec", "required");
  const match = spec["selector"]?.["matchLabels"];
  const tmpl = spec["template"];
  const tLabels = tmpl?.["metadata"]?.["labels"];
  p.need(isObj(match) && Object.keys(match).length > 0, "spec.selector.matchLabels", "required");
  p.stringMap(match, "spec.selector.matchLabels");
  p.stringMap(tLabels, "spec.template.metadata.labels");
  for (const [k, v] of Object.entries(match ?? {})) p.need(tLabels?.[k] === v, `spec.selector.matchLabels.${k}`, "not matched by the template labels");
  const pod = tmpl?.["spec"];
  if (!isObj(pod)) return p.add("spec.template.spec", "required");
  const ns = o["metadata"]?.namespace;
  if (pod["serviceAccountName"] !== undefined) {
    p.need(
      all.some((x) => x["kind"] === "ServiceAccount" && x["metadata"]?.name === pod["serviceAccountName"] && x["metadata"]?.namespace === ns),
      "spec.template.spec.serviceAccountName",
      `ServiceAccount ${ns}/${pod["serviceAccountName"]} is not defined in this file`,
    );
  }
  p.stringMap(pod["nodeSelector"], "spec.template.spec.nodeSelector");
  const volumes: Obj[] = pod["volumes"] ?? [];
  const volNames = volumes.map((v) => v["name"]);
  p.need(new Set(volNames).size === volNames.length, "spec.template.spec.volumes", "duplicate volume names");
  volumes.forEach((v, i) => {
    const at = `spec.template.spec.volumes[${i}]`;
    p.need(typeof v["name"] === "string" && DNS_LABEL.test(v["name"]), `${at}.name`, "must be a DNS label");
    if (v["hostPath"]) {
      p.need(typeof v["hostPath"].path === "string" && v["hostPath"].path.startsWith("/"), `${at}.hostPath.path`, "must be absolute");
      p.need(
        v["hostPath"].type === undefined || ["", "Directory", "DirectoryOrCreate", "File", "FileOrCreate", "Socket", "CharDevice", "BlockDevice"].includes(v["hostPath"].type),
        `${at}.hostPath.type`,
        "unknown type",
      );
    }
  });
  const containers: Obj[] = pod["containers"];
  p.need(Array.isArray(containers) && containers.length > 0, "spec.template.spec.containers", "non-empty list required");
  const cNames = (containers ?? []).map((c) => c["name"]);
  p.need(new Set(cNames).size === cNames.length, "spec.template.spec.containers", "duplicate container names");
  (containers ?? []).forEach((c, i) => {
    const at = `spec.template.spec.containers[${i}]`;
    p.need(typeof c["name"] === "string" && DNS_LABEL.test(c["name"]), `${at}.name`, "must be a DNS label");
    p.need(typeof c["image"] === "string" && c["image"].length > 0, `${at}.image`, "required");
    for (const f of ["command", "args"]) {
      if (c[f] !== undefined) p.need(Array.isArray(c[f]) && c[f].every((s: unknown) => typeof s === "string"), `${at}.${f}`, "list of strings");
    }
    const envNames = new Set<string>();
    (c["env"] ?? []).forEach((e: Obj, j: number) => {
      p.need(typeof e["name"] === "string", `${at}.env[${j}].name`, "required");
      p.need((typeof e["value"] === "string") !== (e["valueFrom"] !== undefined), `${at}.env[${j}]`, "needs a string value or valueFrom");
      envNames.add(e["name"]);
    });
    // $(VAR) in command/args is expanded by kubelet only for declared variables.
    for (const s of [...(c["command"] ?? []), ...(c["args"] ?? [])] as string[]) {
      for (const m of s.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) p.need(envNames.has(m[1]!), `${at}.args`, `$(${m[1]}) is not a declared env var`);
    }
    const mountPaths = new Set<string>();
    (c["volumeMounts"] ?? []).forEach((m: Obj, j: number) => {
      p.need(volNames.includes(m["name"]), `${at}.volumeMounts[${j}].name`, `volume "${m["name"]}" is not declared`);
      p.need(typeof m["mountPath"] === "string" && m["mountPath"].startsWith("/"), `${at}.volumeMounts[${j}].mountPath`, "must be absolute");
      p.need(!mountPaths.has(m["mountPath"]), `${at}.volumeMounts[${j}].mountPath`, "mounted twice");
      p.need(m["mountPropagation"] === undefined || ["None", "HostToContainer", "Bidirectional"].includes(m["mountPropagation"]), `${at}.volumeMounts[${j}].mountPropagation`, "invalid");
      mountPaths.add(m["mountPath"]);
    });
    for (const probe of ["readinessProbe", "livenessProbe"]) {
      if (c[probe]) p.need(Array.isArray(c[probe].exec?.command), `${at}.${probe}`, "exec.command list expected");
    }
    const pre = c["lifecycle"]?.["preStop"];
    if (pre) p.need(Array.isArray(pre.exec?.command), `${at}.lifecycle.preStop.exec.command`, "list expected");
  });
}

function loadManifests(): { file: string; objs: Obj[] }[] {
  const dir = join(DEPLOY, "kubernetes");
  return readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()
    .map((file) => {
      const docs = parseAllDocuments(readFileSync(join(dir, file), "utf8"));
      for (const d of docs) assert.deepEqual(d.errors, [], `${file}: YAML errors`);
      return { file, objs: docs.map((d) => d.toJS()).filter((o) => o !== null) as Obj[] };
    });
}

test("every manifest is a set of valid Kubernetes objects", () => {
  const files = loadManifests();
  assert.deepEqual(files.map((f) => f.file), ["cocoon-cleanup.yaml", "cocoon-deploy.yaml", "runtimeclass.yaml"]);
  const problems: string[] = [];
  for (const { file, objs } of files) {
    assert.ok(objs.length > 0, `${file} is empty`);
    const keys = new Set<string>();
    for (const o of objs) {
      const p = new Problems(`${file} ${o["kind"]}/${o["metadata"]?.name}`);
      checkMeta(o, p);
      const key = `${o["kind"]}/${o["metadata"]?.namespace ?? ""}/${o["metadata"]?.name}`;
      p.need(!keys.has(key), "metadata.name", "defined twice");
      keys.add(key);
      if (o["kind"] === "RuntimeClass") checkRuntimeClass(o, p);
      if (o["kind"] === "ClusterRole") checkClusterRole(o, p);
      if (o["kind"] === "ClusterRoleBinding") checkBinding(o, p, objs);
      if (o["kind"] === "DaemonSet") checkDaemonSet(o, p, objs);
      problems.push(...p.list);
    }
  }
  assert.deepEqual(problems, []);
});

test("the schema catches the mistakes it is meant to catch", () => {
  const ds = loadManifests().find((f) => f.file === "cocoon-deploy.yaml")!.objs;
  const broken = structuredClone(ds.find((o) => o["kind"] === "DaemonSet")!);
  broken["spec"].selector.matchLabels["app.kubernetes.io/name"] = "other";
  broken["spec"].template.spec.containers[0].volumeMounts.push({ name: "nope", mountPath: "/x" });
  delete broken["spec"].template.spec.containers[0].image;
  broken["spec"].template.spec.containers[0].args[0] += " $(UNDECLARED)";
  const p = new Problems("DaemonSet");
  checkDaemonSet(broken, p, ds);
  const text = p.list.join("\n");
  for (const want of ["not matched by the template labels", 'volume "nope" is not declared', ".image: required", "$(UNDECLARED)"]) assert.ok(text.includes(want), `${want} in\n${text}`);
  const rc = new Problems("RuntimeClass");
  checkRuntimeClass({ apiVersion: "node.k8s.io/v1", kind: "RuntimeClass", metadata: { name: "x" }, handler: "Bad_Handler", overhead: { podFixed: { memory: 5 } } }, rc);
  assert.equal(rc.list.length, 2, rc.list.join("\n"));
});

test("RuntimeClasses: one per registered mode (the VM one with overhead), all pinned to labelled nodes", () => {
  const rcs = loadManifests().find((f) => f.file === "runtimeclass.yaml")!.objs;
  assert.deepEqual(rcs.map((o) => o["handler"]).sort(), MODES.map((m) => m.handler).sort());
  const vm = rcs[0]!;
  assert.ok(vm["overhead"].podFixed.memory && vm["overhead"].podFixed.cpu);
  for (const rc of rcs) assert.equal(rc["scheduling"].nodeSelector[NODE_LABEL], "true");
});

function daemonSet(file: string): Obj {
  return loadManifests().find((f) => f.file === file)!.objs.find((o) => o["kind"] === "DaemonSet")!;
}

/** The `cocoon …` invocations in a shell script, with kubelet's $(VAR) and the shell's $VAR replaced. */
function cocoonCalls(script: string): string[][] {
  return script
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l.startsWith("cocoon "))
    .map((l) => l.replace(/\$\(\w+\)|"\$\w+"|\$\w+/g, "false").split(/\s+/).slice(1));
}

test("the installer DaemonSet: privileged, hostPID, host / mounted, consent env defaulting to false", () => {
  const ds = daemonSet("cocoon-deploy.yaml");
  const pod = ds["spec"].template.spec;
  const c = pod.containers[0];
  assert.equal(pod.hostPID, true);
  assert.equal(c.securityContext.privileged, true);
  assert.equal(c.image, "cocoon/cocoon-deploy:latest");
  const hostPaths = Object.fromEntries(pod.volumes.map((v: Obj) => [v["hostPath"].path, v["name"]]));
  for (const p of ["/", "/etc/containerd", "/opt/cocoon"]) assert.ok(hostPaths[p], `host ${p} mounted`);
  const env = Object.fromEntries(c.env.map((e: Obj) => [e["name"], e]));
  assert.equal(env["RESTART_CONTAINERD"].value, "false");
  assert.equal(env["NODE_NAME"].valueFrom.fieldRef.fieldPath, "spec.nodeName");
  const script = c.args.join("\n");
  assert.match(script, /cocoon install --host-root \/host --restart-containerd=\$\(RESTART_CONTAINERD\)/);
  assert.ok(c.lifecycle.preStop.exec.command.join(" ").includes("cocoon uninstall"));
});

test("the cocoon command lines in the DaemonSets use only options the CLI defines", async () => {
  const scripts = [
    daemonSet("cocoon-deploy.yaml")["spec"].template.spec.containers[0].args.join("\n"),
    daemonSet("cocoon-deploy.yaml")["spec"].template.spec.containers[0].lifecycle.preStop.exec.command.join("\n"),
    daemonSet("cocoon-cleanup.yaml")["spec"].template.spec.containers[0].args.join("\n"),
  ];
  const calls = scripts.flatMap(cocoonCalls);
  assert.ok(calls.length >= 4, JSON.stringify(calls));
  for (const argv of calls) {
    const cmd = argv[0] === "install" ? installCommand() : argv[0] === "uninstall" ? uninstallCommand() : assert.fail(`unknown subcommand ${argv[0]}`);
    let parsed: Record<string, unknown> | undefined;
    cmd.exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} });
    cmd.action((opts: Record<string, unknown>) => {
      parsed = opts;
    });
    await cmd.parseAsync(argv.slice(1), { from: "user" });
    assert.equal(parsed?.["hostRoot"], "/host", argv.join(" "));
    assert.equal(parsed?.["restartContainerd"], false, argv.join(" "));
  }
});

test("the containerd snippet is TOML registering every mode's handler with its Cocoon config", () => {
  const doc = parseToml(readFileSync(join(DEPLOY, "containerd", "cocoon.toml"), "utf8")) as Obj;
  const rts = doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
  assert.deepEqual(Object.keys(rts).sort(), MODES.map((m) => m.handler).sort());
  for (const m of MODES) {
    assert.equal(rts[m.handler].runtime_type, "io.containerd.cocoon.v2", m.handler);
    assert.equal(rts[m.handler].options.ConfigPath, `/etc/cocoon/${m.configFile}`, m.handler);
    assert.equal(rts[m.handler].privileged_without_host_devices ?? false, m.privilegedWithoutHostDevices, m.handler);
  }
  assert.equal(rts.cocoon.runtime_type, "io.containerd.cocoon.v2");
  assert.equal(rts["cocoon-runc"].runtime_type, "io.containerd.cocoon.v2");
  assert.equal(rts.cocoon.options.ConfigPath, "/etc/cocoon/cocoon-vm.toml");
  assert.equal(rts["cocoon-runc"].options.ConfigPath, "/etc/cocoon/cocoon-runc.toml");
  assert.deepEqual(rts.cocoon.pod_annotations, ["io.cocoon.*"]);
  assert.deepEqual(rts["cocoon-runc"].pod_annotations, ["io.cocoon.*"]);
});

test("the two Cocoon configs pass the shim's parseConfig", () => {
  const vm = parseConfig(readFileSync(join(DEPLOY, "config", "cocoon-vm.toml"), "utf8"), "cocoon-vm.toml");
  assert.equal(vm.mode, "vm");
  assert.equal(settingsFor<VmConfig>(vm, "vm").kernel, "/usr/local/share/cocoon/vmlinux");
  assert.equal(settingsFor<VmConfig>(vm, "vm").initrd, "/usr/local/share/cocoon/initramfs-9p.cpio.zst");
  assert.equal(settingsFor<VmConfig>(vm, "vm").rootfs, "/usr/local/share/cocoon/rootfs.erofs");
  const runc = parseConfig(readFileSync(join(DEPLOY, "config", "cocoon-runc.toml"), "utf8"), "cocoon-runc.toml");
  assert.equal(runc.mode, "runc");
  assert.equal(settingsFor<RuncSettings>(runc, "runc").binary, "runc");
  // Every mode ships its config, and it selects that mode.
  for (const m of MODES) assert.equal(parseConfig(readFileSync(join(DEPLOY, "config", m.configFile), "utf8"), m.configFile).mode, m.name);
});
