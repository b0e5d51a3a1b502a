import { test } from "node:test";
import * as assert from "node:assert/strict";
import { discover, Inputs, projectFor, readConfig } from "../src/discovery";

const CONFIG = `
# a comment
[api]
listen = "127.0.0.1:8788"

[store]
path = "state"   # relative to this file

[targets.host]
variables = { BOARD = "host" }
[targets.stm32f4]
variables = { BOARD = "nucleo" }

[projects.firmware]
gitlab = "acme/firmware"
targets = [
  "host",   # the host build
  "stm32f4",
]
after_success = { merge_request = { target_branch = "main" } }

[projects.hal]
gitlab = 'acme/hal'
targets = ["host"]
`;

function inputs(files: Record<string, string>, over: Partial<Inputs> = {}): Inputs {
  return {
    settings: { url: "", tokenFile: "", configFile: "" },
    env: {},
    home: "/home/u",
    workspaceFolders: ["/ws"],
    readFile: (f) => files[f],
    ...over,
  };
}

test("the workspace's cloudci.toml gives the state dir; hook.json the URL; secrets/cli-token the token", () => {
  const found = discover(
    inputs({
      "/ws/cloudci.toml": CONFIG,
      "/ws/state/hook.json": '{"public_url":"https://x","signing_confirmed":true,"api_url":"http://127.0.0.1:40001"}',
      "/ws/state/secrets/cli-token": "tok-cli\n",
    }),
  );
  assert.equal(found.config?.file, "/ws/cloudci.toml");
  assert.equal(found.stateDir, "/ws/state");
  assert.equal(found.url, "http://127.0.0.1:40001");
  assert.equal(found.urlSource, "/ws/state/hook.json");
  assert.equal(found.token, "tok-cli");
  assert.equal(found.tokenSource, "/ws/state/secrets/cli-token");
});

test("the setting beats CLOUDCI_URL, which beats hook.json", () => {
  const files = { "/home/u/.local/state/cloudci/hook.json": '{"api_url":"http://127.0.0.1:3"}' };
  assert.equal(discover(inputs(files)).url, "http://127.0.0.1:3");
  assert.equal(discover(inputs(files, { env: { CLOUDCI_URL: "http://127.0.0.1:2/" } })).url, "http://127.0.0.1:2");
  const s = discover(inputs(files, { env: { CLOUDCI_URL: "http://127.0.0.1:2" }, settings: { url: "http://127.0.0.1:1", tokenFile: "", configFile: "" } }));
  assert.equal(s.url, "http://127.0.0.1:1");
  assert.equal(s.urlSource, "setting cloudci.url");
});

test("without a config: $XDG_STATE_HOME/cloudci, then ~/.local/state/cloudci; ~/.config/cloudci/config.toml is read", () => {
  assert.equal(discover(inputs({}, { env: { XDG_STATE_HOME: "/xdg" } })).stateDir, "/xdg/cloudci");
  assert.equal(discover(inputs({})).stateDir, "/home/u/.local/state/cloudci");
  const found = discover(inputs({ "/home/u/.config/cloudci/config.toml": CONFIG }, { workspaceFolders: [] }));
  assert.equal(found.stateDir, "/home/u/.config/cloudci/state");
  assert.match(found.urlSource, /hook\.json \(not there/);
});

test("token order: pasted, cloudci.tokenFile, CLOUDCI_TOKEN, the daemon's cli-token; sources never hold the token", () => {
  const files = { "/home/u/.local/state/cloudci/secrets/cli-token": "tok-cli", "/home/u/tok": "tok-file\n" };
  const settings = { url: "", tokenFile: "~/tok", configFile: "" };
  assert.equal(discover(inputs(files)).token, "tok-cli");
  assert.equal(discover(inputs(files, { env: { CLOUDCI_TOKEN: "tok-env" } })).tokenSource, "CLOUDCI_TOKEN");
  assert.equal(discover(inputs(files, { env: { CLOUDCI_TOKEN: "tok-env" }, settings })).token, "tok-file");
  const pasted = discover(inputs(files, { settings, pastedToken: "tok-pasted" }));
  assert.equal(pasted.token, "tok-pasted");
  assert.equal(pasted.tokenSource, "the pasted token");
  const missing = discover(inputs({}, { settings: { url: "", tokenFile: "/nope", configFile: "" } }));
  assert.equal(missing.token, undefined);
  assert.match(missing.tokenSource, /\/nope \(setting cloudci.tokenFile/);
});

test("the config's projects and targets; the workspace's project from its remote, else the only one", () => {
  const c = readConfig("/ws/cloudci.toml", CONFIG);
  assert.deepEqual(c.projects.map((p) => [p.name, p.gitlab, p.targets]), [
    ["firmware", "acme/firmware", ["host", "stm32f4"]],
    ["hal", "acme/hal", ["host"]],
  ]);
  assert.deepEqual(c.targets, ["host", "stm32f4"]);
  assert.equal(c.apiListen, "127.0.0.1:8788");
  assert.equal(projectFor(c, ["git@gitlab.example.com:acme/hal.git"])?.name, "hal");
  assert.equal(projectFor(c, ["https://gitlab.example.com/acme/firmware"])?.name, "firmware");
  assert.equal(projectFor(c, ["/tmp/elsewhere"]), undefined);
  assert.equal(projectFor(readConfig("/c.toml", '[projects.one]\ngitlab = "a/one"\n'), [])?.name, "one");
});
