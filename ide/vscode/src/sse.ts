// Server-Sent Events: a parser (pure) and a connection to GET /v1/events that reconnects with
// Last-Event-ID after the daemon goes away, so nothing between two connections is missed.

import * as http from "node:http";
import * as https from "node:https";

export interface SseMessage {
  id?: string;
  event: string;
  data: string;
}

export class SseParser {
  private buf = "";
  private id: string | undefined;
  private event = "";
  private data: string[] = [];

  feed(chunk: string): SseMessage[] {
    this.buf += chunk;
    const out: SseMessage[] = [];
    let nl: number;
    while ((nl = this.buf.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buf.slice(0, nl);
      const len = this.buf.startsWith("\r\n", nl) ? 2 : 1;
      // A lone \r at the very end may be the first half of \r\n: wait for more.
      if (this.buf[nl] === "\r" && nl + 1 === this.buf.length) break;
      this.buf = this.buf.slice(nl + len);
      if (line === "") {
        if (this.data.length > 0) {
          out.push({ ...(this.id !== undefined ? { id: this.id } : {}), event: this.event || "message", data: this.data.join("\n") });
        }
        this.event = "";
        this.data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
      else if (field === "event") this.event = value;
      else if (field === "id" && !value.includes("\0")) this.id = value;
    }
    return out;
  }
}

export interface StreamHandlers {
  onOpen(): void;
  onMessage(m: SseMessage): void;
  /** The connection ended or never started; `status` when the daemon answered with an error. */
  onClose(err: { status?: number; message: string }): void;
}

/** One connection attempt. Returns a function that closes it. */
export function openStream(
  url: string,
  token: string,
  lastEventId: string | undefined,
  h: StreamHandlers,
): () => void {
  const u = new URL(url);
  const lib = u.protocol === "https:" ? https : http;
  let closed = false;
  const close = (err: { status?: number; message: string }) => {
    if (closed) return;
    closed = true;
    h.onClose(err);
  };
  const req = lib.get(
    u,
    {
      headers: {
        Accept: "text/event-stream",
        Authorization: `Bearer ${token}`,
        ...(lastEventId !== undefined ? { "Last-Event-ID": lastEventId } : {}),
      },
    },
    (res) => {
      if (res.statusCode !== 200) {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => close({ status: res.statusCode, message: errorText(body) || `HTTP ${res.statusCode}` }));
        return;
      }
      h.onOpen();
      const parser = new SseParser();
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        for (const m of parser.feed(c)) if (!closed) h.onMessage(m);
      });
      res.on("end", () => close({ message: "the daemon closed the event stream" }));
      res.on("error", (e) => close({ message: e.message }));
    },
  );
  req.on("error", (e) => close({ message: e.message }));
  return () => {
    closed = true;
    req.destroy();
  };
}

function errorText(body: string): string {
  try {
    const v = JSON.parse(body) as { error?: unknown };
    return typeof v.error === "string" ? v.error : "";
  } catch {
    return body.trim().slice(0, 200);
  }
}

/** Delay before reconnect attempt `n` (0-based): 0.5 s doubling to 10 s. */
export function backoff(n: number): number {
  return Math.min(10_000, 500 * 2 ** Math.min(n, 5));
}
