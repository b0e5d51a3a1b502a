// What the status bar says about the current branch's build. Pure: tested with Node's runner.

import { overallStatus, View } from "./model";

export interface StatusBarText {
  text: string;
  tooltip: string;
  /** The command a click runs. */
  command: string;
  /** true: draw it in the error colours. */
  alarm: boolean;
}

const ICONS: Record<string, string> = {
  queued: "$(clock)",
  running: "$(sync~spin)",
  success: "$(pass)",
  failed: "$(error)",
  error: "$(error)",
  canceled: "$(circle-slash)",
  skipped: "$(debug-step-over)",
  manual: "$(debug-pause)",
  scheduled: "$(watch)",
};

export function iconFor(status: string): string {
  return ICONS[status] ?? "$(circle-outline)";
}

export type Connection =
  | { state: "connecting" }
  | { state: "live" }
  | { state: "down"; reason: string }
  | { state: "refused"; reason: string }
  | { state: "unconfigured"; reason: string };

/** The status bar for `run` (the newest run of this branch; empty when there is none). */
export function statusBarText(run: View[], branch: string | undefined, conn: Connection): StatusBarText {
  if (conn.state === "down" || conn.state === "refused" || conn.state === "unconfigured") {
    const what = conn.state === "refused" ? "token refused" : conn.state === "down" ? "daemon not running" : "not set up";
    return { text: `$(debug-disconnect) cloudci: ${what}`, tooltip: conn.reason, command: "cloudci.showOutput", alarm: true };
  }
  if (!branch) {
    return { text: "$(cloud) cloudci", tooltip: "No git branch in this workspace", command: "cloudci.build", alarm: false };
  }
  if (run.length === 0) {
    return {
      text: `$(cloud) ${branch}: no build`,
      tooltip: `No cloudci build of ${branch} yet. Click to build.`,
      command: "cloudci.build",
      alarm: false,
    };
  }
  const status = overallStatus(run);
  let detail = "";
  if (status === "running") {
    const running = run.filter((b) => b.status === "running");
    detail = " " + running.map((b) => (b.runningJob ? `${b.target} › ${b.runningJob}` : b.target)).join(", ");
  } else if (status === "failed" || status === "error") {
    const failed = run.filter((b) => b.status === status);
    detail = " " + failed.map((b) => (b.failedJob ? `${b.target} › ${b.failedJob}` : b.target)).join(", ");
  }
  const lines = run.map((b) => {
    const jobs = Object.entries(b.jobs)
      .sort(([, x], [, y]) => x.id - y.id)
      .map(([n, j]) => `${n} ${j.status}`)
      .join(", ");
    return `${b.target} (build ${b.id}): ${b.status}${jobs ? ` — ${jobs}` : ""}${b.reason ? ` — ${b.reason}` : ""}`;
  });
  const live = conn.state === "live" ? "" : "\n(reconnecting to the daemon…)";
  return {
    text: `${iconFor(status)} ${branch}: ${status}${detail}`,
    tooltip: `cloudci ${run[0].project} @ ${branch}, run ${run[0].run}\n${lines.join("\n")}${live}`,
    command: status === "running" || status === "failed" || status === "error" ? "cloudci.showLog" : "cloudci.build",
    alarm: status === "failed" || status === "error",
  };
}
