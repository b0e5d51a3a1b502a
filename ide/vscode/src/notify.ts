// Which build changes deserve a notification: only transitions seen while the extension runs,
// never what was already true when it started. Pure: tested with Node's runner.

import { isFinal } from "./model";

export type NotifyMode = "all" | "failures" | "none";

export interface Notice {
  build: number;
  status: string;
  kind: "success" | "failure" | "other";
}

export class TransitionFilter {
  private last = new Map<number, string>();

  /** What is true at start-up (or at the first successful fetch): remembered, not announced. */
  prime(builds: { id: number; status: string }[]): void {
    for (const b of builds) this.last.set(b.id, b.status);
  }

  /**
   * A build's status as now known. Returns a notice when it just became final (a change from
   * what was seen before, or a build first seen already finished after start-up) and `mode`
   * wants it; the same status twice never gives two notices.
   */
  observe(build: { id: number; status: string }, mode: NotifyMode): Notice | undefined {
    const before = this.last.get(build.id);
    this.last.set(build.id, build.status);
    if (before === build.status || !isFinal(build.status)) return undefined;
    const kind = build.status === "success" ? "success" : build.status === "failed" || build.status === "error" ? "failure" : "other";
    if (mode === "none" || (mode === "failures" && kind !== "failure")) return undefined;
    return { build: build.id, status: build.status, kind };
  }
}
