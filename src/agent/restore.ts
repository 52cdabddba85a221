// A VM restored from a template snapshot wakes up as the template was: its clock at the snapshot's
// time, no shared directories (QEMU cannot migrate a mounted 9p share, so the template never mounts
// them), and the template's NIC MAC. Restored brings it to this pod before any other call.
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import type { Sys } from "../sys/types.js";
import type { Logger } from "../core/log.js";
import { changeLinkMac } from "./network.js";
import { KERNEL_PARAM, NINEP_SHARE_OPTIONS, SHARE_MOUNT_ROOT } from "../core/guest-abi.js";

export interface RestoreRequest {
  unixTimeNs: bigint;
  templateMac: string;
  mac: string;
  entropy: Uint8Array;
}

export interface RestoreEnv {
  /** Where virtio 9p devices show up with their mount tags. */
  ninepDevices: string;
  mountRoot: string;
  cmdline: string;
  mounts: string;
  urandom: string;
}

const GUEST: RestoreEnv = {
  ninepDevices: "/sys/bus/virtio/drivers/9pnet_virtio",
  mountRoot: SHARE_MOUNT_ROOT,
  cmdline: "/proc/cmdline",
  mounts: "/proc/mounts",
  urandom: "/dev/urandom",
};

/** Mount tags of the 9p devices that are shares (not the guest root) and not mounted yet. */
export function unmountedShares(env: RestoreEnv): string[] {
  if (!existsSync(env.ninepDevices)) return [];
  const rootParam = `${KERNEL_PARAM.root}=`;
  const rootTag = readFileSync(env.cmdline, "utf8").split(/\s+/).find((w) => w.startsWith(rootParam))?.slice(rootParam.length);
  const mounted = new Set(readFileSync(env.mounts, "utf8").split("\n").map((l) => l.split(" ")[1]));
  const tags: string[] = [];
  for (const dev of readdirSync(env.ninepDevices)) {
    let tag: string;
    try {
      tag = readFileSync(`${env.ninepDevices}/${dev}/mount_tag`, "utf8").replace(/\0/g, "").trim();
    } catch {
      continue;
    }
    if (tag && tag !== rootTag && !mounted.has(`${env.mountRoot}/${tag}`)) tags.push(tag);
  }
  return tags.sort();
}

export async function restored(req: RestoreRequest, sys: Sys, log: Logger, env: RestoreEnv = GUEST): Promise<void> {
  if (req.unixTimeNs > 0n) sys.setRealtimeClock(req.unixTimeNs);
  if (req.entropy.length > 0) appendFileSync(env.urandom, req.entropy);
  const shares = unmountedShares(env);
  for (const tag of shares) {
    mkdirSync(`${env.mountRoot}/${tag}`, { recursive: true });
    sys.mount(tag, `${env.mountRoot}/${tag}`, "9p", 0, NINEP_SHARE_OPTIONS);
  }
  if (req.mac && req.templateMac) await changeLinkMac(req.templateMac, req.mac);
  log.info("restored from template", { shares: shares.join(","), mac: req.mac || undefined });
}
