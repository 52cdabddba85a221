// Carries the pod's network into the VM the way Kata does: inside the pod's network namespace
// (made by the CNI plugin), a tap device for QEMU is joined to the CNI veth by tc mirred redirects
// in both directions, and the guest interface gets the veth's MAC, addresses and routes.
import { runChild } from "../../sys/children.js";
import { failedPrecondition } from "../../core/errors.js";

export interface PodInterface {
  name: string;
  mac: string;
  mtu: number;
  addresses: string[];
}

export interface PodRoute {
  destination: string;
  gateway: string;
}

export interface PodNetwork {
  netns: string;
  iface: PodInterface;
  routes: PodRoute[];
  tap: string;
}

export const TAP_NAME = "tap0_cocoon";

export async function inNetns(netns: string, cmd: string, args: string[]): Promise<string> {
  const r = await runChild("nsenter", [`--net=${netns}`, "--", cmd, ...args], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} in ${netns}: ${r.stderr.trim() || `exit ${r.code}`}`);
  return r.stdout;
}

interface IpAddrJson {
  ifname: string;
  address?: string;
  mtu?: number;
  link_type?: string;
  addr_info?: Array<{ family: string; local: string; prefixlen: number; scope?: string }>;
}

/** Reads the pod's interface (the first non-loopback one with an address) and routes. */
export async function inspectPodNetwork(netns: string): Promise<PodNetwork | undefined> {
  const addrs = JSON.parse(await inNetns(netns, "ip", ["-j", "addr", "show"])) as IpAddrJson[];
  const iface = addrs.find((a) => a.link_type !== "loopback" && a.ifname !== TAP_NAME && (a.addr_info ?? []).some((i) => i.family === "inet" || i.family === "inet6" && i.scope === "global"));
  if (!iface || !iface.address) return undefined;
  const routes = JSON.parse(await inNetns(netns, "ip", ["-j", "route", "show", "dev", iface.ifname])) as Array<{ dst: string; gateway?: string }>;
  return {
    netns,
    iface: {
      name: iface.ifname,
      mac: iface.address,
      mtu: iface.mtu ?? 1500,
      addresses: (iface.addr_info ?? []).filter((i) => i.family === "inet" || i.scope === "global").map((i) => `${i.local}/${i.prefixlen}`),
    },
    routes: routes.filter((r) => r.gateway).map((r) => ({ destination: r.dst, gateway: r.gateway! })),
    tap: TAP_NAME,
  };
}

/** Creates the tap device and the two redirects. Undone by teardownTap (or by the netns going away). */
export async function setupTap(net: PodNetwork) {
  const run = (cmd: string, ...args: string[]) => inNetns(net.netns, cmd, args);
  try {
    await run("ip", "tuntap", "add", "dev", net.tap, "mode", "tap");
    await run("ip", "link", "set", net.tap, "mtu", String(net.iface.mtu), "up");
    for (const [from, to] of [[net.iface.name, net.tap], [net.tap, net.iface.name]] as const) {
      await run("tc", "qdisc", "add", "dev", from, "ingress");
      await run("tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0", "0",
        "action", "mirred", "egress", "redirect", "dev", to);
    }
  } catch (err) {
    await teardownTap(net.netns, net.iface.name).catch(() => undefined);
    throw failedPrecondition(`cannot wire the pod network into the VM: ${(err as Error).message}`);
  }
}

export async function teardownTap(netns: string, ifaceName: string) {
  await inNetns(netns, "tc", ["qdisc", "del", "dev", ifaceName, "ingress"]).catch(() => undefined);
  await inNetns(netns, "ip", ["link", "del", TAP_NAME]).catch(() => undefined);
}
