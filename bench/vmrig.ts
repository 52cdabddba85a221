// A private containerd with the CRI plugin and a CNI bridge, where the `cocoon` handler runs every pod
// in its own QEMU VM and the harness's `runc` handler runs pods with containerd-shim-runc-v2. Pods are
// driven the way kubelet drives them, through our CRI client.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CriClient } from "../src/cli/cri/client.js";
import { toCriConfigs, validatePodSpec, type CriPod } from "../src/cli/cri/pod-spec.js";
import { removeAllPods } from "../src/cli/lab/pod.js";
import { startContainerd, type Containerd } from "../test/helpers/containerd.js";
import { BUSYBOX_IMAGE, importImage, importPauseImage, PAUSE_IMAGE } from "../test/helpers/image.js";
import { isAlive, listProcesses } from "../test/helpers/procfs.js";
import { repoRoot, sleep, tmpdir, waitFor } from "../test/helpers/util.js";

export const GUEST_DIR = join(repoRoot, "guest", "out");
export const GUEST_MANIFEST = join(GUEST_DIR, "manifest.json");
export const VM_HANDLER = "cocoon";
export const RUNC_HANDLER = "runc";
/** gVisor mode (bench/gvisor.ts), registered when VmRigOptions.gvisor is set. */
export const GVISOR_HANDLER = "cocoon-gvisor";
/** The shipped default of vm.memory_mib, used as is so the numbers describe the default pod. */
export const VM_MEMORY_MIB = 512;

export interface VmRig {
  ctrd: Containerd;
  cri: CriClient;
  /** The guest kernel release the guest assets were built from. */
  guestKernel: string;
  memoryMiB: number;
  /** A one-container pod (`sleep 1000`) on `handler`, as kubelet would send it. */
  pod(handler: string, name: string): CriPod;
  /** The guest console of a running VM pod ("" once the pod is gone: the shim removes its run dir). */
  console(podId: string): string;
  /** Every QEMU pid this rig's shims have logged, so stop() can tell whether any survived. */
  noteQemu(pid: number): void;
  stop(): Promise<string[]>;
}

function qemuPids(): number[] {
  return listProcesses().filter((p) => /(^|\/)qemu-system/.test(p.args[0] ?? "")).map((p) => p.pid);
}

/** Why the VM section cannot run here, or undefined when it can. */
export function vmUnavailable(): string | undefined {
  if (!existsSync(GUEST_MANIFEST)) return `${GUEST_MANIFEST} not found (build the guest with guest/build.sh)`;
  for (const f of ["vmlinux", "initramfs-9p.cpio.zst", "rootfs.erofs"]) if (!existsSync(join(GUEST_DIR, f))) return `${join(GUEST_DIR, f)} missing (rebuild with guest/build.sh)`;
  return undefined;
}

export interface VmRigOptions {
  /** The Cocoon config's grouping for the `cocoon` handler (default "pod": one shim per VM pod). */
  grouping?: "pod" | "node";
  /** vm.kernel_params (e.g. "nokaslr", so that guests' kernel text is identical and KSM can merge it). */
  kernelParams?: string;
  /** vm.tcg_cache_mib (default: the shipped default). */
  tcgCacheMiB?: number;
  /** Also register the `cocoon-gvisor` handler (gVisor mode, its state in the rig's dir). */
  gvisor?: boolean;
}

export async function startVmRig(accel: "auto" | "kvm" | "tcg", o: VmRigOptions = {}): Promise<VmRig> {
  const dir = tmpdir("cocoon-bench-vm-");
  const cfg = join(dir, "cocoon-vm.toml");
  writeFileSync(cfg, [
    'mode = "vm"', `grouping = "${o.grouping ?? "pod"}"`, 'log_level = "info"', "[vm]",
    `kernel = "${GUEST_DIR}/vmlinux"`, `initrd = "${GUEST_DIR}/initramfs-9p.cpio.zst"`, `rootfs = "${GUEST_DIR}/rootfs.erofs"`,
    `accel = "${accel}"`, `memory_mib = ${VM_MEMORY_MIB}`, "boot_timeout_sec = 150", `state_dir = "${dir}/vm"`,
    ...(o.kernelParams ? [`kernel_params = ${JSON.stringify(o.kernelParams)}`] : []),
    ...(o.tcgCacheMiB !== undefined ? [`tcg_cache_mib = ${o.tcgCacheMiB}`] : []), "",
  ].join("\n"));
  const table = `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.${VM_HANDLER}`;
  const gvTable = `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.${GVISOR_HANDLER}`;
  const gvCfg = join(dir, "cocoon-gvisor.toml");
  if (o.gvisor) writeFileSync(gvCfg, `mode = "gvisor"\ngrouping = "pod"\n[gvisor]\nroot = "${dir}/runsc"\nstate_dir = "${dir}/gvisor"\n`);
  const gvExtra = o.gvisor ? `[${gvTable}]\nruntime_type = "io.containerd.cocoon.v2"\nprivileged_without_host_devices = true\n[${gvTable}.options]\nConfigPath = "${gvCfg}"\n` : "";
  let ctrd: Containerd | undefined;
  let cri: CriClient | undefined;
  try {
    ctrd = await startContainerd({
      cri: true,
      cni: true,
      pathPrepend: [join(repoRoot, "bin")],
      extraConfig: `[${table}]\nruntime_type = "io.containerd.cocoon.v2"\npod_annotations = ["io.cocoon.*"]\n[${table}.options]\nConfigPath = "${cfg}"\n` + gvExtra,
    });
    await importPauseImage(ctrd);
    await importImage(ctrd, BUSYBOX_IMAGE, { namespace: "k8s.io" });
    const client = await CriClient.connect(ctrd.address, { defaultTimeoutMs: 180_000 });
    cri = client;
    for (const image of [PAUSE_IMAGE, BUSYBOX_IMAGE]) {
      await waitFor(async () => (await client.imageStatus({ image: { image } })).image, { timeoutMs: 20_000, what: `CRI to list ${image}` });
    }
  } catch (e) {
    cri?.close();
    await ctrd?.stop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const c = ctrd;
  const client = cri;
  let guestKernel = "";
  try {
    guestKernel = (JSON.parse(readFileSync(GUEST_MANIFEST, "utf8")) as { kernel?: { release?: string } }).kernel?.release ?? "";
  } catch {
    // described as unknown
  }
  const qemus = new Set<number>();
  let seq = 0;
  return {
    ctrd: c, cri: client, guestKernel, memoryMiB: VM_MEMORY_MIB,
    pod(handler, name) {
      const spec = validatePodSpec({
        name: `${name}-${process.pid}-${++seq}`,
        runtimeHandler: handler,
        containers: [{ name: "sleep", image: BUSYBOX_IMAGE, command: ["sleep", "1000"] }],
      });
      return toCriConfigs(spec, { logRoot: join(c.dir, "pods") });
    },
    console(podId) {
      // The shim's run dir per sandbox: <state_dir>/<first 16 hex of sha256(sandbox id)>.
      const runDir = join(dir, "vm", createHash("sha256").update(podId).digest("hex").slice(0, 16));
      try {
        return readFileSync(join(runDir, "console.log"), "utf8");
      } catch {
        return "";
      }
    },
    noteQemu(pid) {
      if (Number.isInteger(pid) && pid > 0) qemus.add(pid);
    },
    async stop() {
      const leftovers: string[] = [];
      const gone = await removeAllPods(client, 60_000).catch((e: unknown) => ({ removed: [], errors: [(e as Error).message] }));
      leftovers.push(...gone.errors.map((e) => `pod removal failed: ${e}`));
      client.close();
      leftovers.push(...(await c.stop()).leftovers);
      // QEMU exits after the shim kills it; give it a moment, then make sure none of ours is left.
      const deadline = Date.now() + 5_000;
      while ([...qemus].some(isAlive) && Date.now() < deadline) await sleep(100);
      const running = new Set(qemuPids());
      for (const pid of qemus) {
        if (!running.has(pid) || !isAlive(pid)) continue;
        leftovers.push(`QEMU ${pid} still running after containerd stopped; killed`);
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // gone meanwhile
        }
      }
      rmSync(dir, { recursive: true, force: true });
      return leftovers;
    },
  };
}
