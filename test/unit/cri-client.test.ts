// CriClient against an in-process gRPC server on a unix socket: method paths, serializers, error codes, deadlines.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescMethod, DescService } from "@bufbuild/protobuf";
import { ImageService, RuntimeService } from "../../src/gen/cri/runtime/v1/api_pb.js";
import { CriClient, CriError } from "../../src/cli/cri/client.js";

let dir: string;
let server: grpc.Server;
let sock: string;
const seen: { path: string; req: unknown }[] = [];

type Handler = (req: any) => Promise<unknown> | unknown;

function definition(svc: DescService, impl: Record<string, Handler>) {
  const def: Record<string, grpc.MethodDefinition<any, any>> = {};
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const m of svc.methods as DescMethod[]) {
    const fn = impl[m.localName];
    if (!fn) continue;
    const input = m.input as DescMessage;
    const output = m.output as DescMessage;
    const path = `/${svc.typeName}/${m.name}`;
    def[m.localName] = {
      path,
      requestStream: false,
      responseStream: false,
      requestSerialize: (v: any) => Buffer.from(toBinary(input, v)),
      requestDeserialize: (b: Buffer) => fromBinary(input, b),
      responseSerialize: (v: any) => Buffer.from(toBinary(output, v)),
      responseDeserialize: (b: Buffer) => fromBinary(output, b),
    };
    handlers[m.localName] = ((call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) => {
      seen.push({ path, req: call.request });
      Promise.resolve()
        .then(() => fn(call.request))
        .then((res) => cb(null, create(output, res as any)), (err) => cb(err));
    }) as grpc.handleUnaryCall<any, any>;
  }
  return { def: def as grpc.ServiceDefinition, handlers };
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "cri-client-"));
  sock = join(dir, "cri.sock");
  server = new grpc.Server();
  const rt = definition(RuntimeService, {
    version: (r) => ({ version: r.version, runtimeName: "fake", runtimeVersion: "1.2.3", runtimeApiVersion: "v1" }),
    listPodSandbox: () => ({ items: [{ id: "sb1", metadata: { name: "p", namespace: "default" }, runtimeHandler: "cocoon" }] }),
    podSandboxStatus: () => {
      throw Object.assign(new Error("x"), { code: grpc.status.NOT_FOUND, details: "sandbox nope: not found" });
    },
    execSync: (r) => ({ stdout: Buffer.from(r.cmd.join(" ")), exitCode: 3 }),
    stopContainer: () => new Promise((res) => setTimeout(() => res({}), 2_000)),
  });
  const img = definition(ImageService, { pullImage: (r) => ({ imageRef: "sha256:" + r.image.image }) });
  server.addService(rt.def, rt.handlers);
  server.addService(img.def, img.handlers);
  await new Promise<void>((res, rej) => server.bindAsync(`unix://${sock}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
});

after(async () => {
  await new Promise<void>((res) => server.tryShutdown(() => res()));
  rmSync(dir, { recursive: true, force: true });
});

test("unary calls reach the upstream method paths and round-trip messages", async () => {
  const c = await CriClient.connect(sock);
  try {
    const v = await c.version({ version: "v1" });
    assert.equal(v.runtimeName, "fake");
    assert.equal(v.version, "v1");
    const list = await c.listPodSandbox();
    assert.equal(list.items[0]!.runtimeHandler, "cocoon");
    const ex = await c.execSync({ containerId: "c", cmd: ["echo", "hi"], timeout: 5n });
    assert.equal(Buffer.from(ex.stdout).toString(), "echo hi");
    assert.equal(ex.exitCode, 3);
    const pull = await c.pullImage({ image: { image: "busybox" } });
    assert.equal(pull.imageRef, "sha256:busybox");
    const paths = seen.map((s) => s.path);
    assert.deepEqual(paths.slice(-4), [
      "/runtime.v1.RuntimeService/Version",
      "/runtime.v1.RuntimeService/ListPodSandbox",
      "/runtime.v1.RuntimeService/ExecSync",
      "/runtime.v1.ImageService/PullImage",
    ]);
  } finally {
    c.close();
  }
});

test("errors keep the gRPC code and the server's message", async () => {
  const c = await CriClient.connect(`unix://${sock}`);
  try {
    await assert.rejects(c.podSandboxStatus({ podSandboxId: "nope" }), (e: unknown) => {
      assert.ok(e instanceof CriError);
      assert.equal(e.code, grpc.status.NOT_FOUND);
      assert.equal(e.codeName, "NOT_FOUND");
      assert.equal(e.details, "sandbox nope: not found");
      assert.match(e.message, /^PodSandboxStatus: NOT_FOUND: sandbox nope: not found$/);
      return true;
    });
    await assert.rejects(c.listContainers(), (e: unknown) => e instanceof CriError && e.code === grpc.status.UNIMPLEMENTED);
  } finally {
    c.close();
  }
});

test("per-call deadlines and abort signals", async () => {
  const c = await CriClient.connect(sock, { defaultTimeoutMs: 10_000 });
  try {
    const t0 = Date.now();
    await assert.rejects(c.stopContainer({ containerId: "x" }, { timeoutMs: 200 }), (e: unknown) => e instanceof CriError && e.code === grpc.status.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - t0 < 1_500);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await assert.rejects(c.stopContainer({ containerId: "x" }, { signal: ac.signal }), (e: unknown) => e instanceof CriError && e.code === grpc.status.CANCELLED);
  } finally {
    c.close();
  }
});

test("connect fails clearly for a missing path and a non-socket", async () => {
  await assert.rejects(CriClient.connect(join(dir, "absent.sock")), /does not exist/);
  const file = join(dir, "plain");
  writeFileSync(file, "");
  await assert.rejects(CriClient.connect(file), /not a socket/);
});
