// Starting a pod VM from the template of its shape (template.ts keeps them on disk): build the
// template first when there is none, then restore a clone of it and tell its agent it was restored.
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import path from "node:path";
import type { Logger } from "../../core/log.js";
import type { AgentLink, ConnectAgent } from "./agent.js";
import { buildTemplate, lastLines, qemuSaid } from "./boot.js";
import type { Hypervisor, VmHandle, VmSpec } from "./hypervisor.js";
import { TEMPLATE_MAC } from "./qemu.js";
import { templateKey, type TemplateShape, type TemplateStore } from "./template.js";

/** A pod VM whose agent is on the line, and how it came up (times are Date.now() values). */
export interface Started {
  vm: VmHandle;
  link: AgentLink;
  how: string;
  buildMs?: number;
  spawnedAt: number;
  connectedAt: number;
}

export interface CloneDeps {
  hypervisor: Hypervisor;
  connect: ConnectAgent;
  templates: TemplateStore;
  /** The VMM binary (part of the template's shape). */
  qemu: string;
  log: Logger;
}

/**
 * A pod VM restored from the template of its shape, building the template first when there is none
 * and no other shim is building it. Undefined when the pod must boot instead (another build is under
 * way, or building or restoring failed: a template that failed to restore is dropped). `mac` is the
 * pod interface's MAC the guest takes over from the template's. Nothing of a failed clone is left.
 */
export async function startFromTemplate(d: CloneDeps, spec: VmSpec, deadline: number, mac: string): Promise<Started | undefined> {
  const { templates, log } = d;
  const shape: TemplateShape = { qemu: d.qemu, kernel: spec.kernel, initrd: spec.initrd, root: spec.root!, memoryMiB: spec.memoryMiB, vcpus: spec.vcpus, accel: spec.accel, tcgCacheMiB: spec.tcgCacheMiB, kernelParams: spec.kernelParams };
  const key = templateKey(shape);
  let how = "template";
  let buildMs: number | undefined;
  let tpl = templates.ready(key);
  if (!tpl) {
    const build = templates.claim(key, shape);
    if (!build) {
      log.info(templates.failedRecently(key) ? "VM template failed recently; booting this VM" : "VM template is being built by another shim; booting this VM");
      return undefined;
    }
    const t0 = Date.now();
    try {
      await buildTemplate(d.hypervisor, d.connect, { ...spec, runDir: build.dir, sharedDir: path.join(build.dir, "shared"), netns: undefined, tap: undefined, template: { role: "build", memoryFile: build.memoryFile, stateFile: build.stateFile } }, deadline);
      tpl = build.commit();
      how = "template (built now)";
      buildMs = Date.now() - t0;
      log.info("VM template built", { key, ms: buildMs, dir: tpl.dir });
    } catch (err) {
      build.abandon();
      log.warn("VM template build failed; booting this VM", { err: (err as Error).message });
      return undefined;
    }
  }
  let vm: VmHandle | undefined;
  let link: AgentLink | undefined;
  try {
    vm = await d.hypervisor.start({ ...spec, template: { role: "clone", memoryFile: tpl.memoryFile, stateFile: tpl.stateFile } });
    const spawnedAt = Date.now();
    link = await d.connect(vm, deadline - Date.now());
    const connectedAt = Date.now();
    await link.agent.restored({
      unixTimeNs: BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6)),
      templateMac: TEMPLATE_MAC, mac, entropy: randomBytes(32),
    }, { timeoutMs: Math.max(1000, deadline - Date.now()) });
    return { vm, link, how, buildMs, spawnedAt, connectedAt };
  } catch (err) {
    link?.close();
    vm?.kill();
    if (vm) await vm.exited;
    rmSync(path.join(spec.runDir, "qmp.sock"), { force: true });
    templates.discard(tpl.key, true);
    log.warn("restoring the VM template failed; dropped it, booting this VM", { err: (err as Error).message, qemu: qemuSaid(spec.runDir), console: vm ? lastLines(vm.consoleLog, 5) ?? "(no console output)" : "" });
    return undefined;
  }
}
