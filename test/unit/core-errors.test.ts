// One error type for host and guest, mapped to gRPC codes in one place; the OCI runtime CLI's
// failures classified the same way on both sides (kill as containerd-shim-runc-v2 does).
import assert from "node:assert/strict";
import { chmodSync, existsSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { ShimError, kindOf, type ErrorKind } from "../../src/core/errors.js";
import { classifyOciError, lastLoggedError, OciCli } from "../../src/core/oci-cli.js";
import { signalPid } from "../../src/core/process.js";
import { Code, statusFromError, TtrpcClient, TtrpcError, TtrpcServer } from "../../src/ttrpc/index.js";
import { Task } from "../../src/gen/containerd/task/v2/shim_pb.js";
import { tmpdir } from "../helpers/util.js";

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const scratch = () => {
  const d = tmpdir("cocoon-core-errors-");
  dirs.push(d);
  return d;
};

describe("error kinds to gRPC codes", () => {
  const expected: Record<ErrorKind, number> = {
    Unknown: Code.UNKNOWN,
    InvalidArgument: Code.INVALID_ARGUMENT,
    DeadlineExceeded: Code.DEADLINE_EXCEEDED,
    NotFound: Code.NOT_FOUND,
    AlreadyExists: Code.ALREADY_EXISTS,
    FailedPrecondition: Code.FAILED_PRECONDITION,
    Unimplemented: Code.UNIMPLEMENTED,
    Internal: Code.INTERNAL,
    Unavailable: Code.UNAVAILABLE,
  };

  it("every kind has its code, and the TTRPC status carries it with the message", () => {
    for (const [kind, code] of Object.entries(expected)) {
      const err = new ShimError(kind as ErrorKind, `m-${kind}`);
      assert.equal(err.grpcCode, code, kind);
      assert.deepEqual(statusFromError(err), { code, message: `m-${kind}` });
    }
    assert.equal(kindOf(new Error("x")), "Unknown");
    assert.equal(kindOf(new ShimError("NotFound", "x")), "NotFound");
  });

  it("a handler's ShimError reaches the TTRPC client as its code", async () => {
    const sock = join(scratch(), "s.sock");
    const server = new TtrpcServer();
    server.registerService("containerd.task.v2.Task", Task, {
      kill: () => {
        throw new ShimError("NotFound", "process already finished");
      },
    });
    await server.listen(sock);
    const client = await TtrpcClient.connect(`unix://${sock}`);
    try {
      await assert.rejects(client.makeClient(Task).kill({ id: "c1", signal: 9 }), (err: TtrpcError) =>
        err.code === Code.NOT_FOUND && err.message === "process already finished");
    } finally {
      client.close();
      await server.close({ dropConnections: true });
    }
  });
});

describe("OCI runtime errors", () => {
  it("kill: a finished process or a container not running is NotFound (checkKillError)", () => {
    for (const msg of ["container not running", "container `c1` is not running", "os: process already finished", "kill: No such process", "container `c1` does not exist"]) {
      assert.equal(classifyOciError("kill", msg), "NotFound", msg);
    }
    assert.equal(classifyOciError("kill", "permission denied"), "Unknown");
  });

  it("other verbs: missing container, duplicates, wrong state, bad requests", () => {
    assert.equal(classifyOciError("delete", "container `c1` does not exist"), "NotFound");
    assert.equal(classifyOciError("create", "container `c1` already exists"), "AlreadyExists");
    assert.equal(classifyOciError("pause", "container not running"), "FailedPrecondition");
    assert.equal(classifyOciError("create", "make `/x/rootfs` private: No such file or directory"), "InvalidArgument");
    assert.equal(classifyOciError("exec", "exec: \"nope\": executable file not found in $PATH"), "InvalidArgument");
    assert.equal(classifyOciError("pause", "something odd"), "Unknown");
  });

  it("quotes the last logged error (JSON lines; plain text as is)", () => {
    const log = '{"msg": "warning: x", "level": "warning"}\n{"msg": "container `c1` does not exist", "level": "error", "time": "t"}\n';
    assert.equal(lastLoggedError(log), "container `c1` does not exist");
    assert.equal(lastLoggedError("plain text\n"), "plain text");
    assert.equal(lastLoggedError(""), "");
  });

  /** A stand-in runtime: logs a JSON error for `kill`, hangs on `create`, prints pids for `ps`. */
  function fakeRuntime(d: string): string {
    const bin = join(d, "fake-runc");
    writeFileSync(bin, `#!/bin/sh
log=""; while [ $# -gt 0 ]; do case "$1" in --log) log="$2"; shift 2;; --log-format|--root) shift 2;; *) break;; esac; done
case "$1" in
  kill) echo '{"level":"error","msg":"container not running"}' > "$log"; exit 1;;
  create) sleep 30;;
  ps) echo '[12, 34]';;
  delete) echo '{"level":"error","msg":"container \`x\` does not exist"}' > "$log"; exit 1;;
  *) echo "odd $1" >&2; exit 2;;
esac
`);
    chmodSync(bin, 0o755);
    return bin;
  }

  it("the client quotes the runtime, classifies, times out fd-passing calls, and cleans its logs", async () => {
    const d = scratch();
    const logDir = join(d, "logs");
    const cli = new OciCli({ binary: fakeRuntime(d), globalArgs: ["--root", join(d, "root")], logDir, timeoutMs: 500 });
    await assert.rejects(cli.kill("c1", 9), (err: ShimError) => err.kind === "NotFound" && /fake-runc kill failed: container not running/.test(err.message));
    assert.deepEqual(await cli.ps("c1"), [12, 34]);
    await cli.delete("x"); // a container the runtime does not know is deleted already
    await assert.rejects(cli.pause("c1"), (err: ShimError) => err.kind === "Unknown" && /odd pause/.test(err.message));
    const fds: [number, number, number] = [0, 1, 2];
    await assert.rejects(cli.create("c1", { bundle: d, pidFile: join(d, "pid"), stdio: fds }), (err: ShimError) => err.kind === "DeadlineExceeded");
    assert.ok(existsSync(logDir));
    assert.deepEqual(readdirSync(logDir), []);
  });

  it("signalling a process that is gone is NotFound", () => {
    assert.throws(() => signalPid(2 ** 22 + 12345, 0), (err: ShimError) => err.kind === "NotFound" && /already finished/.test(err.message));
  });
});
