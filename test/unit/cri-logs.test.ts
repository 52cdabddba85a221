import { test } from "node:test";
import assert from "node:assert/strict";
import { CriLogParser, parseCriLog, parseRecord } from "../../src/cli/cri/logs.js";

const T1 = "2024-05-01T10:00:00.123456789Z";
const T2 = "2024-05-01T10:00:01.000000001Z";
const T3 = "2024-05-01T10:00:02+02:00";

test("full lines keep their stream, timestamp and content (spaces included)", () => {
  const { lines, malformed } = parseCriLog(`${T1} stdout F hello  world \n${T2} stderr F oops\n`);
  assert.equal(malformed, 0);
  assert.deepEqual(lines, [
    { stream: "stdout", timestamp: T1, text: "hello  world ", partial: false },
    { stream: "stderr", timestamp: T2, text: "oops", partial: false },
  ]);
});

test("partial records are joined per stream, with the first record's timestamp", () => {
  const text = [`${T1} stdout P abc`, `${T1} stderr F err line`, `${T2} stdout P def`, `${T3} stdout F ghi`, ""].join("\n");
  const { lines } = parseCriLog(text);
  assert.deepEqual(lines, [
    { stream: "stderr", timestamp: T1, text: "err line", partial: false },
    { stream: "stdout", timestamp: T1, text: "abcdefghi", partial: false },
  ]);
});

test("a log ending on a partial record yields it marked partial", () => {
  const { lines } = parseCriLog(`${T1} stdout F one\n${T2} stdout P tw`);
  assert.deepEqual(lines, [
    { stream: "stdout", timestamp: T1, text: "one", partial: false },
    { stream: "stdout", timestamp: T2, text: "tw", partial: true },
  ]);
});

test("empty lines (no content after the tag) and tags with extra fields", () => {
  assert.deepEqual(parseRecord(`${T1} stdout F`), { timestamp: T1, stream: "stdout", full: true, content: "" });
  assert.deepEqual(parseRecord(`${T1} stdout F `), { timestamp: T1, stream: "stdout", full: true, content: "" });
  assert.deepEqual(parseRecord(`${T1} stderr P:x:y z`), { timestamp: T1, stream: "stderr", full: false, content: "z" });
});

test("malformed records are counted and skipped", () => {
  const { lines, malformed } = parseCriLog(["garbage", `${T1} stdin F x`, `notatime stdout F x`, `${T1} stdout X x`, `${T1} stdout F ok`, ""].join("\n"));
  assert.equal(malformed, 4);
  assert.deepEqual(lines.map((l) => l.text), ["ok"]);
});

test("the incremental parser handles records split across chunks", () => {
  const p = new CriLogParser();
  const full = `${T1} stdout P ab\n${T2} stdout F cd\n${T3} stderr F e\n`;
  const out = [];
  for (const ch of full) out.push(...p.push(ch));
  out.push(...p.end());
  assert.deepEqual(out.map((l) => `${l.stream}:${l.text}`), ["stdout:abcd", "stderr:e"]);
});
