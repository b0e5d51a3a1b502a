#!/usr/bin/env bash
# Installs what the VS Code end-to-end test needs into tests/vscode/node_modules, offline apart
# from the npm registry: code-server 4.100.3 (the last line on Node 20) and playwright-core.
# Needs Debian's libkrb5-dev, pkg-config (a native module builds from source when its prebuilt
# download fails) and ripgrep (its binary answers @vscode/ripgrep's download from its cache).
# Prints how long it took; exits non-zero with the reason when it cannot.
set -euo pipefail
cd "$(dirname "$0")"
start=$SECONDS
# code-server writes a default config under $XDG_CONFIG_HOME even for --version: keep it out of HOME.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
version() { XDG_CONFIG_HOME="$probe" XDG_DATA_HOME="$probe" node_modules/.bin/code-server --version 2>/dev/null | grep -m1 -E "^[0-9]+\.[0-9]+"; }
if [ -x node_modules/.bin/code-server ] && [ -n "$(version)" ]; then
  echo "code-server $(version) already installed"
  exit 0
fi
rg=$(command -v rg || true)
[ -n "$rg" ] || { echo "install.sh: needs ripgrep (apt-get install ripgrep)" >&2; exit 1; }
pkg-config --exists krb5-gssapi 2>/dev/null || { echo "install.sh: needs libkrb5-dev and pkg-config" >&2; exit 1; }

# @vscode/ripgrep downloads rg from GitHub unless $TMPDIR/vscode-ripgrep-cache-<version>/ holds
# the tarball: seed it with Debian's rg for every version code-server's VS Code pins.
tmp=${TMPDIR:-/tmp}
seed() {
  local dir="$tmp/vscode-ripgrep-cache-$1"
  [ -f "$dir/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" ] && return
  mkdir -p "$dir/stage"
  cp "$rg" "$dir/stage/rg"
  for f in ripgrep-v13.0.0-10-x86_64-unknown-linux-musl ripgrep-v13.0.0-13-x86_64-unknown-linux-musl \
           ripgrep-v14.1.1-1-x86_64-unknown-linux-musl ripgrep-v14.1.1-4-x86_64-unknown-linux-musl; do
    tar -czf "$dir/$f.tar.gz" -C "$dir/stage" rg
  done
  rm -r "$dir/stage"
}

# First without scripts, to learn which @vscode/ripgrep versions the package pins.
export npm_config_unsafe_perm=true npm_config_yes=true npm_config_nodedir=/usr
npm install --no-audit --no-fund --silent --ignore-scripts
for v in $(grep -rhoE '"@vscode/ripgrep": *"[^"]*"' node_modules/code-server/lib/vscode --include=package.json \
             --include=package-lock.json 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | sort -u) \
         $(grep -rhA2 '"node_modules/@vscode/ripgrep"' node_modules/code-server/lib/vscode --include=package-lock.json \
             2>/dev/null | grep -oE '"version": *"[^"]*"' | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | sort -u); do
  seed "$v"
done
# npm 11 skips dependencies' install scripts unless allowed; code-server's postinstall installs
# VS Code's own modules (and their native builds), so it needs them all.
npm_config_dangerously_allow_all_scripts=true npm rebuild --foreground-scripts >install.log 2>&1 || {
  tail -40 install.log >&2
  echo "install.sh: code-server's postinstall failed (full log: $PWD/install.log)" >&2
  exit 1
}
v=$(version)
[ -n "$v" ] || { tail -40 install.log >&2; echo "install.sh: code-server does not start after installing" >&2; exit 1; }
echo "code-server $v installed in $((SECONDS - start)) s"
