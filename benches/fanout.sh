#!/usr/bin/env bash
# SSE fan-out of `cloudci serve` (durability "full"): at 1, 100 and 1,000 subscribers, the time
# from a delivery's 2xx to its events at each subscriber (p50/p99/max), the daemon's CPU per event
# per subscriber, and the daemon's memory per idle subscriber; every subscriber must get every
# event once and in order (the fleet exits non-zero otherwise). GitLab's sample pipeline delivery
# (6 events: the pipeline and its 5 jobs), each a new pipeline, DELIVERIES of them at RATE/s.
# Usage: benches/fanout.sh [DELIVERIES] [RATE]   Loopback only; each run stops by itself.
# SUBS="1 100 1000" (the subscriber counts). CLOUDCI="NAME=BINARY ..." A/Bs binaries built before
# (nothing is compiled then, so the run can go under /work/bin/quiet-run; the fleet must be built
# too): for each subscriber count, every binary in turn, ROUNDS times, each line labelled.
set -euo pipefail
cd "$(dirname "$0")/.."
DELIVERIES=${1:-200}
RATE=${2:-20}
SUBS=${SUBS:-1 100 1000}
ROUNDS=${ROUNDS:-1}
TARGET=${CARGO_TARGET_DIR:-target}
FLEET_TARGET=${CARGO_TARGET_DIR:-benches/fleet/target}
if [ -z "${CLOUDCI:-}" ]; then
  # The ngrok feature only adds a tunnel (unused here: tunnel = "none"); without it the build is shorter.
  cargo build --release -q -p cloudci -p gitlab-sim --no-default-features
  (cd benches/fleet && cargo build --release -q)
  CLOUDCI="cloudci=$TARGET/release/cloudci"
fi
for b in $CLOUDCI; do [ -x "${b#*=}" ] || { echo "no binary ${b#*=}" >&2; exit 2; }; done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo "${COMMIT:-?}") load: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores)"
for subs in $SUBS; do
for round in $(seq "$ROUNDS"); do
for b in $CLOUDCI; do
  name=${b%%=*}; bin=${b#*=}
  hook=$(port); api=$(port); dir="$work/$subs-$round-$name"; mkdir -p "$dir"
  cat > "$dir/cloudci.toml" <<TOML
[webhook]
listen = "127.0.0.1:$hook"
tunnel = "none"
public_url = "http://127.0.0.1:$hook"
durability = "full"
[api]
listen = "127.0.0.1:$api"
[store]
path = "state"
TOML
  "$bin" --config "$dir/cloudci.toml" serve >/dev/null 2>"$dir/serve.err" &
  serve=$!; pids+=($serve)
  for _ in $(seq 100); do [ -f "$dir/state/hook.json" ] && break; sleep 0.1; done
  shown=$("$bin" --config "$dir/cloudci.toml" hooks show --json)
  url=$(echo "$shown" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
  hook_token=$(echo "$shown" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  token=$("$bin" --config "$dir/cloudci.toml" token issue --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  printf '%s ' "$name"
  "$FLEET_TARGET/release/cloudci-bench-fleet" --pid "$serve" --api "127.0.0.1:$api" --token "$token" \
    --hook "127.0.0.1:$hook" --hook-path "/${url#http://*/}" --hook-token "$hook_token" \
    --body gitlab/tests/fixtures/webhook-pipeline-event.json --subs "$subs" --deliveries "$DELIVERIES" --rate "$RATE" \
    || echo "$name: the fleet failed (exit $?; see above)"
  kill "$serve"; wait "$serve" 2>/dev/null || true
done
done
done
