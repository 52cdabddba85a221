// The pod's network inside the VM: interfaces found by MAC address, renamed, addressed and brought
// up with busybox `ip`, then routes, the hostname and /etc/hosts. Every container uses this network
// (their specs lose the network namespace).
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { runChild } from "../sys/children.js";
import type { Sys } from "../sys/types.js";
import { MS_BIND } from "../sys/types.js";
import { invalidArgument, notFound, unknownError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { GUEST_HOSTNAME } from "../core/guest-abi.js";

export interface NetInterface {
  mac: string;
  name: string;
  addresses: string[];
  mtu: number;
}

export interface NetRoute {
  destination: string;
  gateway: string;
  device: string;
}

export interface NetworkConfig {
  interfaces: NetInterface[];
  routes: NetRoute[];
  hostname: string;
}

const SYS_NET = "/sys/class/net";
/** Writable copy of /etc/hosts, bind-mounted over the (read-only) root's file. */
const HOSTS_COPY = "/run/cocoon/hosts";

async function ip(args: string[], opts: { okIfExists?: boolean } = {}): Promise<void> {
  const r = await runChild("ip", args, { timeoutMs: 10_000 });
  if (r.code === 0) return;
  const msg = (r.stderr || r.stdout).trim();
  if (opts.okIfExists && /exists/i.test(msg)) return;
  throw unknownError(`ip ${args.join(" ")}: ${msg || `exit status ${r.code}`}`);
}

/** The guest link whose MAC is `mac`, if any. */
export function linkByMac(mac: string, sysNet = SYS_NET): string | undefined {
  const want = mac.trim().toLowerCase();
  for (const name of readdirSync(sysNet)) {
    try {
      if (readFileSync(`${sysNet}/${name}/address`, "utf8").trim().toLowerCase() === want) return name;
    } catch {}
  }
  return undefined;
}

/** Gives the link that has MAC `from` the MAC `to` (a clone's NIC still has the template's). */
export async function changeLinkMac(from: string, to: string): Promise<void> {
  if (linkByMac(to)) return;
  const name = linkByMac(from);
  if (!name) throw notFound(`no guest network interface has MAC ${from}`);
  await ip(["link", "set", "dev", name, "address", to]);
}

/** A hot-plugged NIC may appear a moment after the host asked. */
async function waitForLink(mac: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const name = linkByMac(mac);
    if (name) return name;
    if (Date.now() >= deadline) throw notFound(`no guest network interface has MAC ${mac}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function hostsFile(hostname: string, addresses: string[]): string {
  let text = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n";
  const name = hostname || GUEST_HOSTNAME;
  const first = addresses.map((a) => a.split("/")[0]!).find((a) => a && !a.includes(":"));
  text += `${first ?? "127.0.1.1"}\t${name}\n`;
  return text;
}

export async function setupNetwork(cfg: NetworkConfig, sys: Sys, log: Logger): Promise<void> {
  const allAddresses: string[] = [];
  for (const itf of cfg.interfaces) {
    if (!itf.mac) throw invalidArgument("interface without a MAC address");
    let name = await waitForLink(itf.mac, 3000);
    if (itf.name && itf.name !== name) {
      if (existsSync(`${SYS_NET}/${itf.name}`)) throw invalidArgument(`guest interface name ${itf.name} is taken`);
      await ip(["link", "set", "dev", name, "down"]);
      await ip(["link", "set", "dev", name, "name", itf.name]);
      name = itf.name;
    }
    if (itf.mtu) await ip(["link", "set", "dev", name, "mtu", String(itf.mtu)]);
    for (const cidr of itf.addresses) {
      if (!cidr.includes("/")) throw invalidArgument(`address ${cidr} is not in CIDR form`);
      await ip(["addr", "add", cidr, "dev", name], { okIfExists: true });
      allAddresses.push(cidr);
    }
    await ip(["link", "set", "dev", name, "up"]);
    log.info("interface configured", { mac: itf.mac, name, addresses: itf.addresses.join(","), mtu: itf.mtu || undefined });
  }
  for (const r of cfg.routes) {
    const dest = r.destination || "default";
    const args = ["route", "replace", dest];
    if (r.gateway) args.push("via", r.gateway);
    if (r.device) args.push("dev", r.device);
    await ip(args);
    log.info("route added", { destination: dest, gateway: r.gateway || undefined, device: r.device || undefined });
  }
  if (cfg.hostname) {
    const res = await runChild("hostname", [cfg.hostname], { timeoutMs: 5000 });
    if (res.code !== 0) throw unknownError(`hostname ${cfg.hostname}: ${res.stderr.trim()}`);
  }
  if (cfg.hostname || allAddresses.length > 0) writeHosts(hostsFile(cfg.hostname, allAddresses), sys, log);
}

function writeHosts(text: string, sys: Sys, log: Logger) {
  try {
    mkdirSync("/run/cocoon", { recursive: true });
    const mounted = existsSync(HOSTS_COPY);
    // Rewritten in place: the bind mount follows the inode, not the name.
    writeFileSync(HOSTS_COPY, text);
    if (!mounted) sys.mount(HOSTS_COPY, "/etc/hosts", "", MS_BIND, "");
  } catch (err) {
    log.warn("could not write /etc/hosts", { err: (err as Error).message });
  }
}
