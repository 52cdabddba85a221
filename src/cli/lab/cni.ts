// A private CNI network for a private containerd: a Linux bridge with a random name and a /24 that nothing
// on the host uses yet, host-local IPAM with its state inside the private directory, no masquerading (pods
// talk to each other and to the host, nothing else). Removing it deletes the bridge and the IPAM state.
import { randomInt } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { runCommand } from "../install/host.js";
import { isPrivateDir } from "../../shim/statefs.js";

/** Debian's containernetworking-plugins. */
export const CNI_PLUGIN_DIR = "/usr/lib/cni";
export const CNI_PLUGINS = ["bridge", "host-local", "loopback"] as const;
/** Bridge names are `cni-cocoon` + 4 hex digits: 14 characters, within Linux's 15. */
export const BRIDGE_PREFIX = "cni-cocoon";
/** Temp dirs whose CNI configs other private instances may be using (the harness's and the demo's). */
export const LAB_DIR_PREFIXES = ["cocoon-ctrd-", "cocoon-demo-"];
const CONFLIST_NAME = "10-cocoon.conflist";

export interface CniNetwork {
  /** CNI network name. */
  name: string;
  bridge: string;
  /** e.g. 10.88.57.0/24 */
  subnet: string;
  /** The bridge's own address, the pods' gateway. */
  gateway: string;
  confDir: string;
  /** host-local's state (leases). */
  ipamDir: string;
  binDir: string;
  /** net.ipv4.ip_forward when planned: the bridge plugin turns it on for a gateway, and removal undoes that. */
  ipForwardBefore?: string;
}

export interface PlanOptions {
  confDir: string;
  ipamDir: string;
  binDir?: string;
  /** Subnets to stay away from besides those found on the host; mostly for tests. */
  avoid?: string[];
}

/** [network, prefix length] as unsigned 32-bit numbers. */
function parseCidr(cidr: string): [number, number] | undefined {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)(?:\/(\d+))?$/.exec(cidr.trim());
  if (!m) return undefined;
  const len = m[5] === undefined ? 32 : Number(m[5]);
  const octets = m.slice(1, 5).map(Number);
  if (len > 32 || octets.some((o) => o > 255)) return undefined;
  const addr = octets.reduce((a, o) => a * 256 + o, 0);
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return [(addr & mask) >>> 0, len];
}

/** True when the two CIDRs share any address. */
export function cidrsOverlap(a: string, b: string): boolean {
  const x = parseCidr(a);
  const y = parseCidr(b);
  if (!x || !y) return false;
  const len = Math.min(x[1], y[1]);
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return ((x[0] & mask) >>> 0) === ((y[0] & mask) >>> 0);
}

/** IPv4 prefixes in use on the host: interface addresses and routes (the default route excepted). */
export async function hostSubnets(): Promise<string[]> {
  const out: string[] = [];
  const addrs = await runCommand(["ip", "-4", "-o", "addr", "show"], 5_000);
  for (const m of addrs.stdout.matchAll(/\binet (\d+\.\d+\.\d+\.\d+\/\d+)/g)) out.push(m[1]!);
  const routes = await runCommand(["ip", "-4", "route", "show", "table", "all"], 5_000);
  for (const line of routes.stdout.split("\n")) {
    const first = line.trim().split(/\s+/);
    // "local 10.0.0.1 dev …", "broadcast …" and plain "10.0.0.0/24 dev …"
    const dst = ["local", "broadcast", "unicast", "anycast", "multicast"].includes(first[0] ?? "") ? first[1] : first[0];
    if (dst && dst !== "default" && parseCidr(dst)) out.push(dst);
  }
  return out;
}

/** Subnets of the CNI configs of other private instances on this host, which may not have a bridge yet. */
export function labSubnets(exceptConfDir?: string): string[] {
  const out: string[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return out;
  }
  for (const n of names) {
    if (!LAB_DIR_PREFIXES.some((p) => n.startsWith(p))) continue;
    if (!isPrivateDir(join(tmpdir(), n))) continue;
    const confDir = join(tmpdir(), n, "cni", "conf");
    if (confDir === exceptConfDir) continue;
    try {
      for (const f of readdirSync(confDir)) {
        for (const m of readFileSync(join(confDir, f), "utf8").matchAll(/"subnet"\s*:\s*"([^"]+)"/g)) out.push(m[1]!);
      }
    } catch {
      // not a CNI-using instance, or removed meanwhile
    }
  }
  return out;
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

const randomHex4 = () => randomInt(0, 0x10000).toString(16).padStart(4, "0");

/** Picks a free bridge name and a free 10.88.X.0/24; changes nothing. */
export async function planCniNetwork(o: PlanOptions): Promise<CniNetwork> {
  let bridge = "";
  for (let i = 0; i < 50 && !bridge; i++) {
    const candidate = BRIDGE_PREFIX + randomHex4();
    if (!existsSync(`/sys/class/net/${candidate}`)) bridge = candidate;
  }
  if (!bridge) throw new Error("cannot find a free bridge name");
  const used = [...(await hostSubnets()), ...labSubnets(o.confDir), ...(o.avoid ?? [])];
  // Random order so that concurrent planners rarely try the same one first.
  const thirds = Array.from({ length: 256 }, (_, i) => i);
  for (let i = thirds.length - 1; i > 0; i--) {
    const j = randomInt(0, i + 1);
    [thirds[i], thirds[j]] = [thirds[j]!, thirds[i]!];
  }
  const third = thirds.find((t) => !used.some((u) => cidrsOverlap(u, `10.88.${t}.0/24`)));
  if (third === undefined) throw new Error("no free /24 in 10.88.0.0/16 for the pod network");
  const ipForward = readIpForward();
  return {
    name: `cocoon-${bridge.slice(BRIDGE_PREFIX.length)}`,
    bridge,
    subnet: `10.88.${third}.0/24`,
    gateway: `10.88.${third}.1`,
    confDir: o.confDir,
    ipamDir: o.ipamDir,
    binDir: o.binDir ?? CNI_PLUGIN_DIR,
    ...(ipForward !== undefined ? { ipForwardBefore: ipForward } : {}),
  };
}

const IP_FORWARD = "/proc/sys/net/ipv4/ip_forward";

export function readIpForward(): string | undefined {
  try {
    return readFileSync(IP_FORWARD, "utf8").trim();
  } catch {
    return undefined;
  }
}

/**
 * Turns IPv4 forwarding off again if it was off before this network and no other private bridge is left
 * that may rely on it. Returns true when it did.
 */
export function restoreIpForward(before: string | undefined): boolean {
  if (before !== "0" || readIpForward() !== "1") return false;
  if (listDir("/sys/class/net").some((n) => n.startsWith(BRIDGE_PREFIX))) return false;
  try {
    writeFileSync(IP_FORWARD, "0\n");
    return true;
  } catch {
    return false;
  }
}

/** The conflist containerd's CRI plugin reads from its conf dir. */
export function bridgeConflist(n: CniNetwork): Record<string, unknown> {
  return {
    cniVersion: "0.4.0",
    name: n.name,
    plugins: [
      {
        type: "bridge",
        bridge: n.bridge,
        isGateway: true,
        ipMasq: false,
        hairpinMode: true,
        ipam: {
          type: "host-local",
          // Default is /var/lib/cni/networks/<name>, which would outlive the instance.
          dataDir: n.ipamDir,
          ranges: [[{ subnet: n.subnet, gateway: n.gateway }]],
          routes: [{ dst: "0.0.0.0/0" }],
        },
      },
      { type: "loopback" },
    ],
  };
}

/** The network a conflist written by writeCniConfig describes (to clean up after an abandoned instance). */
export function readCniNetwork(confDir: string, ipamDir: string): CniNetwork | undefined {
  try {
    const doc = JSON.parse(readFileSync(join(confDir, CONFLIST_NAME), "utf8")) as { name?: string; plugins?: { type?: string; bridge?: string; ipam?: { ranges?: { subnet?: string; gateway?: string }[][] } }[] };
    const bridge = doc.plugins?.find((p) => p.type === "bridge");
    const range = bridge?.ipam?.ranges?.[0]?.[0];
    if (!doc.name || !bridge?.bridge?.startsWith(BRIDGE_PREFIX) || !range?.subnet) return undefined;
    const net: CniNetwork = { name: doc.name, bridge: bridge.bridge, subnet: range.subnet, gateway: range.gateway ?? "", confDir, ipamDir, binDir: CNI_PLUGIN_DIR };
    try {
      net.ipForwardBefore = readFileSync(ipForwardFile(net), "utf8").trim();
    } catch {
      // unknown: leave the setting alone
    }
    return net;
  } catch {
    return undefined;
  }
}

/** Plugins missing from the bin dir (empty when all are there). */
export function missingCniPlugins(binDir = CNI_PLUGIN_DIR): string[] {
  return CNI_PLUGINS.filter((p) => !existsSync(join(binDir, p)));
}

/** Next to the conf dir, so that whoever cleans up after an abandoned instance can restore the setting. */
const ipForwardFile = (n: Pick<CniNetwork, "confDir">) => join(dirname(n.confDir), "ip_forward.before");

export function writeCniConfig(n: CniNetwork): string {
  mkdirSync(n.confDir, { recursive: true });
  mkdirSync(n.ipamDir, { recursive: true });
  if (n.ipForwardBefore !== undefined) writeFileSync(ipForwardFile(n), `${n.ipForwardBefore}\n`);
  const file = join(n.confDir, CONFLIST_NAME);
  writeFileSync(file, JSON.stringify(bridgeConflist(n), null, 2) + "\n");
  return file;
}

/**
 * Deletes the bridge (the bridge plugin creates it on the first pod and never removes it) and host-local's
 * state. Returns what was still there (a bridge always is once a pod used it; leases are there only when some
 * pod's network was never torn down); never throws.
 */
export async function removeCniNetwork(n: CniNetwork): Promise<string[]> {
  const removed: string[] = [];
  if (existsSync(`/sys/class/net/${n.bridge}`)) {
    const r = await runCommand(["ip", "link", "delete", n.bridge], 10_000);
    removed.push(r.code === 0 ? `bridge ${n.bridge}` : `bridge ${n.bridge} (ip link delete failed: ${(r.stderr || r.spawnError || "").trim()})`);
  }
  restoreIpForward(n.ipForwardBefore);
  // host-local keeps one file per allocated address, named by the address, next to its lock file.
  const leases = listDir(join(n.ipamDir, n.name)).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f));
  if (leases.length) removed.push(`IP leases ${leases.join(", ")} in ${n.ipamDir}`);
  try {
    rmSync(n.ipamDir, { recursive: true, force: true });
  } catch {
    // goes with the private dir anyway
  }
  return removed;
}
