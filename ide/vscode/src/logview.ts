// Job logs in read-only editor tabs (`cloudci-log:` documents): fetched from the daemon from the
// last X-Next-Offset while the job runs, closed with a footer once it has its final status.

import * as vscode from "vscode";
import { Controller } from "./controller";
import { footer, LogBuffer } from "./log";
import { isFinal } from "./model";

export const SCHEME = "cloudci-log";
const FOLLOW_MS = 1000;

export function logUri(build: number, target: string, job: string): vscode.Uri {
  return vscode.Uri.from({
    scheme: SCHEME,
    path: `/build ${build}/${target} ${job}.log`,
    query: new URLSearchParams({ build: String(build), job }).toString(),
  });
}

interface Follower {
  buffer: LogBuffer;
  header: string;
  end?: string;
  timer?: NodeJS.Timeout;
  error?: string;
}

export class LogDocuments implements vscode.TextDocumentContentProvider, vscode.Disposable {
  private changed = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.changed.event;
  private followers = new Map<string, Follower>();
  private subs: vscode.Disposable[] = [];

  constructor(
    private readonly controller: Controller,
    private readonly log: (line: string) => void,
  ) {
    this.subs.push(
      vscode.workspace.onDidCloseTextDocument((d) => {
        if (d.uri.scheme !== SCHEME) return;
        const f = this.followers.get(d.uri.toString());
        clearTimeout(f?.timer);
        this.followers.delete(d.uri.toString());
      }),
    );
  }

  provideTextDocumentContent(uri: vscode.Uri): string {
    const key = uri.toString();
    let f = this.followers.get(key);
    if (!f) {
      const q = new URLSearchParams(uri.query);
      const build = Number(q.get("build"));
      const job = q.get("job") ?? "";
      const b = this.controller.store.get(build);
      f = { buffer: new LogBuffer(), header: `cloudci · build ${build} · ${b?.project ?? ""} ${b?.target ?? ""} · job ${job}\n\n` };
      this.followers.set(key, f);
      void this.follow(uri, build, job, f);
    }
    const error = f.error ? `\n[${f.error}]\n` : "";
    return f.header + f.buffer.text() + error + (f.end ?? "");
  }

  private async follow(uri: vscode.Uri, build: number, job: string, f: Follower): Promise<void> {
    const key = uri.toString();
    if (this.followers.get(key) !== f) return; // closed
    const status = this.controller.store.get(build)?.jobs[job]?.status;
    const finalBefore = isFinal(status);
    const api = this.controller.api;
    let changed = false;
    try {
      if (!api) throw new Error("not connected to the daemon");
      // Read until the daemon has nothing more for now.
      for (let i = 0; i < 50; i++) {
        const chunk = await api.log(build, job, f.buffer.offset);
        const before = f.buffer.offset;
        changed = f.buffer.apply(chunk) || changed;
        if (chunk.text === "" || chunk.nextOffset === before) break;
      }
      if (f.error) changed = true;
      f.error = undefined;
    } catch (e) {
      const message = (e as Error).message;
      if (f.error !== message) changed = true;
      f.error = message;
      this.log(`log of build ${build} job ${job}: ${message}`);
    }
    // The status was final before this read, so the read got everything: the tab is complete.
    if (finalBefore && status) {
      f.end = footer(job, status);
      changed = true;
    } else {
      f.timer = setTimeout(() => void this.follow(uri, build, job, f), FOLLOW_MS);
    }
    if (changed) {
      this.changed.fire(uri);
      this.revealEnd(uri);
    }
  }

  /** Keeps a tab whose end was in view scrolled to the end, like a terminal. */
  private revealEnd(uri: vscode.Uri): void {
    setTimeout(() => {
      for (const ed of vscode.window.visibleTextEditors) {
        if (ed.document.uri.toString() !== uri.toString()) continue;
        const last = ed.document.lineCount - 1;
        const seen = ed.visibleRanges.some((r) => r.end.line >= last - 3) || ed.visibleRanges.length === 0;
        if (seen || ed.document.lineCount < 40) ed.revealRange(new vscode.Range(last, 0, last, 0));
      }
    }, 50);
  }

  dispose(): void {
    for (const f of this.followers.values()) clearTimeout(f.timer);
    this.followers.clear();
    for (const s of this.subs) s.dispose();
    this.changed.dispose();
  }
}
