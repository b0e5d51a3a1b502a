// The commands: Build, Cancel, Retry, Show log, Download firmware, Open merge request, and the
// token and output helpers. Each works from the command palette (on the current branch's
// build) and from the tree's context menu (on the build or job it was invoked on).

import * as os from "node:os";
import * as path from "node:path";
import * as vscode from "vscode";
import { ApiError } from "./api";
import { Controller } from "./controller";
import type { Workspace } from "./extension";
import { logUri } from "./logview";
import { currentRun, isFinal, View } from "./model";
import type { Node } from "./tree";

/** The secret storage key of a pasted token. */
export const PASTED_TOKEN = "cloudci.apiToken";

type Arg = Node | { kind: "target"; build: { id: number } } | undefined;

export class Commands {
  constructor(
    private readonly controller: Controller,
    private readonly ws: Workspace,
    private readonly context: vscode.ExtensionContext,
    private readonly log: (line: string) => void,
    private readonly output: vscode.OutputChannel,
  ) {}

  register(): vscode.Disposable[] {
    const table: Record<string, (arg: Arg) => Promise<unknown>> = {
      "cloudci.build": () => this.build(),
      "cloudci.cancel": (a) => this.act(a, "cancel"),
      "cloudci.retry": (a) => this.act(a, "retry"),
      "cloudci.showLog": (a) => this.showLog(a),
      "cloudci.downloadFirmware": (a) => this.download(a),
      "cloudci.openMergeRequest": (a) => this.openMergeRequest(a),
      "cloudci.refresh": () => this.controller.refreshList(),
      "cloudci.pasteToken": () => this.pasteToken(),
      "cloudci.forgetToken": async () => {
        await this.context.secrets.delete(PASTED_TOKEN);
        void vscode.window.showInformationMessage("cloudci: the pasted token is forgotten.");
      },
      "cloudci.showOutput": async () => this.output.show(true),
    };
    return Object.entries(table).map(([id, f]) =>
      vscode.commands.registerCommand(id, async (arg: Arg) => {
        try {
          await f(arg);
        } catch (e) {
          await this.failed(id, e);
        }
      }),
    );
  }

  private api() {
    const api = this.controller.api;
    if (!api || this.controller.conn.state !== "live") {
      const reason = "reason" in this.controller.conn ? this.controller.conn.reason : "Not connected to the cloudci daemon yet.";
      throw new ApiError(reason, this.controller.conn.state === "refused" ? 401 : undefined);
    }
    return api;
  }

  private async failed(command: string, e: unknown): Promise<void> {
    const message = (e as Error).message;
    this.log(`${command} failed: ${message}`);
    const err = e instanceof ApiError ? e : undefined;
    if (err?.refused) {
      const pick = await vscode.window.showErrorMessage(`cloudci: ${message}`, "Paste token…", "Open settings");
      if (pick === "Paste token…") await this.pasteToken();
      if (pick === "Open settings") await vscode.commands.executeCommand("workbench.action.openSettings", "cloudci");
    } else if (err?.unreachable) {
      const pick = await vscode.window.showErrorMessage(`cloudci: ${message}`, "Show output", "Retry connecting");
      if (pick === "Show output") this.output.show(true);
      if (pick === "Retry connecting") this.controller.reconnect();
    } else {
      const pick = await vscode.window.showErrorMessage(`cloudci: ${message}`, "Show output");
      if (pick === "Show output") this.output.show(true);
    }
  }

  private async build(): Promise<void> {
    const api = this.api();
    const config = this.controller.found?.config;
    if (!config) {
      throw new Error("no cloudci.toml found (in the workspace, $CLOUDCI_CONFIG or ~/.config/cloudci/config.toml); set cloudci.configFile");
    }
    let project = this.ws.project;
    if (!project) {
      const pick = await vscode.window.showQuickPick(
        config.projects.map((p) => ({ label: p.name, description: p.gitlab, p })),
        { placeHolder: "Which cloudci project is this workspace?" },
      );
      if (!pick) return;
      project = this.ws.project = pick.p;
    }
    const ref = this.ws.branch ?? project.ref;
    const targets = project.targets.length > 0 ? project.targets : config.targets;
    const picked = await vscode.window.showQuickPick(
      targets.map((t) => ({ label: t, picked: true })),
      { canPickMany: true, placeHolder: `Targets to build ${project.name} @ ${ref ?? "its default branch"} for` },
    );
    if (!picked || picked.length === 0) return;
    const started = await api.start({
      projects: [project.name],
      ...(ref ? { ref } : {}),
      targets: picked.map((p) => p.label),
    });
    this.log(`started run ${started.run}: ${started.builds.map((b) => `build ${b.id} (${b.target})`).join(", ")}`);
    await Promise.all(started.builds.map((b) => this.controller.refreshBuild(b.id)));
    // Events start with the pipeline; a build that fails before it has one is only in its record.
    for (const b of started.builds) this.controller.follow(b.id, (r) => !!r.pipeline_id || isFinal(r.status));
  }

  /** The build a command is about: the node's, else one of the current branch's newest run. */
  private async pick(arg: Arg, want: (b: View) => boolean, verb: string): Promise<View | undefined> {
    if (arg && "build" in arg) {
      return this.controller.store.get(arg.build.id) ?? (await this.controller.refreshBuild(arg.build.id).then(() => this.controller.store.get(arg.build.id)));
    }
    const run = currentRun(this.controller.store.all(), this.ws.project?.name, this.ws.branch);
    const fit = run.filter(want);
    if (fit.length === 1) return fit[0];
    if (fit.length === 0) {
      const what = run.length === 0 ? `no build of ${this.ws.branch ?? "this branch"} yet` : `no build of this branch to ${verb}`;
      void vscode.window.showInformationMessage(`cloudci: ${what}.`);
      return undefined;
    }
    const p = await vscode.window.showQuickPick(
      fit.map((b) => ({ label: b.target, description: `${b.status} · build ${b.id}`, b })),
      { placeHolder: `Which target to ${verb}?` },
    );
    return p?.b;
  }

  private async act(arg: Arg, what: "cancel" | "retry"): Promise<void> {
    const api = this.api();
    const want = what === "cancel" ? (b: View) => !isFinal(b.status) : (b: View) => ["failed", "canceled", "error"].includes(b.status);
    const b = await this.pick(arg, want, what);
    if (!b) return;
    const record = what === "cancel" ? await api.cancel(b.id) : await api.retry(b.id);
    this.log(`${what} build ${b.id}: now ${record.status}`);
    this.controller.accept(record, true);
  }

  private async showLog(arg: Arg): Promise<void> {
    const b = await this.pick(arg, () => true, "show the log of");
    if (!b) return;
    let job = arg && arg.kind === "job" ? arg.job : undefined;
    if (!job) {
      const names = Object.keys(b.jobs).sort((x, y) => b.jobs[x].id - b.jobs[y].id);
      if (names.length === 0) {
        void vscode.window.showInformationMessage(`cloudci: build ${b.id} has no jobs yet.`);
        return;
      }
      const first = b.failedJob ?? b.runningJob ?? names[names.length - 1];
      const ordered = [first, ...names.filter((n) => n !== first)];
      if (ordered.length === 1) job = first;
      else {
        const p = await vscode.window.showQuickPick(
          ordered.map((n) => ({ label: n, description: b.jobs[n].status })),
          { placeHolder: `Log of which job of ${b.target} (build ${b.id})?` },
        );
        job = p?.label;
      }
    }
    if (!job) return;
    const doc = await vscode.workspace.openTextDocument(logUri(b.id, b.target, job));
    await vscode.languages.setTextDocumentLanguage(doc, "log");
    await vscode.window.showTextDocument(doc, { preview: false });
  }

  private async download(arg: Arg): Promise<void> {
    const api = this.api();
    const b = await this.pick(arg, (x) => !!x.artifacts || x.status === "success", "download the firmware of");
    if (!b) return;
    const folder = this.ws.folder ?? os.homedir();
    const to = await vscode.window.showSaveDialog({
      defaultUri: vscode.Uri.file(path.join(folder, `${b.project}-${b.target}-build${b.id}.zip`)),
      filters: { "Zip archive": ["zip"] },
      saveLabel: "Save firmware",
    });
    if (!to) return;
    const zip = await api.download(b.id);
    await vscode.workspace.fs.writeFile(to, zip);
    this.log(`firmware of build ${b.id}: ${zip.length} bytes → ${to.fsPath}`);
    void vscode.window.showInformationMessage(`cloudci: firmware of build ${b.id} saved to ${to.fsPath}`);
  }

  private async openMergeRequest(arg: Arg): Promise<void> {
    const b = await this.pick(arg, (x) => !!x.merge_request || x.status === "success", "open the merge request of");
    if (!b) return;
    const url = b.merge_request ?? (await this.controller.refreshBuild(b.id))?.merge_request;
    if (!url) {
      void vscode.window.showInformationMessage(
        `cloudci: build ${b.id} has no merge request (after_success.merge_request in cloudci.toml opens one).`,
      );
      return;
    }
    this.log(`opening merge request ${url}`);
    await vscode.env.openExternal(vscode.Uri.parse(url));
  }

  private async pasteToken(): Promise<void> {
    const token = await vscode.window.showInputBox({
      prompt: "The cloudci API token (from `cloudci token issue`). Kept in VS Code's secret storage.",
      password: true,
      ignoreFocusOut: true,
    });
    if (!token) return;
    await this.context.secrets.store(PASTED_TOKEN, token.trim());
    this.log("a pasted token is stored in the secret storage");
  }
}
