// Pure parts of the real Sys: error shapes, SCM_RIGHTS parsing, and lazy loading of koffi.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";
import { codeError, errnoError } from "../../src/sys/errors.js";
import { rightsIn } from "../../src/sys/fd-receiver.js";

function cmsg(level: number, type: number, fds: number[]): Buffer {
  const len = 16 + 4 * fds.length;
  const buf = Buffer.alloc((len + 7) & ~7);
  buf.writeBigUInt64LE(BigInt(len), 0);
  buf.writeInt32LE(level, 8);
  buf.writeInt32LE(type, 12);
  fds.forEach((fd, i) => buf.writeInt32LE(fd, 16 + 4 * i));
  return buf;
}

describe("sys errors", () => {
  it("carry the errno name, negative errno, syscall and target", () => {
    const err = errnoError("mount", 19, "/mnt/x (type nofs)");
    assert.equal(err.code, "ENODEV");
    assert.equal(err.errno, -19);
    assert.equal(err.syscall, "mount");
    assert.match(err.message, /^mount \/mnt\/x \(type nofs\): ENODEV/);
    assert.equal(codeError("waitid", "ECHILD").errno, -10);
  });
});

describe("rightsIn", () => {
  it("reads the fds of SCM_RIGHTS messages and skips others", () => {
    const control = Buffer.concat([cmsg(1, 2, [99]), cmsg(1, 1, [7, 8]), cmsg(1, 1, [9])]);
    assert.deepEqual(rightsIn(control, control.length), [7, 8, 9]);
  });
  it("stops at a truncated or empty control buffer", () => {
    const control = cmsg(1, 1, [5]);
    assert.deepEqual(rightsIn(control, 0), []);
    assert.deepEqual(rightsIn(control, 12), []);
  });
});

describe("src/sys/index.js", () => {
  it("does not load koffi when imported, only on first call", () => {
    const index = fileURLToPath(new URL("../../src/sys/index.js", import.meta.url));
    const script = `
      import { readFileSync } from "node:fs";
      const koffiMapped = () => readFileSync("/proc/self/maps", "utf8").includes("koffi");
      const { sys } = await import(${JSON.stringify(index)});
      const before = koffiMapped();
      try { sys.tryReap(1); } catch {}
      console.log(JSON.stringify({ before, after: koffiMapped() }));`;
    const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
    assert.deepEqual(JSON.parse(out), { before: false, after: true });
  });
});
