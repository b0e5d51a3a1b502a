import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as http from "node:http";
import { AddressInfo } from "node:net";
import { Controller } from "../src/controller";
import { Found } from "../src/discovery";

/** A stand-in daemon: /v1/builds and an event stream that sends `events` after Last-Event-ID. */
function daemon(port: number, events: { id: number; data: object }[], seen: (string | undefined)[], status = 200) {
  const server = http.createServer((req, res) => {
    if (req.headers.authorization !== "Bearer tok") {
      res.writeHead(401, { "Content-Type": "application/json" }).end('{"error":"invalid token"}');
      return;
    }
    if (status !== 200) {
      res.writeHead(status, { "Content-Type": "application/json" }).end('{"error":"nope"}');
      return;
    }
    if (req.url?.startsWith("/v1/builds")) {
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify([{ id: 1, run: 1, project: "firmware", gitlab: "acme/firmware", target: "host", status: "running", ref: "feature", pipeline_id: 7, jobs: {}, updated_at: "2026-01-01T00:00:00.000Z" }]));
      return;
    }
    const last = req.headers["last-event-id"] as string | undefined;
    seen.push(last);
    res.writeHead(200, { "Content-Type": "text/event-stream" });
    for (const e of events.filter((e) => e.id > Number(last ?? 0))) {
      res.write(`id: ${e.id}\nevent: pipeline\ndata: ${JSON.stringify(e.data)}\n\n`);
    }
  });
  return new Promise<http.Server>((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

const until = async (ok: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
};

const ev = (seq: number, status: string) => ({
  id: seq,
  data: { seq, kind: "pipeline", project_id: 1, project: "acme/firmware", pipeline_id: 7, status, received_at: `2026-01-01T00:00:0${seq}.000Z` },
});

test("after the daemon restarts, the stream reconnects and resumes after the last event it saw", async () => {
  const seen: (string | undefined)[] = [];
  let server = await daemon(0, [ev(1, "running")], seen);
  const port = (server.address() as AddressInfo).port;
  const found: Found = { stateDir: "/s", url: `http://127.0.0.1:${port}`, urlSource: "test", token: "tok", tokenSource: "test" };
  const states: string[] = [];
  const c = new Controller({ discover: async () => found, log: () => {} });
  c.onConnection((s) => states.push(s.state));
  c.start();
  try {
    await until(() => c.conn.state === "live" && c.store.get(1)?.status === "running");
    server.closeAllConnections();
    server.close();
    await until(() => c.conn.state === "down");
    server = await daemon(port, [ev(1, "running"), ev(2, "success")], seen);
    await until(() => c.store.get(1)?.status === "success", 8000);
    assert.deepEqual(seen, [undefined, "1"], "the second connection sent Last-Event-ID: 1");
    assert.deepEqual(states, ["live", "down", "live"]);
  } finally {
    c.dispose();
    server.closeAllConnections();
    server.close();
  }
});

test("a refused token stops the reconnecting and says where the token came from", async () => {
  const server = await daemon(0, [], []);
  const port = (server.address() as AddressInfo).port;
  let asked = 0;
  const c = new Controller({
    discover: async () => {
      asked++;
      return { stateDir: "/s", url: `http://127.0.0.1:${port}`, urlSource: "test", token: "wrong", tokenSource: "/s/secrets/cli-token" };
    },
    log: () => {},
  });
  c.start();
  try {
    await until(() => c.conn.state === "refused");
    assert.match("reason" in c.conn ? c.conn.reason : "", /refused the token from \/s\/secrets\/cli-token \(invalid token\)/);
    await new Promise((r) => setTimeout(r, 1200));
    assert.equal(asked, 1, "no retry with the same refused token");
  } finally {
    c.dispose();
    server.closeAllConnections();
    server.close();
  }
});

test("no daemon: down, with what to do", async () => {
  const c = new Controller({ discover: async () => ({ stateDir: "/s", urlSource: "/s/hook.json (not there: cloudci serve writes it when it starts)", tokenSource: "" }), log: () => {} });
  c.start();
  try {
    await until(() => c.conn.state === "down");
    assert.match("reason" in c.conn ? c.conn.reason : "", /Start it with `cloudci serve`/);
  } finally {
    c.dispose();
  }
});
