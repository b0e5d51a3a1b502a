// The daemon's local API (see GET /v1/openapi.json). Errors say what to do; none carries the token.

import * as http from "node:http";
import * as https from "node:https";
import { Build } from "./model";
import { LogChunk } from "./log";

export class ApiError extends Error {
  constructor(
    message: string,
    /** HTTP status, or undefined when the daemon could not be reached. */
    readonly status?: number,
  ) {
    super(message);
  }
  get unreachable(): boolean {
    return this.status === undefined;
  }
  get refused(): boolean {
    return this.status === 401 || this.status === 403;
  }
}

export interface Started {
  run: number;
  builds: { id: number; project: string; target: string; url?: string }[];
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export class Api {
  constructor(
    readonly base: string,
    private readonly token: string,
  ) {}

  private request(method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<Answer> {
    const u = new URL(this.base + path);
    const lib = u.protocol === "https:" ? https : http;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = lib.request(
        u,
        {
          method,
          timeout: timeoutMs,
          headers: {
            Authorization: `Bearer ${this.token}`,
            ...(payload ? { "Content-Type": "application/json", "Content-Length": String(payload.length) } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
          res.on("error", (e) => reject(new ApiError(`${this.base}: ${e.message}`)));
        },
      );
      req.on("timeout", () => req.destroy(new Error("no answer in time")));
      req.on("error", (e) => reject(new ApiError(`cannot reach the cloudci daemon at ${this.base} (${e.message})`)));
      if (payload) req.write(payload);
      req.end();
    });
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const a = await this.request(method, path, body);
    check(a, method, path);
    return JSON.parse(a.body.toString("utf8")) as T;
  }

  builds(limit = 30): Promise<Build[]> {
    return this.json("GET", `/v1/builds?limit=${limit}`);
  }
  build(id: number): Promise<Build> {
    return this.json("GET", `/v1/builds/${id}`);
  }
  start(body: { projects: string[]; ref?: string; targets?: string[] }): Promise<Started> {
    return this.json("POST", "/v1/builds", body);
  }
  cancel(id: number): Promise<Build> {
    return this.json("POST", `/v1/builds/${id}/cancel`);
  }
  retry(id: number): Promise<Build> {
    return this.json("POST", `/v1/builds/${id}/retry`);
  }

  async log(id: number, job: string, offset: number): Promise<LogChunk> {
    const path = `/v1/builds/${id}/log?job=${encodeURIComponent(job)}&offset=${offset}`;
    const a = await this.request("GET", path);
    check(a, "GET", path);
    const next = Number(a.headers["x-next-offset"]);
    return {
      text: a.body.toString("utf8"),
      nextOffset: Number.isFinite(next) ? next : offset + a.body.length,
      reset: a.headers["x-log-reset"] === "true",
    };
  }

  async download(id: number): Promise<Buffer> {
    const path = `/v1/builds/${id}/download`;
    const a = await this.request("GET", path, undefined, 300_000);
    check(a, "GET", path);
    return a.body;
  }

  eventsUrl(): string {
    return `${this.base}/v1/events`;
  }
}

function check(a: Answer, method: string, path: string): void {
  if (a.status >= 200 && a.status < 300) return;
  let message = "";
  try {
    const v = JSON.parse(a.body.toString("utf8")) as { error?: unknown };
    if (typeof v.error === "string") message = v.error;
  } catch {
    message = a.body.toString("utf8").trim().slice(0, 200);
  }
  throw new ApiError(`${method} ${path.split("?")[0]}: ${message || "HTTP " + a.status}`, a.status);
}
