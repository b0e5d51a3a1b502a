// Notifications: a build's result when it changes while VS Code runs (never what was already
// true at start-up), as `cloudci.notifications` allows; and what to do when the daemon is
// unreachable or refuses the token.

import * as vscode from "vscode";
import { Controller } from "./controller";
import { failingLine } from "./log";
import { Build } from "./model";
import { NotifyMode, TransitionFilter } from "./notify";
import { Connection } from "./status";
import type { Workspace } from "./extension";

export class Notifier {
  private filter = new TransitionFilter();
  private told: Connection["state"] | undefined;

  constructor(
    private readonly controller: Controller,
    private readonly log: (line: string) => void,
    private readonly ws: Workspace,
  ) {
    controller.onRecord((b, initial) => this.record(b, initial));
    controller.onConnection((c) => void this.connection(c));
  }

  private record(b: Build, initial: boolean): void {
    if (initial) return this.filter.prime([b]);
    const mode = vscode.workspace.getConfiguration("cloudci").get<NotifyMode>("notifications", "all");
    const notice = this.filter.observe(b, mode);
    if (!notice) return;
    this.log(`build ${b.id} (${b.project} ${b.target}) → ${b.status}: notifying`);
    void this.announce(b, notice.kind);
  }

  private async announce(b: Build, kind: "success" | "failure" | "other"): Promise<void> {
    const what = `${b.project} for ${b.target} @ ${b.ref ?? "?"} (build ${b.id})`;
    const target = { kind: "target", build: b };
    if (kind === "success") {
      const actions = [b.merge_request ? "Open merge request" : undefined, b.artifacts ? "Download firmware" : undefined];
      const pick = await vscode.window.showInformationMessage(
        `cloudci: ${what} succeeded.`,
        ...actions.filter((a): a is string => !!a),
      );
      if (pick === "Open merge request") await vscode.commands.executeCommand("cloudci.openMergeRequest", target);
      if (pick === "Download firmware") await vscode.commands.executeCommand("cloudci.downloadFirmware", target);
      return;
    }
    if (kind === "failure") {
      const job = Object.entries(b.jobs).find(([, j]) => j.status === "failed")?.[0];
      let line = "";
      if (job && this.controller.api) {
        try {
          const chunk = await this.controller.api.log(b.id, job, 0);
          line = failingLine(chunk.text) ?? "";
        } catch (e) {
          this.log(`could not read the failed job's log: ${(e as Error).message}`);
        }
      }
      const why = job ? ` in job ${job}${line ? `: ${line}` : ""}` : b.reason ? `: ${b.reason}` : "";
      const pick = await vscode.window.showErrorMessage(`cloudci: ${what} failed${why}`, "Show log", "Retry");
      if (pick === "Show log") await vscode.commands.executeCommand("cloudci.showLog", job ? { kind: "job", build: b, job } : target);
      if (pick === "Retry") await vscode.commands.executeCommand("cloudci.retry", target);
      return;
    }
    const pick = await vscode.window.showWarningMessage(`cloudci: ${what} ${b.status}.`, "Retry");
    if (pick === "Retry") await vscode.commands.executeCommand("cloudci.retry", target);
  }

  private async connection(c: Connection): Promise<void> {
    if (c.state === "live" || c.state === "connecting") {
      this.told = undefined;
      return;
    }
    if (this.told === c.state) return; // once per outage, not per reconnect attempt
    this.told = c.state;
    const actions =
      c.state === "down"
        ? ["Start cloudci serve", "Open settings", "Show output"]
        : ["Paste token…", "Open settings", "Show output"];
    const pick = await vscode.window.showErrorMessage(`cloudci: ${c.reason}`, ...actions);
    if (pick === "Start cloudci serve") {
      const t = vscode.window.createTerminal({ name: "cloudci serve", ...(this.ws.folder ? { cwd: this.ws.folder } : {}) });
      t.show();
      t.sendText("cloudci serve");
    } else if (pick === "Paste token…") {
      await vscode.commands.executeCommand("cloudci.pasteToken");
    } else if (pick === "Open settings") {
      await vscode.commands.executeCommand("workbench.action.openSettings", "cloudci");
    } else if (pick === "Show output") {
      await vscode.commands.executeCommand("cloudci.showOutput");
    }
  }
}
