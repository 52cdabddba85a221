// Every registered runtime mode, ready for a behaviour test that must hold in all of them: each mode's
// shipped config (deploy/config), with its state inside a private dir, as the lab writes it.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import path from "node:path";
import { after, before } from "node:test";
import { MODES } from "../../src/runtime/modes.js";
import { writeCocoonConfig } from "../../src/cli/lab/lab.js";
import { cocoonRuntime, type CriRuntimeEntry } from "../../src/cli/lab/containerd-config.js";
import { repoRoot } from "./util.js";
import { startContainerd, type Containerd } from "./containerd.js";
import { BUSYBOX_IMAGE, importImage } from "./image.js";
import { assertNoLeaks, snapshotHost, type HostSnapshot } from "./leaks.js";

export interface ModeUnderTest {
  /** The config's mode name (runc, vm, ...). */
  name: string;
  /** Its RuntimeClass handler, for CRI tests. */
  handler: string;
  /** The Cocoon config file written for it. */
  config: string;
  /** `ctr run` / `ctr task` runtime flags that select it. */
  rt: string[];
  /** Its CRI runtime setting (RuntimeMode.privilegedWithoutHostDevices). */
  privilegedWithoutHostDevices: boolean;
}

/** Writes one config per registered mode into `dir` (root-private, e.g. from mkdtemp). */
export function modesUnderTest(dir: string, debug = true): ModeUnderTest[] {
  mkdirSync(path.join(dir, "cocoon"), { recursive: true, mode: 0o700 });
  return MODES.map((m) => {
    const config = writeCocoonConfig(repoRoot, dir, m.handler, debug);
    return { name: m.name, handler: m.handler, config, rt: ["--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", config], privilegedWithoutHostDevices: m.privilegedWithoutHostDevices };
  });
}

/** ctr annotations that make a container the sandbox of pod `pod`, or a member of it (as the CRI plugin marks them). */
export function podAnnotations(pod: string, role: "sandbox" | "container"): string[] {
  return ["--annotation", `io.kubernetes.cri.sandbox-id=${pod}`, "--annotation", `io.kubernetes.cri.container-type=${role}`];
}

/** Each mode's handler as a CRI runtime, as `cocoon install` registers it but with the config written here. */
export function criRuntimes(modes: ModeUnderTest[]): Record<string, CriRuntimeEntry> {
  return Object.fromEntries(modes.map((m) => [m.handler, cocoonRuntime(m.config, m.privilegedWithoutHostDevices)]));
}

/**
 * A private containerd for the enclosing describe, with the busybox image and a log of `ctr events`;
 * stopped after it, then `dir` removed and the host checked for leaks.
 */
export function containerdForModes(dir: string): { ctrd(): Containerd; eventLog(): string } {
  let host: HostSnapshot;
  let ctrd: Containerd;
  let events: ChildProcess | undefined;
  let log = "";
  before(async () => {
    host = await snapshotHost();
    ctrd = await startContainerd({ pathPrepend: [path.join(repoRoot, "bin")] });
    await importImage(ctrd, BUSYBOX_IMAGE);
    events = spawn("ctr", ["--address", ctrd.address, "events"], { stdio: ["ignore", "pipe", "ignore"] });
    events.stdout!.on("data", (d) => (log += d));
  });
  after(async () => {
    events?.kill();
    await ctrd?.stop();
    await assertNoLeaks(host, { harness: ctrd });
    rmSync(dir, { recursive: true, force: true });
  });
  return { ctrd: () => ctrd, eventLog: () => log };
}
