// The TTRPC edge: converts containerd.task.v2 wire messages into SDK requests and back. This is the
// only module that knows the Task service's message types; errors keep their kind (see errors.ts).
import { readFile } from "node:fs/promises";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { EmptySchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Status as WireStatus } from "../gen/containerd/types/task_pb.js";
import {
  ConnectResponseSchema, CreateTaskResponseSchema, DeleteResponseSchema, PidsResponseSchema,
  StartResponseSchema, StateResponseSchema, StatsResponseSchema, Task, WaitResponseSchema,
} from "../gen/containerd/task/v2/shim_pb.js";
import { ProcessDetailsSchema } from "../gen/containerd/runc/options/oci_pb.js";
import { toBinary } from "@bufbuild/protobuf";
import type { ServiceImpl, TtrpcServer } from "../ttrpc/index.js";
import { invalidArgument, failedPrecondition } from "./errors.js";
import { decodeOptions } from "./options.js";
import type { OciSpec, ProcessRef } from "./runtime.js";
import { exitedAtOrZero, type ProcessStatus, type TaskManager } from "./tasks.js";
import type { Logger } from "./log.js";

export const TASK_SERVICE_V2 = "containerd.task.v2.Task";
export const TASK_SERVICE_V3 = "containerd.task.v3.Task";
const OCI_PROCESS = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const OCI_RESOURCES = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

const STATUS: Record<ProcessStatus, WireStatus> = {
  created: WireStatus.CREATED,
  running: WireStatus.RUNNING,
  stopped: WireStatus.STOPPED,
  paused: WireStatus.PAUSED,
};

const ref = (id: string, execId = ""): ProcessRef => ({ containerId: id, execId });

function parseJsonAny(typeUrl: string, want: string, value: Uint8Array, what: string): Record<string, unknown> {
  if (typeUrl && !typeUrl.endsWith(want.slice(want.lastIndexOf("/")))) {
    throw invalidArgument(`${what}: unexpected type ${typeUrl}, want ${want}`);
  }
  try {
    const v = JSON.parse(new TextDecoder().decode(value));
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
    return v;
  } catch (err) {
    throw invalidArgument(`${what}: malformed JSON: ${(err as Error).message}`);
  }
}

/** containerd lays bundles out as <state>/io.containerd.runtime.v2.task/<namespace>/<id>. */
export function namespaceFromBundle(bundle: string, fallback: string): string {
  const ns = path.basename(path.dirname(bundle));
  return ns && ns !== "." && ns !== "/" ? ns : fallback;
}

async function readSpec(bundle: string): Promise<OciSpec> {
  let text: string;
  try {
    text = await readFile(path.join(bundle, "config.json"), "utf8");
  } catch (err) {
    throw invalidArgument(`cannot read OCI spec ${bundle}/config.json: ${(err as NodeJS.ErrnoException).code}`);
  }
  try {
    const spec = JSON.parse(text);
    if (typeof spec !== "object" || spec === null) throw new Error("not an object");
    return spec as OciSpec;
  } catch (err) {
    throw invalidArgument(`malformed OCI spec ${bundle}/config.json: ${(err as Error).message}`);
  }
}

export interface ServiceOptions {
  tasks: TaskManager;
  namespace: string;
  log: Logger;
  /** Called after Shutdown has been answered and the daemon should exit. */
  exit: () => void;
  /** The Cocoon config file the daemon runs with, to reject a container configured for another one. */
  configSource: string;
  /** A container's bundle is in use (Create), or no longer (its Delete, or a failed Create). */
  onBundle?: (id: string, bundle: string) => void;
  onBundleGone?: (id: string) => void;
}

export function registerTaskService(server: TtrpcServer, o: ServiceOptions) {
  const { tasks } = o;
  const impl: ServiceImpl<typeof Task> = {
    async create(req) {
      if (!req.id) throw invalidArgument("create: missing container id");
      if (!req.bundle || !path.isAbsolute(req.bundle)) throw invalidArgument(`create: bundle must be an absolute path, got "${req.bundle}"`);
      if (req.options?.typeUrl) {
        const opts = decodeOptions(req.options.typeUrl, req.options.value);
        if (opts.kind === "generic" && opts.configPath && o.configSource && opts.configPath !== o.configSource) {
          throw failedPrecondition(`container ${req.id} names config ${opts.configPath} but this shim runs with ${o.configSource}`);
        }
      }
      const spec = await readSpec(req.bundle);
      o.onBundle?.(req.id, req.bundle);
      let pid: number;
      try {
        ({ pid } = await tasks.create({
          id: req.id,
          namespace: namespaceFromBundle(req.bundle, o.namespace),
          bundle: req.bundle,
          rootfs: req.rootfs.map((m) => ({ type: m.type, source: m.source, target: m.target, options: [...m.options] })),
          stdio: { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal },
          checkpoint: req.checkpoint,
          spec,
          ...(req.options?.typeUrl ? { options: { typeUrl: req.options.typeUrl, value: req.options.value } } : {}),
        }));
      } catch (err) {
        o.onBundleGone?.(req.id);
        throw err;
      }
      return create(CreateTaskResponseSchema, { pid });
    },
    async start(req) {
      const { pid } = await tasks.start(ref(req.id, req.execId));
      return create(StartResponseSchema, { pid });
    },
    async delete(req) {
      const r = await tasks.delete(ref(req.id, req.execId));
      if (!req.execId) o.onBundleGone?.(req.id);
      return create(DeleteResponseSchema, { pid: r.pid, exitStatus: r.exitStatus, exitedAt: exitedAtOrZero(r.exitedAt) });
    },
    async exec(req) {
      if (!req.execId) throw invalidArgument("exec: missing exec id");
      if (!req.spec) throw invalidArgument("exec: missing process spec");
      const proc = parseJsonAny(req.spec.typeUrl, OCI_PROCESS, req.spec.value, "exec spec");
      await tasks.exec({
        containerId: req.id,
        execId: req.execId,
        stdio: { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal },
        process: proc,
      });
      return create(EmptySchema);
    },
    async state(req) {
      const s = tasks.state(ref(req.id, req.execId));
      return create(StateResponseSchema, {
        id: s.id,
        bundle: s.bundle,
        pid: s.pid,
        status: STATUS[s.status],
        stdin: s.stdio.stdin,
        stdout: s.stdio.stdout,
        stderr: s.stdio.stderr,
        terminal: s.stdio.terminal,
        exitStatus: s.exitStatus,
        exitedAt: exitedAtOrZero(s.exitedAt),
      });
    },
    async kill(req) {
      await tasks.kill(ref(req.id, req.execId), req.signal, req.all);
      return create(EmptySchema);
    },
    async wait(req) {
      const e = await tasks.wait(ref(req.id, req.execId));
      return create(WaitResponseSchema, { exitStatus: e.status, exitedAt: timestampFromDate(e.at) });
    },
    async pids(req) {
      const list = await tasks.pids(req.id);
      return create(PidsResponseSchema, {
        processes: list.map((p) => ({
          pid: p.pid,
          info: p.execId
            ? { typeUrl: ProcessDetailsSchema.typeName, value: toBinary(ProcessDetailsSchema, create(ProcessDetailsSchema, { execId: p.execId })) }
            : undefined,
        })),
      });
    },
    async pause(req) {
      await tasks.pause(req.id);
      return create(EmptySchema);
    },
    async resume(req) {
      await tasks.resume(req.id);
      return create(EmptySchema);
    },
    async checkpoint(req) {
      const opts = req.options?.value?.length ? { typeUrl: req.options.typeUrl, value: req.options.value } : {};
      await tasks.checkpoint(req.id, req.path, opts);
      return create(EmptySchema);
    },
    async update(req) {
      if (!req.resources) throw invalidArgument("update: missing resources");
      const res = parseJsonAny(req.resources.typeUrl, OCI_RESOURCES, req.resources.value, "update resources");
      await tasks.update(req.id, res);
      return create(EmptySchema);
    },
    async stats(req) {
      const s = await tasks.stats(req.id);
      return create(StatsResponseSchema, { stats: { typeUrl: s.typeUrl, value: s.value } });
    },
    async resizePty(req) {
      await tasks.resizePty(ref(req.id, req.execId), req.width, req.height);
      return create(EmptySchema);
    },
    async closeIO(req) {
      await tasks.closeIO(ref(req.id, req.execId), req.stdin);
      return create(EmptySchema);
    },
    async connect(req) {
      return create(ConnectResponseSchema, { shimPid: process.pid, taskPid: tasks.initPid(req.id), version: "cocoon" });
    },
    async shutdown(req) {
      if (req.now || tasks.size === 0) {
        o.log.info("shutdown: no task left, exiting");
        setImmediate(o.exit);
      }
      return create(EmptySchema);
    },
  };
  server.registerService(TASK_SERVICE_V2, Task, impl);
  server.registerService(TASK_SERVICE_V3, Task, impl);
}
