// `cocoon pod`: the real CLI (a child process, as a user runs it) against a private containerd with CRI, CNI
// and the cocoon-runc handler: run a pod from a spec file, list, exec, logs, stats, and remove it again.
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { CriClient } from "../../src/cli/cri/client.js";
import { toCriConfigs, validatePodSpec } from "../../src/cli/cri/pod-spec.js";
import { removeAllPods } from "../../src/cli/lab/pod.js";
import { PodCliError } from "../../src/cli/pod/common.js";
import { humanBytes, renderTable } from "../../src/cli/pod/output.js";
import { resolveRef } from "../../src/cli/pod/resolve.js";
import type { Containerd } from "../helpers/containerd.js";
import { startCriLab } from "../helpers/cri.js";
import { BUSYBOX_IMAGE } from "../helpers/image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { repoRoot, run, waitFor, type RunResult } from "../helpers/util.js";
import { MODES } from "../../src/runtime/modes.js";

const HANDLER = "cocoon-runc";
const MAIN = path.join(repoRoot, "dist", "js", "src", "cli", "main.js");
const readdirSafe = (d: string) => {
  try {
    return readdirSync(d);
  } catch {
    return [];
  }
};

describe("cocoon pod: helpers", () => {
  const cands = [
    { item: "a", id: "abc123", names: ["web", "default/web"], describe: "abc123 web" },
    { item: "b", id: "abd456", names: ["db"], describe: "abd456 db" },
    { item: "c", id: "web999", names: ["cache"], describe: "web999 cache" },
  ];

  it("resolves full ids, unique prefixes and names, and refuses ambiguous or unknown references", () => {
    assert.equal(resolveRef("abd456", "pod", cands), "b");
    assert.equal(resolveRef("abc", "pod", cands), "a");
    assert.equal(resolveRef("db", "pod", cands), "b");
    assert.equal(resolveRef("default/web", "pod", cands), "a");
    assert.throws(() => resolveRef("ab", "pod", cands), (e: Error) => e instanceof PodCliError && /"ab" is ambiguous: it matches 2 pods/.test(e.message));
    // A name that is also another pod's id prefix is ambiguous rather than a guess.
    assert.throws(() => resolveRef("web", "pod", cands), /ambiguous/);
    assert.throws(() => resolveRef("nope", "pod", cands), /no pod matches "nope"/);
  });

  it("formats tables and sizes", () => {
    assert.deepEqual(renderTable(["A", "BB"], [["xyz", "1"]], "  "), ["  A    BB", "  xyz  1"]);
    assert.equal(humanBytes(512), "512B");
    assert.equal(humanBytes(3 * 1024 * 1024 + 512 * 1024), "3.5MiB");
  });
});

describe("cocoon pod: a pod through an existing CRI endpoint", { timeout: 120_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let cri: CriClient;
  let tmp: string;
  let env: NodeJS.ProcessEnv;
  const podName = `cli-pod-${process.pid}`;
  let podId = "";
  let sleeperId = "";
  let quitterId = "";

  /** The CLI as a user runs it; the endpoint comes from $CONTAINER_RUNTIME_ENDPOINT (with unix://). */
  async function cocoon(...args: string[]): Promise<RunResult> {
    const r = await run(process.execPath, [MAIN, "pod", ...args], { env, timeoutMs: 30_000 });
    assert.ok(!r.timedOut, `cocoon pod ${args.join(" ")} timed out`);
    return r;
  }
  const show = (r: RunResult) => `exit ${r.code}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`;

  before(async () => {
    host = await snapshotHost();
    tmp = mkdtempSync(path.join(os.tmpdir(), "cocoon-cli-pod-"));
    ({ ctrd, cri } = await startCriLab(HANDLER, path.join(tmp, "cocoon-runc.toml"), `mode = "runc"\n[runc]\nroot = "${tmp}/runc"\n`));
    env = { ...process.env, CONTAINER_RUNTIME_ENDPOINT: `unix://${ctrd.address}` };
  });

  after(async () => {
    if (cri) {
      await removeAllPods(cri, 30_000).catch(() => {});
      cri.close();
    }
    await ctrd?.stop();
    const leftovers = readdirSafe(path.join(tmp, "runc")).flatMap((ns) => readdirSafe(path.join(tmp, "runc", ns)).map((id) => `${ns}/${id}`));
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    assert.deepEqual(leftovers, [], "runc state left behind");
    await assertNoLeaks(host, { harness: ctrd, graceMs: 10_000 });
  });

  it("run: creates the pod and starts both containers, printing the pod id, IP and container ids", async () => {
    const spec = path.join(tmp, "pod.yaml");
    writeFileSync(
      spec,
      [
        `name: ${podName}`,
        "containers:",
        "  - name: sleeper",
        `    image: ${BUSYBOX_IMAGE}`,
        "    command: [sh, -c, 'echo hi; echo to-stderr >&2; exec sleep 600']",
        "  - name: quitter",
        `    image: ${BUSYBOX_IMAGE}`,
        "    command: [sh, -c, 'echo bye >&2; exit 4']",
        "",
      ].join("\n"),
    );
    const r = await cocoon("run", spec, "--handler", HANDLER, "--log-root", path.join(tmp, "logs"));
    assert.equal(r.code, 0, show(r));
    podId = /^pod ([0-9a-f]{64})$/m.exec(r.stdout)?.[1] ?? "";
    sleeperId = /container sleeper\s+([0-9a-f]{64})$/m.exec(r.stdout)?.[1] ?? "";
    quitterId = /container quitter\s+([0-9a-f]{64})$/m.exec(r.stdout)?.[1] ?? "";
    assert.ok(podId && sleeperId && quitterId, show(r));
    const ip = /IP (\d+\.\d+\.\d+\.\d+)/.exec(r.stdout)?.[1] ?? "";
    assert.ok(ip.startsWith(ctrd.cni!.subnet.split(".").slice(0, 3).join(".") + "."), `pod IP ${ip} in ${ctrd.cni!.subnet}\n${show(r)}`);
    assert.match(r.stdout, new RegExp(`name default/${podName}, handler ${HANDLER}`));
    assert.match(r.stdout, new RegExp(`logs under ${path.join(tmp, "logs")}/default_${podName}_`));

    // A second pod of the same name would make the name useless as a reference: refused.
    const again = await cocoon("run", spec, "--handler", HANDLER, "--log-root", path.join(tmp, "logs"));
    assert.equal(again.code, 1, show(again));
    assert.equal(again.stderr, `cocoon pod run: a pod default/${podName} already exists (${podId.slice(0, 12)}, Ready); remove it first: cocoon pod rm ${podId.slice(0, 12)}\n`);
    const bad = await cocoon("run", spec, "--handler", "runc");
    assert.equal(bad.code, 1, show(bad));
    assert.match(bad.stderr, new RegExp(`argument 'runc' is invalid. Allowed choices are ${MODES.map((m) => m.handler).join(", ")}\\.`));
    const invalid = path.join(tmp, "bad.yaml");
    writeFileSync(invalid, "name: Bad_Name\ncontainers: []\n");
    const inv = await cocoon("run", invalid);
    assert.equal(inv.code, 1, show(inv));
    assert.match(inv.stderr, /invalid pod spec .*bad\.yaml:\n  name: "Bad_Name" is not a DNS subdomain name.*\n  containers: must be a non-empty list/);
  });

  it("ls: shows the pod, and with -c its containers with state and exit code", async () => {
    const r = await cocoon("ls", "--endpoint", ctrd.address);
    assert.equal(r.code, 0, show(r));
    const lines = r.stdout.trimEnd().split("\n");
    assert.match(lines[0]!, /^POD ID\s+NAME\s+NAMESPACE\s+STATE\s+HANDLER\s+CREATED$/);
    assert.equal(lines.length, 2, show(r));
    assert.match(lines[1]!, new RegExp(`^${podId.slice(0, 12)}\\s+${podName}\\s+default\\s+Ready\\s+${HANDLER}\\s+\\d+s ago$`));

    // The quitter exits on its own; -c shows it with its code once it has.
    const listed = await waitFor(
      async () => {
        const j = await cocoon("ls", "-c", "--json");
        const pods = JSON.parse(j.stdout) as { id: string; containers: { name: string; state: string; exitCode: number | null }[] }[];
        const q = pods[0]?.containers.find((c) => c.name === "quitter");
        return q?.state === "Exited" ? pods : undefined;
      },
      { timeoutMs: 20_000, what: "the quitter to exit" },
    );
    assert.equal(listed[0]!.id, podId);
    assert.deepEqual(
      listed[0]!.containers.map((c) => [c.name, c.state, c.exitCode]),
      [
        ["sleeper", "Running", null],
        ["quitter", "Exited", 4],
      ],
    );
    const c = await cocoon("ls", "-c");
    assert.equal(c.code, 0, show(c));
    assert.match(c.stdout, /\n {4}CONTAINER ID\s+NAME\s+STATE\s+EXIT CODE\n/);
    assert.match(c.stdout, new RegExp(`\\n {4}${sleeperId.slice(0, 12)}\\s+sleeper\\s+Running\\s+-\\n`));
    assert.match(c.stdout, new RegExp(`\\n {4}${quitterId.slice(0, 12)}\\s+quitter\\s+Exited\\s+4\\n`));
  });

  it("exec: passes stdout and stderr through and exits with the command's code", async () => {
    const r = await cocoon("exec", "sleeper", "--", "sh", "-c", "echo out; echo err >&2; exit 3");
    assert.deepEqual([r.code, r.stdout, r.stderr], [3, "out\n", "err\n"]);
    // By <pod>/<container> and by id prefix.
    const h = await cocoon("exec", `${podName}/sleeper`, "--", "hostname");
    assert.deepEqual([h.code, h.stdout, h.stderr], [0, `${podName}\n`, ""]);
    const p = await cocoon("exec", "--timeout", "5", sleeperId.slice(0, 8), "--", "ls", "-d", "/proc");
    assert.deepEqual([p.code, p.stdout], [0, "/proc\n"], show(p));

    const missing = await cocoon("exec", "no-such-container", "--", "true");
    assert.equal(missing.code, 1, show(missing));
    assert.match(missing.stderr, /no container matches "no-such-container"/);
    const dead = await cocoon("exec", "quitter", "--", "true");
    assert.equal(dead.code, 126, show(dead));
    assert.match(dead.stderr, /exec in quitter \(\w{12}\) failed/);
  });

  it("logs: prints the container's lines, stderr lines to stderr", async () => {
    const r = await cocoon("logs", "sleeper");
    assert.deepEqual([r.code, r.stdout, r.stderr], [0, "hi\n", "to-stderr\n"], show(r));
    const out = await cocoon("logs", "sleeper", "--stream", "stdout");
    assert.deepEqual([out.stdout, out.stderr], ["hi\n", ""]);
    const q = await cocoon("logs", quitterId.slice(0, 10), "--timestamps");
    assert.equal(q.stdout, "");
    assert.match(q.stderr, /^\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d) bye\n$/);
  });

  it("stats: memory working set and CPU per container", async () => {
    const r = await cocoon("stats", "sleeper");
    assert.equal(r.code, 0, show(r));
    const [header, row] = r.stdout.trimEnd().split("\n");
    assert.match(header!, /^CONTAINER ID\s+NAME\s+POD\s+CPU \(cores\)\s+CPU TIME\s+MEMORY \(working set\)$/);
    assert.match(row!, new RegExp(`^${sleeperId.slice(0, 12)}\\s+sleeper\\s+default/${podName}\\s+\\d+\\.\\d{3}\\s+\\d+\\.\\d\\ds\\s+\\d+(\\.\\d)?(B|KiB|MiB)$`), show(r));
    const j = await cocoon("stats", "--pod", podName, "--no-sample", "--json");
    const rows = JSON.parse(j.stdout) as { name: string; memoryWorkingSetBytes: number | null; cpuCores: number | null }[];
    const sleeper = rows.find((s) => s.name === "sleeper");
    assert.ok(sleeper && sleeper.memoryWorkingSetBytes! > 0 && sleeper.cpuCores === null, j.stdout);
  });

  it("rm --all: removes Cocoon pods only; other handlers' pods need --force", async () => {
    // A pod on containerd's plain runc handler, as kubelet might have started on the node.
    const other = toCriConfigs(validatePodSpec({ name: `other-${process.pid}`, containers: [{ name: "x", image: BUSYBOX_IMAGE }] }), { logRoot: path.join(tmp, "logs") });
    const { podSandboxId: otherId } = await cri.runPodSandbox({ config: other.sandbox, runtimeHandler: "runc" });

    const r = await cocoon("rm", "--all", "--grace", "1");
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, new RegExp(`^removed pod ${podId.slice(0, 12)} \\(default/${podName}\\) and its 2 containers$`, "m"));
    assert.match(r.stdout, /^left 1 pod of other handlers alone \(runc\); --force-all includes them$/m);
    const ls = JSON.parse((await cocoon("ls", "--json")).stdout) as { id: string }[];
    assert.deepEqual(
      ls.map((p) => p.id),
      [otherId],
    );

    const refused = await cocoon("rm", `other-${process.pid}`);
    assert.equal(refused.code, 1, show(refused));
    assert.match(refused.stderr, /not a Cocoon handler's pod \(pass --force if you mean it\)/);
    const forced = await cocoon("rm", "--force", otherId.slice(0, 12));
    assert.equal(forced.code, 0, show(forced));
    const empty = await cocoon("ls");
    assert.deepEqual([empty.code, empty.stdout], [0, "no pods\n"]);
    const gone = await cocoon("rm", podName);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, new RegExp(`no pod matches "${podName}"`));
  });
});
