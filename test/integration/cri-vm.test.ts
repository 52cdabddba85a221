// The Kubernetes path in vm mode: containerd's CRI plugin runs pods on the `cocoon` handler, each pod in
// its own QEMU VM (TCG here), with the pod's CNI network carried into the guest.
import assert from "node:assert/strict";
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { CriClient } from "../../src/cli/cri/client.js";
import { forwardOnce } from "../../src/cli/cri/portforward.js";
import { toCriConfigs, validatePodSpec } from "../../src/cli/cri/pod-spec.js";
import { readContainerLog, removePod, startPod, waitForExit, type RunningPod } from "../../src/cli/lab/pod.js";
import type { Containerd } from "../helpers/containerd.js";
import { qemuPids, startCriLab, stopCriLab, vmLabConfig } from "../helpers/cri.js";
import { BUSYBOX_IMAGE, INDEX_HTML } from "../helpers/image.js";
import { snapshotHost, type HostSnapshot } from "../helpers/leaks.js";
import { repoRoot, run, waitFor } from "../helpers/util.js";

const HANDLER = "cocoon";
const OUT = path.join(repoRoot, "guest", "out");
const manifest = path.join(OUT, "manifest.json");
const built = existsSync(manifest);
const guestRelease: string = built ? JSON.parse(readFileSync(manifest, "utf8")).kernel?.release ?? "" : "";
const text = (b: Uint8Array) => Buffer.from(b).toString("utf8");
let seq = 0;

describe("CRI: pods in VMs on the cocoon handler", { skip: !built && "guest/out not built (run guest/build.sh)", timeout: 420_000 }, () => {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let cri: CriClient;
  let cfgDir: string;

  interface TestContainer {
    name: string;
    script: string;
    mounts?: Array<{ hostPath: string; containerPath: string; readOnly?: boolean }>;
    memoryLimitBytes?: number;
    privileged?: boolean;
    capAdd?: string[];
  }

  async function runPod(name: string, containers: TestContainer[], o: { hostNetwork?: boolean } = {}): Promise<RunningPod> {
    const spec = validatePodSpec({
      name: `${name}-${process.pid}-${++seq}`,
      runtimeHandler: HANDLER,
      hostNetwork: !!o.hostNetwork,
      containers: containers.map((c) => ({
        name: c.name,
        image: BUSYBOX_IMAGE,
        command: ["sh", "-c", c.script],
        mounts: c.mounts,
        ...(c.memoryLimitBytes ? { resources: { memoryLimitBytes: c.memoryLimitBytes } } : {}),
        ...(c.privileged ? { privileged: true } : {}),
        ...(c.capAdd ? { capabilities: { add: c.capAdd } } : {}),
      })),
    });
    return startPod(cri, toCriConfigs(spec, { logRoot: path.join(ctrd.dir, "pods") }), { timeoutMs: 180_000 });
  }

  async function exec(containerId: string, cmd: string[]) {
    const r = await cri.execSync({ containerId, cmd, timeout: 30n }, { timeoutMs: 60_000 });
    return { stdout: text(r.stdout), stderr: text(r.stderr), exitCode: r.exitCode };
  }

  before(async () => {
    host = await snapshotHost();
    cfgDir = mkdtempSync(path.join(os.tmpdir(), "cocoon-cfg-"));
    ({ ctrd, cri } = await startCriLab(HANDLER, path.join(cfgDir, "cocoon-vm.toml"), vmLabConfig(cfgDir), 180_000));
  });

  after(() => stopCriLab({ ctrd, cri }, host, cfgDir));

  it("a two-container pod in one VM: guest kernel, read-only volume, memory limit and resize in the guest, port-forward (the rest: modes-cri)", async () => {
    const vol = path.join(cfgDir, "vol");
    mkdirSync(vol);
    writeFileSync(path.join(vol, "f"), "from-host\n");
    const qemuBefore = qemuPids().length;
    const web = await runPod("web", [
      { name: "httpd", script: "echo serving; exec httpd -f -p 8080 -h /var/www" },
      { name: "quitter", script: "uname -r; cat /data/f; echo x > /data/g || echo read-only; cat /sys/fs/cgroup/memory.max; exit 7", mounts: [{ hostPath: vol, containerPath: "/data", readOnly: true }], memoryLimitBytes: 48 << 20 },
    ]);
    try {
      assert.equal(qemuPids().length, qemuBefore + 1, "one QEMU for the whole pod");
      const [httpd, quitter] = web.containers;
      const failed = await waitForExit(cri, quitter!.id, 60_000);
      assert.equal(failed.exitCode, 7);
      await waitFor(() => readContainerLog(quitter!.logPath).length >= 4, { timeoutMs: 20_000, what: "quitter's log" });
      const lines = readContainerLog(quitter!.logPath).map((l) => `${l.stream}:${l.text}`);
      // The pod's memory limit is applied in the guest and visible in the container's own cgroup.
      assert.deepEqual(lines.filter((l) => l.startsWith("stdout:")), [`stdout:${guestRelease}`, "stdout:from-host", "stdout:read-only", `stdout:${48 << 20}`]);
      assert.equal(existsSync(path.join(vol, "g")), false);
      await waitFor(() => readContainerLog(httpd!.logPath).some((l) => l.text === "serving"), { timeoutMs: 20_000, what: "httpd's log" });

      const r = await exec(httpd!.id, ["sh", "-c", "echo out; echo err >&2; exit 3"]);
      assert.deepEqual(r, { stdout: "out\n", stderr: "err\n", exitCode: 3 });
      const h = await exec(httpd!.id, ["hostname"]);
      assert.equal(h.stdout, `${web.name}\n`);
      const { stats } = await cri.containerStats({ containerId: httpd!.id });
      assert.ok((stats?.memory?.workingSetBytes?.value ?? 0n) > 0n, `working set ${stats?.memory?.workingSetBytes?.value}`);
      // kubelet's in-place resize: UpdateContainerResources reaches the container's cgroup in the guest.
      await cri.updateContainerResources({ containerId: httpd!.id, linux: { memoryLimitInBytes: BigInt(80 << 20), cpuQuota: 50_000n, cpuPeriod: 100_000n } });
      const limits = await exec(httpd!.id, ["cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"]);
      assert.equal(limits.stdout, `${80 << 20}\n50000 100000\n`);

      // kubectl port-forward through containerd's streaming server: to the server on 0.0.0.0 and to
      // one bound only to the guest's 127.0.0.1; a port nobody listens on gives the client an error.
      assert.equal((await exec(httpd!.id, ["httpd", "-p", "127.0.0.1:8081", "-h", "/var/www"])).exitCode, 0);
      for (const port of [8080, 8081]) {
        const fwd = await forwardOnce(cri, web.id, port, Buffer.from("GET / HTTP/1.0\r\n\r\n"));
        const reply = fwd.data.toString("utf8");
        assert.match(reply, /^HTTP\/1\.[01] 200/, `port ${port}: ${reply || fwd.error}`);
        assert.ok(reply.endsWith(INDEX_HTML), `port ${port}: ${reply}`);
      }
      const refused = await forwardOnce(cri, web.id, 8099, Buffer.from("GET / HTTP/1.0\r\n\r\n"));
      assert.equal(refused.data.length, 0);
      assert.match(refused.error, /8099/);

    } finally {
      await removePod(cri, web.id);
    }
    assert.equal(qemuPids().length, qemuBefore, "QEMU gone with its pod");
  });

  it("refuses a hostNetwork pod with a clear error", async () => {
    await assert.rejects(runPod("hostnet", [{ name: "shell", script: "sleep 1" }], { hostNetwork: true }), /host networking cannot be used in vm mode/);
  });

  describe("kernel features a privileged workload expects (modules shipped in the guest, loaded on demand)", () => {
    // One pod (one VM, a clone of the template VM) for every case: a privileged container, one with
    // NET_ADMIN added and one with the default capabilities.
    let pod: RunningPod;
    const ids: Record<string, string> = {};
    const loadedModules = async (id: string) => (await exec(id, ["cut", "-d", " ", "-f1", "/proc/modules"])).stdout.split("\n");
    // Both flavours of iptables: nft (netlink, everything loads on demand) and legacy (needs ip_tables loaded).
    const iptables = ["/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi"];
    const haveIptables = iptables.every((f) => existsSync(f));

    /** The busybox image has no iptables: the host's, with their libraries and extensions, to share. */
    async function stageIptables(dir: string): Promise<void> {
      mkdirSync(path.join(dir, "lib"), { recursive: true });
      for (const bin of iptables) copyFileSync(bin, path.join(dir, path.basename(bin)));
      const extensions = "/usr/lib/x86_64-linux-gnu/xtables";
      cpSync(extensions, path.join(dir, "xtables"), { recursive: true, dereference: true });
      const { stdout } = await run("sh", ["-c", `ldd ${iptables.join(" ")} ${extensions}/*.so | awk '$3 ~ /^\\// {print $3} NF == 2 && $1 ~ /^\\// {print $1}' | sort -u`]);
      for (const lib of stdout.split("\n").filter(Boolean)) copyFileSync(realpathSync(lib), path.join(dir, "lib", path.basename(lib)));
    }

    before(async () => {
      const ipt = path.join(cfgDir, "iptables");
      if (haveIptables) await stageIptables(ipt);
      pod = await runPod("kfeat", [
        { name: "priv", script: "exec sleep 600", privileged: true, ...(haveIptables ? { mounts: [{ hostPath: ipt, containerPath: "/ipt", readOnly: true }] } : {}) },
        { name: "netadmin", script: "exec sleep 600", capAdd: ["NET_ADMIN"] },
        { name: "plain", script: "exec sleep 600" },
      ]);
      for (const c of pod.containers) ids[c.name] = c.id;
    });

    after(async () => {
      if (pod) await removePod(cri, pod.id);
    });

    it("a container without CAP_NET_ADMIN is refused a bridge for the capability; with it added, it makes one", async () => {
      const denied = await exec(ids["plain"]!, ["ip", "link", "add", "br-plain", "type", "bridge"]);
      assert.notEqual(denied.exitCode, 0);
      assert.match(denied.stderr, /Operation not permitted/);
      const made = await exec(ids["netadmin"]!, ["sh", "-c", "ip link add br-na type bridge && cat /sys/class/net/br-na/bridge/stp_state && ip link del br-na"]);
      assert.deepEqual(made, { stdout: "0\n", stderr: "", exitCode: 0 });
      assert.ok((await loadedModules(ids["plain"]!)).includes("bridge"), "bridge loaded on demand");
    });

    it("a privileged container makes bridges, veths, VLANs, dummy/macvlan/ipvlan links, a tun device, tmpfs and overlay mounts", async () => {
      const script = [
        "set -e",
        "brctl addbr br-t",
        "ip link add vt0 type veth",
        "brctl addif br-t vt0",
        "ip link add link vt0 name vt0.5 type vlan id 5",
        "ip link add d0 type dummy",
        "ip link add d1 type dummy",
        "ip link add link d0 name mv0 type macvlan",
        // A lower device takes macvlans or ipvlans, not both.
        "ip link add link d1 name iv0 type ipvlan",
        // The kernel loads tun when /dev/net/tun is first opened ("char-major-10-200").
        "test -c /dev/net/tun || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }",
        "tunctl -t tap-t >/dev/null",
        "for l in br-t vt0 vt0.5 d0 d1 mv0 iv0 tap-t; do cat /sys/class/net/$l/ifindex >/dev/null; done",
        "basename $(readlink /sys/class/net/vt0/master)",
        "mkdir -p /mnt/t && mount -t tmpfs t /mnt/t && mkdir /mnt/t/l /mnt/t/u /mnt/t/w /mnt/t/m",
        "echo low > /mnt/t/l/f",
        "mount -t overlay o -o lowerdir=/mnt/t/l,upperdir=/mnt/t/u,workdir=/mnt/t/w /mnt/t/m",
        "echo up >> /mnt/t/m/f && cat /mnt/t/u/f",
        "umount /mnt/t/m /mnt/t",
        "tunctl -d tap-t >/dev/null",
        "for l in iv0 mv0 d0 d1 vt0.5 vt0 br-t; do ip link del $l; done",
        "echo done",
      ].join("\n");
      const r = await exec(ids["priv"]!, ["sh", "-c", script]);
      assert.deepEqual(r, { stdout: "br-t\nlow\nup\ndone\n", stderr: "", exitCode: 0 });
      const loaded = await loadedModules(ids["priv"]!);
      for (const m of ["bridge", "stp", "llc", "veth", "8021q", "dummy", "macvlan", "ipvlan", "tun"]) assert.ok(loaded.includes(m), `${m} loaded: ${loaded.join(" ")}`);
    });

    it("a privileged container sets iptables rules, nft and legacy, with the host's iptables binaries", { skip: !haveIptables && `no ${iptables.join(" or ")} on this host` }, async () => {
      const iptablesCmd = (flavour: string) => `XTABLES_LIBDIR=/ipt/xtables /ipt/lib/ld-linux-x86-64.so.2 --library-path /ipt/lib /ipt/xtables-${flavour}-multi iptables`;
      const ipt = iptablesCmd("nft");
      const legacy = iptablesCmd("legacy");
      const script = [
        "set -e",
        `${ipt} -t nat -A POSTROUTING -o eth0 -j MASQUERADE`,
        `${ipt} -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
        `${ipt} -A INPUT -p tcp -m multiport --dports 80,443 -m comment --comment web -j ACCEPT`,
        `${ipt} -t nat -S POSTROUTING`,
        `${ipt} -S INPUT`,
        `${ipt} -F INPUT`,
        `${ipt} -t nat -F POSTROUTING`,
        // iptables-legacy takes its lock in /run/xtables.lock.
        "mkdir -p /run",
        `${legacy} -t nat -A PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports 80`,
        `${legacy} -t nat -S PREROUTING`,
        `${legacy} -t nat -F PREROUTING`,
      ].join("\n");
      const r = await exec(ids["priv"]!, ["sh", "-c", script]);
      assert.equal(r.exitCode, 0, r.stderr);
      assert.match(r.stdout, /-A POSTROUTING -o eth0 -j MASQUERADE/);
      assert.match(r.stdout, /-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT/);
      assert.match(r.stdout, /--dports 80,443 -m comment --comment web -j ACCEPT/);
      assert.match(r.stdout, /-A PREROUTING -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 80/);
      const loaded = await loadedModules(ids["priv"]!);
      for (const m of ["nf_tables", "nft_chain_nat", "nft_compat", "nf_conntrack", "xt_conntrack", "iptable_nat", "xt_REDIRECT"]) assert.ok(loaded.includes(m), `${m} loaded: ${loaded.join(" ")}`);
    });
  });
});
