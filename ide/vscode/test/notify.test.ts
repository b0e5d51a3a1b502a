import { test } from "node:test";
import * as assert from "node:assert/strict";
import { TransitionFilter } from "../src/notify";

test("what was true at start-up is not announced; a later transition is, once", () => {
  const f = new TransitionFilter();
  f.prime([{ id: 1, status: "failed" }, { id: 2, status: "running" }]);
  assert.equal(f.observe({ id: 1, status: "failed" }, "all"), undefined);
  assert.equal(f.observe({ id: 2, status: "running" }, "all"), undefined);
  assert.deepEqual(f.observe({ id: 2, status: "success" }, "all"), { build: 2, status: "success", kind: "success" });
  assert.equal(f.observe({ id: 2, status: "success" }, "all"), undefined);
});

test("a build started after start-up is announced when it ends, and again after a retry", () => {
  const f = new TransitionFilter();
  f.prime([]);
  assert.equal(f.observe({ id: 5, status: "queued" }, "all"), undefined);
  assert.equal(f.observe({ id: 5, status: "running" }, "all"), undefined);
  assert.equal(f.observe({ id: 5, status: "canceled" }, "all")?.kind, "other");
  assert.equal(f.observe({ id: 5, status: "running" }, "all"), undefined);
  assert.equal(f.observe({ id: 5, status: "success" }, "all")?.kind, "success");
});

test("failures only; none", () => {
  const f = new TransitionFilter();
  f.prime([{ id: 1, status: "running" }, { id: 2, status: "running" }, { id: 3, status: "running" }]);
  assert.equal(f.observe({ id: 1, status: "success" }, "failures"), undefined);
  assert.equal(f.observe({ id: 2, status: "failed" }, "failures")?.kind, "failure");
  assert.equal(f.observe({ id: 3, status: "error" }, "none"), undefined);
});
