// Port forwarding into a vm pod, measured end to end the way kubectl port-forward goes: CRI PortForward,
// a WebSocket to containerd's streaming server, containerd's dial in the pod's namespace, the shim's
// forwarder, the agent, busybox httpd in the guest. Not part of `npm run bench` (it needs guest/out).
//   node dist/js/bench/portforward.js [--requests 20] [--mib 16]
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { CriClient } from "../src/cli/cri/client.js";
import { forwardOnce, openPortForward } from "../src/cli/cri/portforward.js";
import { toCriConfigs, validatePodSpec } from "../src/cli/cri/pod-spec.js";
import { removeAllPods, startPod } from "../src/cli/lab/pod.js";
import { startCriLab } from "../test/helpers/cri.js";
import { BUSYBOX_IMAGE } from "../test/helpers/image.js";
import { repoRoot } from "../test/helpers/util.js";

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

/**
 * Milliseconds from the PortForward call until `bytes` bytes came back (containerd keeps a forward
 * open up to 1 s after the server closed, waiting for the client's side, so the end is not timed).
 */
async function timedGet(cri: CriClient, podSandboxId: string, file: string, bytes: number): Promise<number> {
  const t0 = performance.now();
  const { url } = await cri.portForward({ podSandboxId, port: [8080] });
  const stream = await openPortForward(url);
  let n = 0;
  await new Promise<void>((resolve, reject) => {
    stream.on("data", (d: Buffer) => {
      n += d.length;
      if (n >= bytes) resolve();
    });
    stream.once("close", () => reject(new Error(`only ${n} of ${bytes} bytes came back`)));
    stream.write(`GET /${file} HTTP/1.0\r\n\r\n`);
  });
  const ms = performance.now() - t0;
  stream.destroy();
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main() {
  const requests = arg("requests", 20);
  const mib = arg("mib", 16);
  const out = path.join(repoRoot, "guest", "out");
  const dir = mkdtempSync(path.join(os.tmpdir(), "cocoon-pfw-bench-"));
  const { ctrd, cri } = await startCriLab("cocoon", path.join(dir, "cocoon-vm.toml"), [
    'mode = "vm"', "[vm]", `kernel = "${out}/vmlinux"`, `initrd = "${out}/initramfs-9p.cpio.zst"`, `rootfs = "${out}/rootfs.erofs"`,
    "memory_mib = 384", "boot_timeout_sec = 150", `state_dir = "${dir}/vm"`, "",
  ].join("\n"), 180_000);
  try {
    const script = `mkdir -p /tmp/www && echo ok > /tmp/www/small && dd if=/dev/zero of=/tmp/www/big bs=1M count=${mib} 2>/dev/null && echo ready && exec httpd -f -p 8080 -h /tmp/www`;
    const spec = validatePodSpec({ name: `pfw-bench-${process.pid}`, runtimeHandler: "cocoon", containers: [{ name: "web", image: BUSYBOX_IMAGE, command: ["sh", "-c", script] }] });
    const pod = await startPod(cri, toCriConfigs(spec, { logRoot: path.join(dir, "pods") }), { timeoutMs: 180_000 });
    const get = (file: string) => forwardOnce(cri, pod.id, 8080, Buffer.from(`GET /${file} HTTP/1.0\r\n\r\n`), 120_000);
    for (let i = 0; ; i++) {
      const r = await get("small");
      if (r.data.toString().endsWith("ok\n")) break;
      if (i > 60) throw new Error(`httpd never answered: ${r.error}`);
      await new Promise((res) => setTimeout(res, 500));
    }
    const small = (await get("small")).data.length;
    const times: number[] = [];
    for (let i = 0; i < requests; i++) times.push(await timedGet(cri, pod.id, "small", small));
    const bigHead = (await get("big")).data;
    const secs = (await timedGet(cri, pod.id, "big", bigHead.length)) / 1000;
    const body = bigHead.length - bigHead.indexOf("\r\n\r\n") - 4;
    if (body !== mib << 20) throw new Error(`got ${body} bytes of ${mib << 20}`);
    console.log(`small page (${small} B) through port-forward, PortForward call to whole reply: median ${median(times).toFixed(1)} ms, min ${Math.min(...times).toFixed(1)} ms, max ${Math.max(...times).toFixed(1)} ms over ${requests}`);
    console.log(`${mib} MiB download, PortForward call to last byte: ${secs.toFixed(2)} s, ${(mib / secs).toFixed(1)} MiB/s`);
  } finally {
    await removeAllPods(cri, 60_000).catch(() => {});
    cri.close();
    await ctrd.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
