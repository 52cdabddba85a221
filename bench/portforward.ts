// Port forwarding into a vm pod, measured end to end the way kubectl port-forward goes: CRI PortForward,
// a WebSocket to containerd's streaming server, containerd's dial in the pod's namespace, the shim's
// forwarder, the agent, busybox httpd in the guest. Not part of `npm run bench` (it needs guest/out).
//   node dist/js/bench/portforward.js [--requests 20] [--mib 16]
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { forwardOnce } from "../src/cli/cri/portforward.js";
import { toCriConfigs, validatePodSpec } from "../src/cli/cri/pod-spec.js";
import { removeAllPods, startPod } from "../src/cli/lab/pod.js";
import { startCriLab } from "../test/helpers/cri.js";
import { BUSYBOX_IMAGE } from "../test/helpers/image.js";
import { repoRoot } from "../test/helpers/util.js";

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
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
    const times: number[] = [];
    for (let i = 0; i < requests; i++) {
      const t0 = performance.now();
      const r = await get("small");
      times.push(performance.now() - t0);
      if (!r.data.toString().endsWith("ok\n")) throw new Error(`bad reply: ${r.error}`);
    }
    const t0 = performance.now();
    const big = await get("big");
    const secs = (performance.now() - t0) / 1000;
    const body = big.data.length - big.data.indexOf("\r\n\r\n") - 4;
    if (body !== mib << 20) throw new Error(`got ${body} bytes of ${mib << 20}: ${big.error}`);
    console.log(`small page through port-forward (PortForward call, WebSocket, connect, request, reply, close): median ${median(times).toFixed(1)} ms, min ${Math.min(...times).toFixed(1)} ms, max ${Math.max(...times).toFixed(1)} ms over ${requests}`);
    console.log(`${mib} MiB download: ${secs.toFixed(2)} s, ${(mib / secs).toFixed(1)} MiB/s`);
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
