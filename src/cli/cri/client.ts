// A typed client for the Kubernetes CRI (runtime.v1) over gRPC, as kubelet or crictl would talk to
// containerd's CRI plugin. Messages are the @bufbuild/protobuf types generated from proto/cri.
import { existsSync, statSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescMethod, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { ImageService, RuntimeService } from "../../gen/cri/runtime/v1/api_pb.js";

export interface CriCallOptions {
  /** Deadline for this call in ms; 0 = none. Defaults to the client's `defaultTimeoutMs`. */
  timeoutMs?: number;
  /** Aborting cancels the call (it then rejects with CANCELLED). */
  signal?: AbortSignal;
}

export interface CriConnectOptions {
  /** How long to wait for the channel to become ready; default 5 s. */
  timeoutMs?: number;
  /** Default per-call deadline; default 2 min (image pulls may need more: pass `timeoutMs` per call). */
  defaultTimeoutMs?: number;
}

/** A failed CRI call; keeps the gRPC status code and the server's message. */
export class CriError extends Error {
  override readonly name = "CriError";
  constructor(
    /** gRPC status code (`grpc.status`). */
    readonly code: grpc.status,
    /** The server's message (or grpc-js's, for transport failures). */
    readonly details: string,
    /** Full method path, e.g. `/runtime.v1.RuntimeService/RunPodSandbox`. */
    readonly method: string,
  ) {
    super(`${method.slice(method.lastIndexOf("/") + 1)}: ${grpc.status[code] ?? code}: ${details}`);
  }
  get codeName(): string {
    return grpc.status[this.code] ?? String(this.code);
  }
}

// containerd allows 16 MiB messages; grpc-js's default receive limit (4 MiB) is too small for large lists.
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

type Req<M extends DescMessage> = MessageInitShape<M>;
type Res<M extends DescMessage> = MessageShape<M>;
type RS = (typeof RuntimeService)["method"];
type IS = (typeof ImageService)["method"];

function methodPath(service: DescService, method: DescMethod): string {
  return `/${service.typeName}/${method.name}`;
}

/** Unix socket paths, with or without `unix://`, become grpc-js targets; other targets pass through. */
export function grpcTarget(address: string): string {
  if (address.startsWith("unix://")) return address;
  if (address.startsWith("/")) return `unix://${address}`;
  return address;
}

export class CriClient {
  private constructor(
    private readonly client: grpc.Client,
    private readonly defaultTimeoutMs: number,
  ) {}

  /** Connects to a CRI endpoint (a unix socket path) and waits until the channel is ready. */
  static async connect(socketPath: string, opts: CriConnectOptions = {}): Promise<CriClient> {
    const bare = socketPath.replace(/^unix:\/\//, "");
    if (bare.startsWith("/")) {
      if (!existsSync(bare)) throw new Error(`CRI socket ${bare} does not exist (is containerd running with the CRI plugin?)`);
      if (!statSync(bare).isSocket()) throw new Error(`${bare} is not a socket`);
    }
    const client = new grpc.Client(grpcTarget(socketPath), grpc.credentials.createInsecure(), {
      "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    });
    const waitMs = opts.timeoutMs ?? 5_000;
    try {
      await new Promise<void>((resolve, reject) =>
        client.waitForReady(Date.now() + waitMs, (err) => (err ? reject(err) : resolve())),
      );
    } catch (err) {
      client.close();
      throw new Error(`cannot connect to CRI endpoint ${socketPath} within ${waitMs} ms: ${(err as Error).message}`);
    }
    return new CriClient(client, opts.defaultTimeoutMs ?? 120_000);
  }

  close(): void {
    this.client.close();
  }

  private call<I extends DescMessage, O extends DescMessage>(
    service: DescService,
    method: DescMethod & { input: I; output: O },
    req: Req<I>,
    opts: CriCallOptions,
  ): Promise<Res<O>> {
    const path = methodPath(service, method);
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    const callOpts: grpc.CallOptions = timeoutMs > 0 ? { deadline: Date.now() + timeoutMs } : {};
    const message = create(method.input, req) as Res<I>;
    return new Promise<Res<O>>((resolve, reject) => {
      if (opts.signal?.aborted) {
        reject(new CriError(grpc.status.CANCELLED, "aborted before the call was made", path));
        return;
      }
      const call = this.client.makeUnaryRequest<Res<I>, Res<O>>(
        path,
        (m) => Buffer.from(toBinary(method.input, m)),
        (b) => fromBinary(method.output, b),
        message,
        new grpc.Metadata(),
        callOpts,
        (err, value) => {
          opts.signal?.removeEventListener("abort", onAbort);
          if (err) reject(new CriError(err.code, err.details || err.message, path));
          else resolve(value!);
        },
      );
      const onAbort = () => call.cancel();
      opts.signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  private rt<K extends keyof RS>(name: K, req: Req<RS[K]["input"]>, opts: CriCallOptions = {}): Promise<Res<RS[K]["output"]>> {
    return this.call(RuntimeService, RuntimeService.method[name] as DescMethod & { input: RS[K]["input"]; output: RS[K]["output"] }, req, opts);
  }

  private img<K extends keyof IS>(name: K, req: Req<IS[K]["input"]>, opts: CriCallOptions = {}): Promise<Res<IS[K]["output"]>> {
    return this.call(ImageService, ImageService.method[name] as DescMethod & { input: IS[K]["input"]; output: IS[K]["output"] }, req, opts);
  }

  // RuntimeService
  version(req: Req<RS["version"]["input"]> = {}, opts?: CriCallOptions) {
    return this.rt("version", req, opts);
  }
  runPodSandbox(req: Req<RS["runPodSandbox"]["input"]>, opts?: CriCallOptions) {
    return this.rt("runPodSandbox", req, opts);
  }
  stopPodSandbox(req: Req<RS["stopPodSandbox"]["input"]>, opts?: CriCallOptions) {
    return this.rt("stopPodSandbox", req, opts);
  }
  removePodSandbox(req: Req<RS["removePodSandbox"]["input"]>, opts?: CriCallOptions) {
    return this.rt("removePodSandbox", req, opts);
  }
  podSandboxStatus(req: Req<RS["podSandboxStatus"]["input"]>, opts?: CriCallOptions) {
    return this.rt("podSandboxStatus", req, opts);
  }
  listPodSandbox(req: Req<RS["listPodSandbox"]["input"]> = {}, opts?: CriCallOptions) {
    return this.rt("listPodSandbox", req, opts);
  }
  createContainer(req: Req<RS["createContainer"]["input"]>, opts?: CriCallOptions) {
    return this.rt("createContainer", req, opts);
  }
  startContainer(req: Req<RS["startContainer"]["input"]>, opts?: CriCallOptions) {
    return this.rt("startContainer", req, opts);
  }
  stopContainer(req: Req<RS["stopContainer"]["input"]>, opts?: CriCallOptions) {
    return this.rt("stopContainer", req, opts);
  }
  removeContainer(req: Req<RS["removeContainer"]["input"]>, opts?: CriCallOptions) {
    return this.rt("removeContainer", req, opts);
  }
  listContainers(req: Req<RS["listContainers"]["input"]> = {}, opts?: CriCallOptions) {
    return this.rt("listContainers", req, opts);
  }
  containerStatus(req: Req<RS["containerStatus"]["input"]>, opts?: CriCallOptions) {
    return this.rt("containerStatus", req, opts);
  }
  updateContainerResources(req: Req<RS["updateContainerResources"]["input"]>, opts?: CriCallOptions) {
    return this.rt("updateContainerResources", req, opts);
  }
  /** The CRI `timeout` (seconds) bounds the command; the call deadline defaults to that plus 10 s. */
  execSync(req: Req<RS["execSync"]["input"]>, opts?: CriCallOptions) {
    const secs = Number(req.timeout ?? 0n);
    const o = opts?.timeoutMs === undefined && secs > 0 ? { ...opts, timeoutMs: secs * 1000 + 10_000 } : opts;
    return this.rt("execSync", req, o);
  }
  containerStats(req: Req<RS["containerStats"]["input"]>, opts?: CriCallOptions) {
    return this.rt("containerStats", req, opts);
  }
  listContainerStats(req: Req<RS["listContainerStats"]["input"]> = {}, opts?: CriCallOptions) {
    return this.rt("listContainerStats", req, opts);
  }
  /** A one-use URL on the streaming server (see ./portforward.ts for speaking to it). */
  portForward(req: Req<RS["portForward"]["input"]>, opts?: CriCallOptions) {
    return this.rt("portForward", req, opts);
  }

  // ImageService
  listImages(req: Req<IS["listImages"]["input"]> = {}, opts?: CriCallOptions) {
    return this.img("listImages", req, opts);
  }
  imageStatus(req: Req<IS["imageStatus"]["input"]>, opts?: CriCallOptions) {
    return this.img("imageStatus", req, opts);
  }
  pullImage(req: Req<IS["pullImage"]["input"]>, opts?: CriCallOptions) {
    return this.img("pullImage", req, opts);
  }
}
