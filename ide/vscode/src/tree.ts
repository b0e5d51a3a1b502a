// The "Builds" view: recent runs → their targets (one build each) → jobs, with live status icons.

import * as vscode from "vscode";
import { Controller } from "./controller";
import { overallStatus, View } from "./model";
import { statusIcon } from "./icons";

export type Node =
  | { kind: "run"; run: number; builds: View[] }
  | { kind: "target"; build: View }
  | { kind: "job"; build: View; job: string };

const RUNS_SHOWN = 15;

export class BuildsTree implements vscode.TreeDataProvider<Node> {
  private changed = new vscode.EventEmitter<Node | undefined>();
  readonly onDidChangeTreeData = this.changed.event;

  constructor(private readonly controller: Controller) {}

  refresh(): void {
    this.changed.fire(undefined);
  }

  getChildren(node?: Node): Node[] {
    if (!node) {
      const runs = new Map<number, View[]>();
      for (const b of this.controller.store.all()) runs.set(b.run, [...(runs.get(b.run) ?? []), b]);
      return [...runs.entries()]
        .sort(([a], [b]) => b - a)
        .slice(0, RUNS_SHOWN)
        .map(([run, builds]) => ({ kind: "run", run, builds: builds.sort((x, y) => x.target.localeCompare(y.target)) }));
    }
    if (node.kind === "run") return node.builds.map((build) => ({ kind: "target", build }));
    if (node.kind === "target") {
      const jobs = node.build.jobs;
      return Object.keys(jobs)
        .sort((a, b) => jobs[a].id - jobs[b].id)
        .map((job) => ({ kind: "job", build: node.build, job }));
    }
    return [];
  }

  getTreeItem(node: Node): vscode.TreeItem {
    if (node.kind === "run") {
      const first = node.builds[0];
      const status = overallStatus(node.builds);
      const item = new vscode.TreeItem(`${first.project} @ ${first.ref ?? "?"}`, vscode.TreeItemCollapsibleState.Expanded);
      item.id = `run-${node.run}`;
      item.description = `${status} · run ${node.run}`;
      item.iconPath = statusIcon(status);
      item.tooltip = `${first.project} (${first.gitlab}) @ ${first.ref ?? "?"} — run ${node.run}: ${status}`;
      item.contextValue = "run";
      return item;
    }
    if (node.kind === "target") {
      const b = node.build;
      const item = new vscode.TreeItem(b.target, vscode.TreeItemCollapsibleState.Expanded);
      item.id = `build-${b.id}`;
      item.description = `${b.status} · build ${b.id}`;
      item.iconPath = statusIcon(b.status);
      item.tooltip = [
        `build ${b.id}: ${b.project} for ${b.target} @ ${b.ref ?? "?"} — ${b.status}`,
        b.reason ?? "",
        b.pipeline_url ? `pipeline ${b.pipeline_url}` : "",
        b.merge_request ? `merge request ${b.merge_request}` : "",
      ]
        .filter((s) => s !== "")
        .join("\n");
      item.contextValue = contextOf(b);
      return item;
    }
    const j = node.build.jobs[node.job];
    const item = new vscode.TreeItem(node.job, vscode.TreeItemCollapsibleState.None);
    item.id = `build-${node.build.id}-job-${node.job}`;
    item.description = j.status;
    item.iconPath = statusIcon(j.status);
    item.contextValue = "job";
    item.command = { command: "cloudci.showLog", title: "Show log", arguments: [node] };
    return item;
  }
}

/** Words the menus' `viewItem =~` clauses look for. */
function contextOf(b: View): string {
  const words = ["target"];
  if (b.status === "running" || b.status === "queued") words.push("running");
  if (b.status === "failed" || b.status === "canceled" || b.status === "error") words.push("retryable");
  if (b.artifacts) words.push("firmware");
  if (b.merge_request) words.push("mr");
  return words.join(" ");
}
