import { test } from "node:test";
import assert from "node:assert/strict";
import { FrameReader, HEADER_LENGTH, MAX_MESSAGE, MessageType, encodeFrame } from "../../src/ttrpc/frame.js";
import { Code, TtrpcError, statusFromError } from "../../src/ttrpc/codes.js";

test("encodeFrame writes a big-endian 10-byte header", () => {
  const f = encodeFrame(3, MessageType.REQUEST, 0, new Uint8Array([0xaa, 0xbb]));
  assert.deepEqual([...f], [0, 0, 0, 2, 0, 0, 0, 3, 1, 0, 0xaa, 0xbb]);
  assert.equal(HEADER_LENGTH, 10);
  assert.equal(MAX_MESSAGE, 4194304);
});

test("FrameReader assembles frames split at every byte and several per chunk", () => {
  const a = encodeFrame(1, 1, 0, new Uint8Array([1, 2, 3]));
  const b = encodeFrame(3, 2, 7, new Uint8Array(0));
  const c = encodeFrame(0xfffffffd, 3, 0, new Uint8Array(300).fill(9));
  const all = Buffer.concat([a, b, c]);

  const whole = new FrameReader().push(all);
  assert.equal(whole.length, 3);

  const r = new FrameReader();
  const events = [];
  for (const byte of all) events.push(...r.push(Uint8Array.of(byte)));
  assert.deepEqual(events, whole.map((e) => ({ ...e, data: Uint8Array.from((e as { data: Uint8Array }).data) })));
  assert.equal(events[1]!.kind, "frame");
  assert.deepEqual(events[1], { kind: "frame", streamId: 3, type: 2, flags: 7, data: new Uint8Array(0) });
  assert.equal(events[2]!.streamId, 0xfffffffd);
  assert.equal(r.midFrame, false);
  r.push(all.subarray(0, 12));
  assert.equal(r.midFrame, true);
});

test("FrameReader skips an oversized frame without storing it and then resyncs", () => {
  const max = 16;
  const r = new FrameReader(max);
  const header = Buffer.alloc(10);
  header.writeUInt32BE(1000, 0);
  header.writeUInt32BE(5, 4);
  header[8] = 1;
  const events = [...r.push(header)];
  for (let i = 0; i < 10; i++) events.push(...r.push(new Uint8Array(99)));
  assert.equal(events.length, 0);
  assert.equal(r.midFrame, true);
  // Last skipped byte plus a following good frame in the same chunk.
  events.push(...r.push(Buffer.concat([Buffer.alloc(10), encodeFrame(7, 1, 0, Buffer.from("hi"))])));
  assert.deepEqual(events[0], { kind: "oversized", streamId: 5, type: 1, flags: 0, length: 1000 });
  assert.equal(events[1]!.kind, "frame");
  assert.equal(Buffer.from((events[1] as { data: Uint8Array }).data).toString(), "hi");
  // A frame of exactly the maximum is accepted.
  const exact = r.push(encodeFrame(9, 1, 0, new Uint8Array(max)));
  assert.equal(exact[0]!.kind, "frame");
});

test("statusFromError maps TtrpcError, grpcCode carriers and everything else", () => {
  assert.deepEqual(statusFromError(new TtrpcError(Code.NOT_FOUND, "nope")), { code: 5, message: "nope" });
  const custom = Object.assign(new Error("exists"), { grpcCode: 6 });
  assert.deepEqual(statusFromError(custom), { code: 6, message: "exists" });
  assert.deepEqual(statusFromError({ grpcCode: 9, message: "pre" }), { code: 9, message: "pre" });
  assert.deepEqual(statusFromError(Object.assign(new Error("x"), { grpcCode: 99 })), { code: 2, message: "x" });
  assert.deepEqual(statusFromError(new Error("boom")), { code: 2, message: "boom" });
  assert.deepEqual(statusFromError("text"), { code: 2, message: "text" });
  assert.deepEqual(statusFromError(undefined), { code: 2, message: "undefined" });
  const err = new TtrpcError(Code.UNAVAILABLE, "ttrpc: closed");
  assert.ok(err instanceof Error);
  assert.equal(err.code, 14);
});
