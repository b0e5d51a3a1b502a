// The connection to the daemon and the builds it reports: the event stream (reconnected with
// Last-Event-ID), fetches of the records it makes stale, and the connection's state. No VS Code
// here; the extension renders what this holds.

import { Api, ApiError } from "./api";
import { Found } from "./discovery";
import { Build, BuildEvent, BuildStore, isFinal, View } from "./model";
import { backoff, openStream } from "./sse";
import { Connection } from "./status";

export interface Host {
  discover(): Promise<Found>;
  log(line: string): void;
}

/** Delays of the follow-up fetches after a pipeline finished, until the daemon's record settles. */
const SETTLE_MS = [300, 700, 1500, 3000, 6000];

export class Controller {
  readonly store = new BuildStore();
  conn: Connection = { state: "connecting" };
  api: Api | undefined;
  found: Found | undefined;
  private lastEventId: string | undefined;
  private attempts = 0;
  private closeStream: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private listTimer: NodeJS.Timeout | undefined;
  private buildTimers = new Map<number, NodeJS.Timeout>();
  private stopped = false;
  private changeListeners: (() => void)[] = [];
  private recordListeners: ((b: Build, initial: boolean) => void)[] = [];
  private connListeners: ((c: Connection) => void)[] = [];
  private listed = false;

  constructor(private readonly host: Host) {}

  onChange(f: () => void): void {
    this.changeListeners.push(f);
  }
  /** Every fresh record; `initial` for those of the first list (what was true at start-up). */
  onRecord(f: (b: Build, initial: boolean) => void): void {
    this.recordListeners.push(f);
  }
  onConnection(f: (c: Connection) => void): void {
    this.connListeners.push(f);
  }

  start(): void {
    void this.connect();
  }

  /** Connects again now (settings changed, a token was pasted, the user asked). */
  reconnect(): void {
    this.attempts = 0;
    this.closeStream?.();
    this.closeStream = undefined;
    clearTimeout(this.timer);
    void this.connect();
  }

  dispose(): void {
    this.stopped = true;
    this.closeStream?.();
    clearTimeout(this.timer);
    clearTimeout(this.listTimer);
    for (const t of this.buildTimers.values()) clearTimeout(t);
  }

  private setConn(c: Connection): void {
    const changed = JSON.stringify(c) !== JSON.stringify(this.conn);
    this.conn = c;
    if (changed) {
      this.host.log(`connection: ${c.state}${"reason" in c ? ` — ${c.reason}` : ""}`);
      for (const f of this.connListeners) f(c);
      this.emit();
    }
  }

  private emit(): void {
    for (const f of this.changeListeners) f();
  }

  private retryLater(): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.connect(), backoff(this.attempts++));
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const found = await this.host.discover();
    this.found = found;
    if (!found.url) {
      this.setConn({ state: "down", reason: `No cloudci daemon found: ${found.urlSource}. Start it with \`cloudci serve\`.` });
      return this.retryLater();
    }
    if (!found.token) {
      this.setConn({
        state: "unconfigured",
        reason: `No API token: ${found.tokenSource}. Run \`cloudci token issue\` and paste the token, or start \`cloudci serve\`.`,
      });
      return this.retryLater();
    }
    const api = new Api(found.url, found.token);
    this.api = api;
    this.host.log(`connecting to ${found.url} (from ${found.urlSource}; token from ${found.tokenSource})`);
    this.closeStream = openStream(api.eventsUrl(), found.token, this.lastEventId, {
      onOpen: () => {
        this.attempts = 0;
        this.setConn({ state: "live" });
        this.host.log(`event stream open${this.lastEventId ? `, resuming after event ${this.lastEventId}` : ""}`);
        void this.refreshList();
      },
      onMessage: (m) => {
        if (m.id !== undefined) this.lastEventId = m.id;
        try {
          this.handle(JSON.parse(m.data) as BuildEvent);
        } catch (e) {
          this.host.log(`unreadable event ${m.id ?? ""}: ${(e as Error).message}`);
        }
      },
      onClose: (err) => {
        this.closeStream = undefined;
        if (this.stopped) return;
        if (err.status === 401 || err.status === 403) {
          this.setConn({
            state: "refused",
            reason: `The daemon at ${found.url} refused the token from ${found.tokenSource} (${err.message}).`,
          });
          return; // until the user acts (paste a token, change settings): see reconnect()
        }
        this.setConn({ state: "down", reason: `The cloudci daemon at ${found.url} is not answering (${err.message}).` });
        this.retryLater();
      },
    });
  }

  private handle(ev: BuildEvent): void {
    const { changed, unknown } = this.store.apply(ev);
    if (changed.length > 0) this.emit();
    if (unknown && (ev.kind === "pipeline" || ev.kind === "job")) this.scheduleList();
    if (ev.kind === "merge_request") this.scheduleList();
    // The record changes when a job or the pipeline ends (logs, firmware, merge request).
    if (isFinal(ev.status) || ev.kind === "pipeline") for (const id of changed) this.scheduleBuild(id);
  }

  private scheduleList(): void {
    if (this.listTimer) return;
    this.listTimer = setTimeout(() => {
      this.listTimer = undefined;
      void this.refreshList();
    }, 250);
  }

  /** Fetches build `id` soon, once however many events ask for it. */
  private scheduleBuild(id: number): void {
    this.follow(id, (record, shown) => !isFinal(shown.status) || isFinal(record.status));
  }

  /**
   * Fetches build `id`, and again a little later — a bounded number of times — until `settled`
   * holds. For what the event stream cannot tell: the daemon's record catching up after the
   * pipeline ended (firmware fetched, merge request opened), or a build that failed before it
   * had a pipeline to send events about.
   */
  follow(id: number, settled: (record: Build, shown: View) => boolean, attempt = 0): void {
    if (this.buildTimers.has(id)) return;
    const delay = attempt === 0 ? 200 : SETTLE_MS[attempt - 1];
    this.buildTimers.set(
      id,
      setTimeout(() => {
        this.buildTimers.delete(id);
        void this.refreshBuild(id).then((record) => {
          const shown = this.store.get(id);
          if (record && shown && !settled(record, shown) && attempt < SETTLE_MS.length) {
            this.follow(id, settled, attempt + 1);
          }
        });
      }, delay),
    );
  }

  async refreshList(): Promise<void> {
    const api = this.api;
    if (!api) return;
    try {
      const builds = await api.builds(30);
      const initial = !this.listed;
      this.listed = true;
      this.store.setAll(builds);
      for (const b of builds) for (const f of this.recordListeners) f(b, initial);
      this.emit();
    } catch (e) {
      this.failed(e);
    }
  }

  async refreshBuild(id: number): Promise<Build | undefined> {
    const api = this.api;
    if (!api) return undefined;
    try {
      const b = await api.build(id);
      this.accept(b);
      return b;
    } catch (e) {
      this.failed(e);
      return undefined;
    }
  }

  /** A record from a fetch or an action's answer. */
  accept(b: Build, fromAction = false): void {
    this.store.put(b, fromAction);
    for (const f of this.recordListeners) f(b, false);
    this.emit();
  }

  private failed(e: unknown): void {
    const err = e as ApiError;
    this.host.log(`request failed: ${err.message}`);
    if (err instanceof ApiError && err.refused && this.found) {
      this.setConn({ state: "refused", reason: `The daemon refused the token from ${this.found.tokenSource} (${err.message}).` });
      this.closeStream?.();
    }
  }
}
