// Status → codicon (and colour) for the tree, matching the status bar's icons.

import * as vscode from "vscode";

const ICON: Record<string, [string, string?]> = {
  success: ["pass", "testing.iconPassed"],
  failed: ["error", "testing.iconFailed"],
  error: ["error", "testing.iconFailed"],
  running: ["sync~spin", "charts.blue"],
  queued: ["clock"],
  created: ["clock"],
  pending: ["clock"],
  canceled: ["circle-slash"],
  skipped: ["debug-step-over"],
  manual: ["debug-pause"],
  scheduled: ["watch"],
};

export function statusIcon(status: string): vscode.ThemeIcon {
  const [id, color] = ICON[status] ?? ["circle-outline"];
  return new vscode.ThemeIcon(id, color ? new vscode.ThemeColor(color) : undefined);
}
