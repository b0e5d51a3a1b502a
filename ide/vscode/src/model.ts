// The builds as the daemon records them (GET /v1/builds), brought up to date by the event stream
// between fetches. No VS Code here: this is tested with Node's test runner.

export interface Job {
  id: number;
  status: string;
  log?: string | null;
}

/** `Build` of the local API's OpenAPI document. */
export interface Build {
  id: number;
  run: number;
  project: string;
  gitlab: string;
  target: string;
  status: string;
  ref?: string | null;
  sha?: string | null;
  pipeline_id?: number | null;
  pipeline_url?: string | null;
  jobs: Record<string, Job>;
  artifacts?: string | null;
  merge_request?: string | null;
  reason?: string | null;
  created_at?: string;
  updated_at?: string;
}

/** One `/v1/events` event (the daemon's `BuildEvent`). */
export interface BuildEvent {
  seq: number;
  kind: "pipeline" | "job" | "merge_request" | "push" | "other";
  project_id: number;
  project?: string | null;
  ref?: string | null;
  pipeline_id?: number | null;
  job_id?: number | null;
  job_name?: string | null;
  stage?: string | null;
  status?: string | null;
  previous_status?: string | null;
  failure_reason?: string | null;
  url?: string | null;
  retry?: boolean;
  /** When the daemon accepted it (RFC 3339, milliseconds, UTC). */
  received_at?: string;
}

const FINAL = new Set(["success", "failed", "canceled", "skipped", "error"]);

export const isFinal = (status: string | undefined | null): boolean => !!status && FINAL.has(status);

/** A GitLab pipeline status in the daemon's build vocabulary. */
export function buildStatusOf(pipelineStatus: string): string {
  switch (pipelineStatus) {
    case "created":
    case "pending":
    case "preparing":
    case "waiting_for_resource":
      return "queued";
    default:
      return pipelineStatus;
  }
}

/** A build as shown: the record, with what the event stream said since it was fetched. */
export interface View extends Build {
  /** The job that is running now, if any. */
  runningJob?: string;
  /** The first failed job, if any. */
  failedJob?: string;
}

interface Stamped {
  status: string;
  at: string;
}

interface Live {
  pipeline?: Stamped;
  jobs: Record<string, Job & { at: string }>;
}

/** Events about pipelines no record names yet, kept to apply once one does. */
const PENDING_MAX = 500;

export class BuildStore {
  private records = new Map<number, Build>();
  private live = new Map<number, Live>();
  private pending: BuildEvent[] = [];

  /** Replaces what is known with a fresh list (the newest builds). */
  setAll(builds: Build[]): void {
    for (const b of builds) this.put(b);
  }

  /** A fresh record of one build (GET /v1/builds/{id}, or the answer to cancel/retry). */
  put(b: Build, fromAction = false): void {
    this.records.set(b.id, b);
    if (fromAction) this.live.delete(b.id);
    if (b.pipeline_id && this.pending.some((e) => e.pipeline_id === b.pipeline_id)) {
      const mine = this.pending.filter((e) => e.pipeline_id === b.pipeline_id);
      this.pending = this.pending.filter((e) => e.pipeline_id !== b.pipeline_id);
      for (const e of mine) this.apply(e);
    }
  }

  get(id: number): View | undefined {
    const b = this.records.get(id);
    return b && this.view(b);
  }

  all(): View[] {
    return [...this.records.values()].sort((a, b) => b.id - a.id).map((b) => this.view(b));
  }

  /**
   * Applies a pipeline or job event to the builds of its pipeline. Returns the ids of the builds
   * it changed, or `unknown` when it is about a pipeline no known build has (a build started
   * elsewhere, or one whose pipeline id is not recorded yet).
   */
  apply(ev: BuildEvent): { changed: number[]; unknown: boolean } {
    if ((ev.kind !== "pipeline" && ev.kind !== "job") || !ev.pipeline_id || !ev.status) {
      return { changed: [], unknown: false };
    }
    const changed: number[] = [];
    for (const b of this.records.values()) {
      if (b.pipeline_id !== ev.pipeline_id || (ev.project && ev.project !== b.gitlab)) continue;
      const live = this.live.get(b.id) ?? { jobs: {} };
      const at = ev.received_at ?? new Date().toISOString();
      if (ev.kind === "pipeline") {
        live.pipeline = { status: buildStatusOf(ev.status), at };
      } else if (ev.job_name && ev.job_id) {
        const known = live.jobs[ev.job_name] ?? b.jobs[ev.job_name];
        // A lower id is an older attempt of a retried job: the newer one stands.
        if (known && known.id > ev.job_id) continue;
        live.jobs[ev.job_name] = { id: ev.job_id, status: ev.status, at };
      }
      this.live.set(b.id, live);
      changed.push(b.id);
    }
    if (changed.length === 0) {
      this.pending.push(ev);
      if (this.pending.length > PENDING_MAX) this.pending.shift();
    }
    return { changed, unknown: changed.length === 0 };
  }

  private view(b: Build): View {
    const live = this.live.get(b.id);
    const since = b.updated_at ?? "";
    const status = merged(b.status, since, live?.pipeline);
    const jobs: Record<string, Job> = { ...b.jobs };
    for (const [name, j] of Object.entries(live?.jobs ?? {})) {
      const rec = b.jobs[name];
      if (!rec || j.id > rec.id) jobs[name] = { id: j.id, status: j.status };
      else if (j.id === rec.id) jobs[name] = { ...rec, status: merged(rec.status, since, j) };
    }
    const names = Object.keys(jobs).sort((x, y) => jobs[x].id - jobs[y].id);
    const runningJob = names.find((n) => jobs[n].status === "running");
    const failedJob = names.find((n) => jobs[n].status === "failed");
    return { ...b, status, jobs, ...(runningJob ? { runningJob } : {}), ...(failedJob ? { failedJob } : {}) };
  }
}

/**
 * The record's status unless the event stream knows better. A final record stands against a
 * final event (the daemon's verdict includes fetching the firmware); a final event stands against
 * a record that is not (the pipeline is over, the daemon is still at its after-success actions);
 * otherwise the newer one, by the daemon's clock (a retry makes a final record stale).
 */
function merged(record: string, recordAt: string, live: Stamped | undefined): string {
  if (live === undefined) return record;
  if (isFinal(record) && isFinal(live.status)) return record;
  if (isFinal(live.status)) return live.status;
  return live.at >= recordAt ? live.status : record;
}

/** The builds of the newest run of `project` on `branch`: what the status bar shows. */
export function currentRun(builds: View[], project: string | undefined, branch: string | undefined): View[] {
  if (!project || !branch) return [];
  const mine = builds.filter((b) => b.project === project && b.ref === branch);
  if (mine.length === 0) return [];
  const run = Math.max(...mine.map((b) => b.run));
  return mine.filter((b) => b.run === run).sort((a, b) => a.target.localeCompare(b.target));
}

/** One status for several targets: running wins, then queued, failed, canceled, success. */
export function overallStatus(builds: View[]): string {
  const order = ["running", "queued", "manual", "scheduled", "error", "failed", "canceled", "skipped", "success"];
  for (const s of order) if (builds.some((b) => b.status === s)) return s;
  return builds[0]?.status ?? "unknown";
}
