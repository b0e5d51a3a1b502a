import { test } from "node:test";
import * as assert from "node:assert/strict";
import { backoff, SseParser } from "../src/sse";

test("events split anywhere between chunks, with ids, names and comments", () => {
  const p = new SseParser();
  const text = ': keep-alive\n\nid: 41\nevent: job\ndata: {"seq":41}\n\nid: 42\r\nevent: pipeline\r\ndata: {"seq":\r\ndata: 42}\r\n\r\n';
  const out = [];
  for (let i = 0; i < text.length; i += 3) out.push(...p.feed(text.slice(i, i + 3)));
  assert.deepEqual(out, [
    { id: "41", event: "job", data: '{"seq":41}' },
    { id: "42", event: "pipeline", data: '{"seq":\n42}' },
  ]);
});

test("reconnect delays grow to ten seconds", () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 9].map(backoff), [500, 1000, 2000, 4000, 8000, 10000, 10000]);
});
