#!/usr/bin/env bash
# Throughput of the public webhook listener: `cloudci serve` (no GitLab; the receiver alone)
# under wrk, for each durability setting. Loopback only; each run stops after DURATION.
# Usage: benches/receiver.sh [DURATION]   (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
cargo build --release -q
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for durability in full normal; do
  hook=$(port); api=$(port)
  mkdir -p "$work/$durability"
  cat > "$work/$durability/cloudci.toml" <<TOML
[webhook]
listen = "127.0.0.1:$hook"
tunnel = "none"
public_url = "http://127.0.0.1:$hook"
durability = "$durability"
[api]
listen = "127.0.0.1:$api"
[store]
path = "state"
TOML
  ./target/release/cloudci --config "$work/$durability/cloudci.toml" serve >/dev/null 2>&1 &
  for _ in $(seq 50); do [ -f "$work/$durability/state/hook.json" ] && break; sleep 0.1; done
  shown=$(./target/release/cloudci --config "$work/$durability/cloudci.toml" hooks show --json)
  url=$(echo "$shown" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
  export HOOK_TOKEN=$(echo "$shown" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  export BODY="$PWD/gitlab/tests/fixtures/webhook-pipeline-event.json"
  echo "== durability=$durability"
  (cd benches && wrk -t2 -c16 -d"$DURATION" --latency -s receiver.lua "$url") | grep -E "Requests/sec|Latency|99%|Non-2xx"
  kill %1 2>/dev/null || true; wait 2>/dev/null || true
done
