#!/usr/bin/env sh
# Installs cloudci's External Tools for Qt Creator: the tool definitions into Qt Creator's
# per-user externaltools folder, and the cloudci-qtc helper they run into ~/.local/bin.
# Restart Qt Creator afterwards; the tools are under Tools > External > cloudci.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
case "$(uname -s)" in
  Darwin) tools="$HOME/.config/QtProject/qtcreator/externaltools" ;;
  *) tools="${XDG_CONFIG_HOME:-$HOME/.config}/QtProject/qtcreator/externaltools" ;;
esac
bin="${CLOUDCI_QTC_BIN:-$HOME/.local/bin}"
mkdir -p "$tools" "$bin"
cp "$here"/cloudci-*.xml "$tools"/
cp "$here/cloudci-qtc" "$bin/cloudci-qtc"
chmod +x "$bin/cloudci-qtc"
echo "installed $(ls "$here"/cloudci-*.xml | wc -l | tr -d ' ') tools into $tools and cloudci-qtc into $bin"
command -v cloudci >/dev/null 2>&1 || echo "note: no cloudci on PATH; the tools need it (or set CLOUDCI to its path)"
