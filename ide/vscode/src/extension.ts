// The cloudci extension: wires the controller (daemon connection, builds) to VS Code's status
// bar, tree view, log tabs, notifications and commands.

import * as fs from "node:fs";
import * as os from "node:os";
import * as vscode from "vscode";
import { Commands, PASTED_TOKEN } from "./commands";
import { Controller } from "./controller";
import { discover, projectFor, Project, Settings } from "./discovery";
import { currentBranch, remoteUrls } from "./git";
import { LogDocuments, SCHEME } from "./logview";
import { currentRun } from "./model";
import { Notifier } from "./notifier";
import { statusBarText } from "./status";
import { BuildsTree } from "./tree";

export interface Workspace {
  branch: string | undefined;
  project: Project | undefined;
  folder: string | undefined;
}

export function activate(context: vscode.ExtensionContext): void {
  const output = vscode.window.createOutputChannel("cloudci");
  const log = (line: string) => output.appendLine(`${new Date().toISOString().slice(11, 23)} ${line}`);
  const ws: Workspace = { branch: undefined, project: undefined, folder: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath };

  const controller = new Controller({
    log,
    discover: async () => {
      const c = vscode.workspace.getConfiguration("cloudci");
      const settings: Settings = {
        url: c.get<string>("url", ""),
        tokenFile: c.get<string>("tokenFile", ""),
        configFile: c.get<string>("configFile", ""),
      };
      const found = discover({
        settings,
        env: process.env,
        home: os.homedir(),
        workspaceFolders: (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath),
        pastedToken: (await context.secrets.get(PASTED_TOKEN)) ?? "",
        readFile: (f) => {
          try {
            return fs.readFileSync(f, "utf8");
          } catch {
            return undefined;
          }
        },
      });
      if (found.config && ws.folder) ws.project = projectFor(found.config, await remoteUrls(ws.folder));
      return found;
    },
  });

  const item = vscode.window.createStatusBarItem("cloudci.status", vscode.StatusBarAlignment.Left, 50);
  item.name = "cloudci build";
  const render = () => {
    const run = currentRun(controller.store.all(), ws.project?.name, ws.branch);
    const s = statusBarText(run, ws.branch, controller.conn);
    item.text = s.text;
    item.tooltip = s.tooltip;
    item.command = s.command;
    item.backgroundColor = s.alarm ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
    item.show();
  };

  const tree = new BuildsTree(controller);
  const logs = new LogDocuments(controller, log);
  new Notifier(controller, log, ws); // listens to the controller
  const commands = new Commands(controller, ws, context, log, output);

  controller.onChange(() => {
    render();
    tree.refresh();
  });

  const updateBranch = async () => {
    const b = ws.folder ? await currentBranch(ws.folder) : undefined;
    if (b !== ws.branch) {
      ws.branch = b;
      log(`branch: ${b ?? "(none)"}`);
      render();
    }
  };
  if (ws.folder) {
    const head = vscode.workspace.createFileSystemWatcher(new vscode.RelativePattern(ws.folder, ".git/HEAD"));
    head.onDidChange(updateBranch);
    head.onDidCreate(updateBranch);
    context.subscriptions.push(head);
  }
  // A branch switched from a terminal may not touch the watcher in every setup: check on focus too.
  context.subscriptions.push(vscode.window.onDidChangeWindowState((s) => s.focused && void updateBranch()));

  context.subscriptions.push(
    output,
    item,
    logs,
    vscode.window.registerTreeDataProvider("cloudci.builds", tree),
    vscode.workspace.registerTextDocumentContentProvider(SCHEME, logs),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (["cloudci.url", "cloudci.tokenFile", "cloudci.configFile"].some((k) => e.affectsConfiguration(k))) {
        controller.reconnect();
      }
    }),
    context.secrets.onDidChange((e) => e.key === PASTED_TOKEN && controller.reconnect()),
    { dispose: () => controller.dispose() },
    ...commands.register(),
  );

  render();
  void updateBranch().then(() => controller.start());
  log(`cloudci extension ${context.extension.packageJSON.version as string} active`);
}

export function deactivate(): void {}
