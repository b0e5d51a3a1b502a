import { test } from "node:test";
import * as assert from "node:assert/strict";
import { Build, BuildEvent, BuildStore, currentRun } from "../src/model";
import { statusBarText } from "../src/status";

const live = { state: "live" } as const;

function build(over: Partial<Build>): Build {
  return { id: 1, run: 1, project: "firmware", gitlab: "acme/firmware", target: "host", status: "queued", ref: "feature", jobs: {}, ...over };
}

let seq = 0;
function ev(over: Partial<BuildEvent>): BuildEvent {
  return { seq: ++seq, kind: "pipeline", project_id: 1, project: "acme/firmware", ref: "feature", pipeline_id: 7, ...over };
}

function bar(store: BuildStore, branch = "feature") {
  return statusBarText(currentRun(store.all(), "firmware", branch), branch, live).text;
}

test("events move the status bar through the live statuses, naming the running target and job", () => {
  const store = new BuildStore();
  store.put(build({ pipeline_id: 7 }));
  assert.equal(bar(store), "$(clock) feature: queued");
  store.apply(ev({ kind: "pipeline", status: "running" }));
  store.apply(ev({ kind: "job", job_id: 70, job_name: "build", status: "running" }));
  assert.equal(bar(store), "$(sync~spin) feature: running host › build");
  store.apply(ev({ kind: "job", job_id: 70, job_name: "build", status: "success" }));
  store.apply(ev({ kind: "job", job_id: 71, job_name: "selftest", status: "running" }));
  assert.equal(bar(store), "$(sync~spin) feature: running host › selftest");
  store.apply(ev({ kind: "job", job_id: 71, job_name: "selftest", status: "success" }));
  store.apply(ev({ kind: "pipeline", status: "success" }));
  assert.equal(bar(store), "$(pass) feature: success");
});

test("a pipeline that finished while the daemon still fetches the firmware shows its result, not running", () => {
  const store = new BuildStore();
  store.put(build({ pipeline_id: 7, status: "running" }));
  store.apply(ev({ status: "success" }));
  store.put(build({ pipeline_id: 7, status: "running" })); // the record lags behind
  assert.equal(bar(store), "$(pass) feature: success");
  store.put(build({ pipeline_id: 7, status: "error", reason: "artifacts: 404" }));
  assert.match(bar(store), /^\$\(error\) feature: error/);
});

test("a retry reopens a finished build; the answer to the action replaces what the stream said", () => {
  const store = new BuildStore();
  store.put(build({ pipeline_id: 7, status: "canceled" }));
  store.apply(ev({ status: "canceled" }));
  store.apply(ev({ status: "running", retry: true }));
  assert.equal(bar(store), "$(sync~spin) feature: running host");
  store.put(build({ pipeline_id: 7, status: "queued" }), true);
  assert.equal(bar(store), "$(clock) feature: queued");
});

test("a failed run names the target and job that failed", () => {
  const store = new BuildStore();
  store.put(build({ id: 1, target: "host", pipeline_id: 7, status: "success" }));
  store.put(build({ id: 2, target: "broken", pipeline_id: 8, status: "failed", jobs: { build: { id: 80, status: "success" }, selftest: { id: 81, status: "failed" } } }));
  const s = statusBarText(currentRun(store.all(), "firmware", "feature"), "feature", live);
  assert.equal(s.text, "$(error) feature: failed broken › selftest");
  assert.equal(s.alarm, true);
  assert.equal(s.command, "cloudci.showLog");
});

test("never a build of another branch, another project or an older run", () => {
  const store = new BuildStore();
  store.put(build({ id: 1, run: 1, ref: "feature", status: "failed" }));
  store.put(build({ id: 2, run: 2, ref: "main", status: "running" }));
  store.put(build({ id: 3, run: 3, ref: "feature", project: "hal", gitlab: "acme/hal", status: "running" }));
  store.put(build({ id: 4, run: 4, ref: "feature", status: "success" }));
  assert.equal(bar(store), "$(pass) feature: success");
  assert.equal(bar(store, "other"), "$(cloud) other: no build");
  assert.equal(bar(store, "main"), "$(sync~spin) main: running host");
});

test("events of other pipelines and older job attempts change nothing", () => {
  const store = new BuildStore();
  store.put(build({ pipeline_id: 7, jobs: { build: { id: 75, status: "running" } } }));
  assert.deepEqual(store.apply(ev({ pipeline_id: 9, status: "failed" })), { changed: [], unknown: true });
  store.apply(ev({ kind: "job", job_id: 70, job_name: "build", status: "failed" }));
  assert.equal(store.get(1)!.jobs.build.status, "running");
});

test("the connection's trouble takes over the status bar", () => {
  const s = statusBarText([], "feature", { state: "down", reason: "cannot reach http://127.0.0.1:1" });
  assert.equal(s.text, "$(debug-disconnect) cloudci: daemon not running");
  assert.equal(s.tooltip, "cannot reach http://127.0.0.1:1");
  assert.equal(statusBarText([], "feature", { state: "refused", reason: "401" }).text, "$(debug-disconnect) cloudci: token refused");
});

test("events that come before the record knows its pipeline are applied once it does", () => {
  const store = new BuildStore();
  store.put(build({ pipeline_id: null, updated_at: "2026-01-01T00:00:00.000Z" }));
  store.apply(ev({ kind: "job", job_id: 70, job_name: "build", status: "running", received_at: "2026-01-01T00:00:01.000Z" }));
  store.apply(ev({ status: "running", received_at: "2026-01-01T00:00:01.000Z" }));
  store.put(build({ pipeline_id: 7, status: "queued", updated_at: "2026-01-01T00:00:00.500Z" }));
  assert.equal(bar(store), "$(sync~spin) feature: running host › build");
});

test("a record newer than an event wins, unless the event is a final status the record lacks", () => {
  const store = new BuildStore();
  store.put(build({ pipeline_id: 7, status: "queued", updated_at: "2026-01-01T00:00:00.000Z" }));
  store.apply(ev({ status: "pending", received_at: "2026-01-01T00:00:01.000Z" }));
  store.put(build({ pipeline_id: 7, status: "running", updated_at: "2026-01-01T00:00:02.000Z" }));
  assert.equal(bar(store), "$(sync~spin) feature: running host");
  store.apply(ev({ status: "success", received_at: "2026-01-01T00:00:03.000Z" }));
  store.put(build({ pipeline_id: 7, status: "running", updated_at: "2026-01-01T00:00:04.000Z" }));
  assert.equal(bar(store), "$(pass) feature: success");
});
