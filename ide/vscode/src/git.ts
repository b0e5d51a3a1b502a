// The workspace's current branch and remotes, from git itself.

import { execFile } from "node:child_process";

function git(cwd: string, args: string[]): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile("git", args, { cwd, timeout: 5000 }, (err, stdout) => resolve(err ? undefined : stdout.trim()));
  });
}

/** The checked-out branch, or undefined (detached HEAD, not a repository, no git). */
export async function currentBranch(cwd: string): Promise<string | undefined> {
  const b = await git(cwd, ["rev-parse", "--abbrev-ref", "HEAD"]);
  return b && b !== "HEAD" ? b : undefined;
}

export async function remoteUrls(cwd: string): Promise<string[]> {
  const out = await git(cwd, ["remote", "-v"]);
  return [...new Set((out ?? "").split("\n").map((l) => l.split(/\s+/)[1]).filter((u): u is string => !!u))];
}
