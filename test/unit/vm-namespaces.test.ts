// How a vm-mode pod's namespaces reach the guest: the host refuses what needs the host's own
// namespaces or mount tree (hostNetwork, hostIPC, hostPID, rshared mounts), and the agent resolves
// the /proc/<pid>/ns/... paths the CRI plugin writes to containers of the pod it started.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { guestNamespaces, guestSpec } from "../../src/agent/spec.js";
import { refuseHostOnly } from "../../src/runtime/vm/refusals.js";
import { ShimError } from "../../src/core/errors.js";
import { Code } from "../../src/ttrpc/codes.js";

const SANDBOX_PID = 7;
const owners = new Map([[SANDBOX_PID, "sandbox-1"]]);

/** What containerd's CRI plugin writes for an app container of a pod whose sandbox task has `pid`. */
const appNamespaces = (pid: number, sharedPid: boolean) => [
  { type: "pid", ...(sharedPid ? { path: `/proc/${pid}/ns/pid` } : {}) },
  { type: "ipc", path: `/proc/${pid}/ns/ipc` },
  { type: "uts", path: `/proc/${pid}/ns/uts` },
  { type: "mount" },
  { type: "network", path: `/proc/${pid}/ns/net` },
];

const agentError = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (err: unknown) => err instanceof ShimError && err.grpcCode === Code.INVALID_ARGUMENT && re.test(err.message));

describe("guestNamespaces (agent)", () => {
  it("the sandbox gets new pid, ipc, uts and cgroup namespaces and keeps the VM's network", () => {
    const ns = guestNamespaces([{ type: "pid" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }, { type: "network", path: "/var/run/netns/cni-1" }], new Map());
    assert.deepEqual(ns, [{ type: "pid" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }, { type: "cgroup" }]);
  });

  it("an app container joins the sandbox's ipc and uts, with a PID namespace of its own", () => {
    const notes: string[] = [];
    const ns = guestNamespaces(appNamespaces(SANDBOX_PID, false), owners, notes);
    assert.deepEqual(ns, [
      { type: "pid" },
      { type: "ipc", path: "/proc/7/ns/ipc" },
      { type: "uts", path: "/proc/7/ns/uts" },
      { type: "mount" },
      { type: "cgroup" },
    ]);
    assert.ok(notes.some((n) => /ipc namespace of container sandbox-1/.test(n)), notes.join("; "));
  });

  it("with a shared process namespace the app container joins the sandbox's pid namespace", () => {
    const ns = guestNamespaces(appNamespaces(SANDBOX_PID, true), owners);
    assert.deepEqual(ns[0], { type: "pid", path: "/proc/7/ns/pid" });
  });

  it("the file is chosen by the namespace type, not taken from the path", () => {
    const ns = guestNamespaces([{ type: "pid" }, { type: "mount", path: "/proc/7/ns/pid" }, { type: "ipc", path: "/proc/7/ns/net" }], owners);
    assert.deepEqual(ns.slice(1, 3), [{ type: "mount", path: "/proc/7/ns/mnt" }, { type: "ipc", path: "/proc/7/ns/ipc" }]);
  });

  it("refuses a path that is not a namespace of a container of the pod", () => {
    // pid 1 is the agent itself; 8 is not an init of this pod; the others are not /proc/<pid>/ns paths.
    for (const path of ["/proc/1/ns/ipc", "/proc/8/ns/ipc", "/var/run/ipcns/x", "/proc/7/../1/ns/ipc", "/proc/07/ns/ipc", "/proc/self/ns/ipc"]) {
      agentError(() => guestNamespaces([{ type: "pid" }, { type: "ipc", path }], owners), /does not belong to a container of this pod/);
    }
  });

  it("never runs a container in the VM's own PID namespace", () => {
    agentError(() => guestNamespaces([{ type: "ipc" }, { type: "mount" }], owners), /no PID namespace.*guest agent/);
    agentError(() => guestNamespaces(undefined, owners), /no PID namespace/);
    agentError(() => guestSpec(JSON.stringify({ root: { path: "/r" }, process: { args: ["sh"] } }), "c", false), /no PID namespace/);
  });

  it("refuses an unknown namespace type", () => {
    agentError(() => guestNamespaces([{ type: "pid" }, { type: "bogus" }], owners), /unknown namespace type "bogus"/);
  });

  it("leaves the pod's IPC sysctls in the spec (crun sets them in the namespace the container has)", () => {
    const spec = {
      root: { path: "/r" },
      process: { args: ["pause"] },
      linux: { namespaces: [{ type: "pid" }, { type: "ipc" }], sysctl: { "kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100", "net.ipv4.ping_group_range": "0 0" } },
    };
    const r = guestSpec(JSON.stringify(spec), "sb", false);
    assert.deepEqual((r.spec["linux"] as any).sysctl, { "kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100" });
    assert.deepEqual(r.netSysctls, { "net.ipv4.ping_group_range": "0 0" });
  });
});

describe("refuseHostOnly (host)", () => {
  const pod = ["pid", "ipc", "uts", "mount", "network"].map((type) => ({ type }));
  const spec = (namespaces: Array<{ type: string }>, mounts: unknown[] = []) => ({ linux: { namespaces }, mounts });
  const refused = (fn: () => unknown, re: RegExp) =>
    assert.throws(fn, (err: unknown) => err instanceof ShimError && err.kind === "InvalidArgument" && re.test(err.message) && /cocoon-runc handler/.test(err.message));

  it("accepts a pod with its own namespaces and private or slave mounts", () => {
    refuseHostOnly(spec(pod, [{ destination: "/d", source: "/s", options: ["rbind", "rprivate"] }, { destination: "/e", source: "/t", options: ["rbind", "rslave"] }]), true);
    // An app container's network is the sandbox's: no network entry is needed.
    refuseHostOnly(spec(pod.filter((n) => n.type !== "network")), false);
  });

  it("refuses hostNetwork, hostIPC and hostPID", () => {
    refused(() => refuseHostOnly(spec(pod.filter((n) => n.type !== "network")), true), /host networking cannot be used in vm mode/);
    for (const sandbox of [true, false]) {
      refused(() => refuseHostOnly(spec(pod.filter((n) => n.type !== "ipc")), sandbox), /host IPC cannot be used in vm mode/);
      refused(() => refuseHostOnly(spec(pod.filter((n) => n.type !== "pid")), sandbox), /host PID cannot be used in vm mode/);
    }
  });

  it("refuses a mount with bidirectional propagation, naming it", () => {
    for (const opt of ["rshared", "shared"]) {
      refused(() => refuseHostOnly(spec(pod, [{ destination: "/data", source: "/srv/vol", options: ["rbind", opt, "rw"] }]), false), /mount \/srv\/vol on \/data asks for bidirectional \(rshared\) propagation/);
    }
  });
});
