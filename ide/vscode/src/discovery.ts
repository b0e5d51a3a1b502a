// Finds the daemon and its token the way the cloudci CLI does, from settings, the environment and
// files. Pure apart from the `readFile` it is given, so it is tested without VS Code.

import * as path from "node:path";
import { parseToml, tomlString, tomlStrings, tomlTable, TomlTable } from "./toml";

export interface Settings {
  url: string;
  tokenFile: string;
  configFile: string;
}

export interface Inputs {
  settings: Settings;
  env: Record<string, string | undefined>;
  home: string;
  workspaceFolders: string[];
  /** A token the user pasted (kept in VS Code's secret storage). */
  pastedToken?: string;
  /** File contents, or undefined when it cannot be read. */
  readFile: (file: string) => string | undefined;
}

export interface Project {
  name: string;
  gitlab: string;
  targets: string[];
  ref?: string;
}

export interface CloudciConfig {
  file: string;
  projects: Project[];
  /** Every target the file defines. */
  targets: string[];
  stateDir?: string;
  apiListen?: string;
}

export interface Found {
  config?: CloudciConfig;
  stateDir: string;
  url?: string;
  /** Where the URL came from, for messages ("setting cloudci.url", a file path, ...). */
  urlSource: string;
  token?: string;
  /** Where the token came from; never the token itself. */
  tokenSource: string;
}

const nonEmpty = (s: string | undefined): string | undefined => (s && s.trim() !== "" ? s.trim() : undefined);

/** Where cloudci.toml is looked for, in order (the CLI's order, the workspace standing for `./`). */
export function configCandidates(i: Inputs): string[] {
  const list: string[] = [];
  const explicit = nonEmpty(i.settings.configFile) ?? nonEmpty(i.env.CLOUDCI_CONFIG);
  if (explicit) list.push(expandHome(explicit, i.home));
  for (const folder of i.workspaceFolders) list.push(path.join(folder, "cloudci.toml"));
  const configHome = nonEmpty(i.env.XDG_CONFIG_HOME) ?? path.join(i.home, ".config");
  list.push(path.join(configHome, "cloudci", "config.toml"));
  return list;
}

export function readConfig(file: string, text: string): CloudciConfig {
  const t = parseToml(text);
  const projects: Project[] = [];
  for (const [name, v] of Object.entries(tomlTable(t, "projects") ?? {})) {
    const p = v as TomlTable;
    const gitlab = tomlString(p, "gitlab");
    if (!gitlab) continue;
    const ref = tomlString(p, "ref");
    projects.push({ name, gitlab, targets: tomlStrings(p, "targets") ?? [], ...(ref ? { ref } : {}) });
  }
  const store = tomlString(t, "store", "path");
  return {
    file,
    projects,
    targets: Object.keys(tomlTable(t, "targets") ?? {}),
    ...(store ? { stateDir: path.resolve(path.dirname(file), store) } : {}),
    ...(tomlString(t, "api", "listen") ? { apiListen: tomlString(t, "api", "listen") } : {}),
  };
}

export function findConfig(i: Inputs): CloudciConfig | undefined {
  for (const file of configCandidates(i)) {
    const text = i.readFile(file);
    if (text !== undefined) return readConfig(file, text);
  }
  return undefined;
}

/** `[store] path`, else `$XDG_STATE_HOME/cloudci`, else `~/.local/state/cloudci`. */
export function stateDir(config: CloudciConfig | undefined, i: Inputs): string {
  if (config?.stateDir) return config.stateDir;
  const base = nonEmpty(i.env.XDG_STATE_HOME) ?? path.join(i.home, ".local", "state");
  return path.join(base, "cloudci");
}

export function discover(i: Inputs): Found {
  const config = findConfig(i);
  const state = stateDir(config, i);
  const found: Found = { stateDir: state, urlSource: "", tokenSource: "" };
  if (config) found.config = config;

  const hookFile = path.join(state, "hook.json");
  const fromSetting = nonEmpty(i.settings.url);
  const fromEnv = nonEmpty(i.env.CLOUDCI_URL);
  if (fromSetting) Object.assign(found, { url: fromSetting, urlSource: "setting cloudci.url" });
  else if (fromEnv) Object.assign(found, { url: fromEnv, urlSource: "CLOUDCI_URL" });
  else {
    const hook = i.readFile(hookFile);
    const api = hook === undefined ? undefined : apiUrlOf(hook);
    if (api) Object.assign(found, { url: api, urlSource: hookFile });
    else found.urlSource = `${hookFile} (not there: cloudci serve writes it when it starts)`;
  }
  if (found.url) found.url = found.url.replace(/\/+$/, "");

  const tokenFile = nonEmpty(i.settings.tokenFile);
  const cliToken = path.join(state, "secrets", "cli-token");
  if (nonEmpty(i.pastedToken)) Object.assign(found, { token: i.pastedToken!.trim(), tokenSource: "the pasted token" });
  else if (tokenFile) {
    const file = expandHome(tokenFile, i.home);
    const t = nonEmpty(i.readFile(file));
    if (t) Object.assign(found, { token: t, tokenSource: file });
    else found.tokenSource = `${file} (setting cloudci.tokenFile; unreadable or empty)`;
  } else if (nonEmpty(i.env.CLOUDCI_TOKEN)) {
    Object.assign(found, { token: i.env.CLOUDCI_TOKEN!.trim(), tokenSource: "CLOUDCI_TOKEN" });
  } else {
    const t = nonEmpty(i.readFile(cliToken));
    if (t) Object.assign(found, { token: t, tokenSource: cliToken });
    else found.tokenSource = `${cliToken} (not there)`;
  }
  return found;
}

function apiUrlOf(hookJson: string): string | undefined {
  try {
    const v = JSON.parse(hookJson) as { api_url?: unknown };
    return typeof v.api_url === "string" && v.api_url !== "" ? v.api_url : undefined;
  } catch {
    return undefined;
  }
}

function expandHome(p: string, home: string): string {
  return p === "~" ? home : p.startsWith("~/") ? path.join(home, p.slice(2)) : p;
}

/** The project a workspace builds: the one whose GitLab path its remote names, else the only one. */
export function projectFor(config: CloudciConfig, remoteUrls: string[]): Project | undefined {
  const norm = (s: string) => s.replace(/\.git$/, "").replace(/\/+$/, "");
  for (const p of config.projects) {
    if (remoteUrls.some((u) => norm(u).endsWith("/" + p.gitlab) || norm(u).endsWith(":" + p.gitlab))) return p;
  }
  return config.projects.length === 1 ? config.projects[0] : undefined;
}
