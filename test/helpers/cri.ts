// A private containerd with the CRI plugin, a CNI bridge, the local images, and one Cocoon runtime
// handler whose Cocoon config is given as TOML text: what every CRI integration test starts from.
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { CriClient } from "../../src/cli/cri/client.js";
import { removeAllPods } from "../../src/cli/lab/pod.js";
import { assertNoLeaks, type HostSnapshot } from "./leaks.js";
import { startContainerd, type Containerd } from "./containerd.js";
import { BUSYBOX_IMAGE, importImage, importPauseImage, PAUSE_IMAGE } from "./image.js";
import { repoRoot, waitFor } from "./util.js";
import { stringify as stringifyToml } from "smol-toml";
import { cocoonRuntime, criRuntimesConfig, type CriRuntimeEntry } from "../../src/cli/lab/containerd-config.js";

export interface CriLab {
  ctrd: Containerd;
  cri: CriClient;
}

export async function startCriLab(handler: string, cocoonConfigPath: string, cocoonConfig: string, defaultTimeoutMs = 30_000): Promise<CriLab> {
  writeFileSync(cocoonConfigPath, cocoonConfig);
  return startCriLabWith({ [handler]: cocoonRuntime(cocoonConfigPath) }, defaultTimeoutMs);
}

/** The same with several CRI runtimes (e.g. every mode's handler, helpers/modes.ts criRuntimes). */
export async function startCriLabWith(runtimes: Record<string, CriRuntimeEntry>, defaultTimeoutMs = 30_000): Promise<CriLab> {
  const ctrd = await startContainerd({
    cri: true,
    cni: true,
    pathPrepend: [path.join(repoRoot, "bin")],
    extraConfig: stringifyToml(criRuntimesConfig(runtimes)),
  });
  await importPauseImage(ctrd);
  await importImage(ctrd, BUSYBOX_IMAGE, { namespace: "k8s.io" });
  const cri = await CriClient.connect(ctrd.address, { defaultTimeoutMs });
  // The CRI plugin learns about imported images from containerd's events.
  for (const image of [PAUSE_IMAGE, BUSYBOX_IMAGE]) {
    await waitFor(async () => (await cri.imageStatus({ image: { image } })).image, { timeoutMs: 20_000, what: `CRI to list ${image}` });
  }
  return { ctrd, cri };
}

/** Tears down what startCriLab made (every pod, the client, containerd), then `cfgDir`, and asserts nothing leaked. */
export async function stopCriLab(lab: Partial<CriLab>, host: HostSnapshot, cfgDir: string | undefined): Promise<void> {
  if (lab.cri) {
    await removeAllPods(lab.cri, 60_000).catch(() => {});
    lab.cri.close();
  }
  await lab.ctrd?.stop();
  if (cfgDir) rmSync(cfgDir, { recursive: true, force: true });
  await assertNoLeaks(host, { harness: lab.ctrd, graceMs: 10_000 });
}

/** The vm-mode Cocoon config the CRI vm suites share: the repo's guest assets, state in `cfgDir`. */
export function vmLabConfig(cfgDir: string): string {
  const out = path.join(repoRoot, "guest", "out");
  return [
    'mode = "vm"', 'grouping = "pod"', "[vm]", `kernel = "${out}/vmlinux"`, `initrd = "${out}/initramfs-9p.cpio.zst"`,
    `rootfs = "${out}/rootfs.erofs"`, 'accel = "auto"', "memory_mib = 384", "boot_timeout_sec = 150", `state_dir = "${cfgDir}/vm"`, "",
  ].join("\n");
}

/** Pids of QEMU processes on the host (VM tests count them before and after). */
export function qemuPids(): number[] {
  return readdirSync("/proc").filter((p) => /^\d+$/.test(p)).map(Number).filter((p) => {
    try {
      return readFileSync(`/proc/${p}/cmdline`, "utf8").startsWith("qemu-system");
    } catch {
      return false;
    }
  });
}
