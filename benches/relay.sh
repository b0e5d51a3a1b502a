#!/usr/bin/env bash
# Relay ingest, side by side in one run: `cloudci serve` (SQLite, durability full), one
# `cloudci relay` on a throwaway PostgreSQL (synchronous_commit on), and three relays on the same
# PostgreSQL behind nginx (round robin, keep-alive). GitLab's sample pipeline delivery with
# X-Gitlab-Token (no signature, so the three are compared on storing, not on HMAC), each request a
# new Idempotency-Key; wrk -t1, loopback, c = 8 and 32.
# Then, with benches/fleet (each delivery a new pipeline of 6 events, so the sequencer works):
# - steady: RATE deliveries/s for RATE_SECS s into each receiver, 32 connections, no subscriber:
#   ingest latency from each delivery's scheduled send to its 2xx (wrk2's way: a slow answer
#   counts against those queued behind it), and how fast the relay's sequencers kept up;
# - across instances (first, on an empty log): SUBS subscribers on instances 2 and 3, LAT_N deliveries at LAT_RATE/s into
#   instance 1: time from each delivery's 2xx to its events at every subscriber.
# Each of those REPEAT times.
# Usage: benches/relay.sh [DURATION]   (apt-get install -y wrk nginx-light postgresql)
#   env: RATE=300 RATE_SECS=20 SUBS=200 LAT_N=200 LAT_RATE=20 REPEAT=3 LAT_ONLY=
# Every server listens on 127.0.0.1 and is stopped at the end; each run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
RATE=${RATE:-300}
RATE_SECS=${RATE_SECS:-20}
SUBS=${SUBS:-200}
LAT_N=${LAT_N:-200}
LAT_RATE=${LAT_RATE:-20}
REPEAT=${REPEAT:-3}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p cloudci --no-default-features
(cd benches/fleet && cargo build --release -q)
bin="$TARGET/release/cloudci"
fleet="${CARGO_TARGET_DIR:-benches/fleet/target}/release/cloudci-bench-fleet"
work=$(mktemp -d)
chmod 755 "$work"
pids=()
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export BODY="$PWD/gitlab/tests/fixtures/webhook-pipeline-event.json"
export HOOK_TOKEN=bench-hook-token
PATH_SECRET=YmVuY2gtcGF0aC1zZWNyZXQ
run_wrk() { # url conns -> "req/s p99 non-2xx"
  local out
  out=$(cd benches && wrk -t1 -c"$2" -d"$DURATION" --latency -s receiver.lua "$1")
  echo "$out" >> "$work/wrk.log"
  echo "$(echo "$out" | awk '/Requests\/sec/{print $2}') $(echo "$out" | awk '$1=="99%"{print $2}') $(echo "$out" | awk '/Non-2xx/{print $NF}')"
}

# PostgreSQL: a throwaway cluster, as the tests start it.
mkdir -p "$work/pg" && chown postgres "$work/pg" 2>/dev/null || true
pg=$(port)
as_pg "$pgbin/initdb" -D "$work/pg/data" -A trust -U cloudci --no-instructions >/dev/null
as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w \
  -o "-k $work/pg -p $pg -c listen_addresses=127.0.0.1 -c synchronous_commit=on" start >/dev/null
export CLOUDCI_RELAY_DATABASE_URL="postgres://cloudci@127.0.0.1:$pg/postgres"

# The relays' shared secrets.
mkdir -p -m 700 "$work/relay-secrets"
printf %s "$PATH_SECRET" > "$work/relay-secrets/path-secret"
printf %s "$HOOK_TOKEN" > "$work/relay-secrets/hook-token"
chmod 600 "$work/relay-secrets"/*
relay() { # listen-port api-port
  "$bin" relay --listen "127.0.0.1:$1" --api-listen "127.0.0.1:$2" --secrets "$work/relay-secrets" \
    >/dev/null 2>>"$work/relay.err" &
  pids+=($!)
}
up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1"; exit 1; }

# serve: tunnel none, no hooks; its hook URL and token from `hooks show`.
hook=$(port); api=$(port)
cat > "$work/cloudci.toml" <<TOML
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
"$bin" --config "$work/cloudci.toml" serve --no-hooks >/dev/null 2>"$work/serve.err" &
serve=$!; pids+=($serve)
up "http://127.0.0.1:$hook/"
serve_url=$("$bin" --config "$work/cloudci.toml" hooks show --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
serve_token=$("$bin" --config "$work/cloudci.toml" hooks show --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

r1=$(port); a1=$(port); relay "$r1" "$a1"
r2=$(port); a2=$(port); relay "$r2" "$a2"
r3=$(port); a3=$(port); relay "$r3" "$a3"
for p in $r1 $r2 $r3; do up "http://127.0.0.1:$p/"; done
lb=$(port); mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
error_log $work/nginx/logs/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  client_max_body_size 25m;
  upstream relays { server 127.0.0.1:$r1; server 127.0.0.1:$r2; server 127.0.0.1:$r3; keepalive 64; }
  server { listen 127.0.0.1:$lb;
    location / { proxy_pass http://relays; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
up "http://127.0.0.1:$lb/"

psql() { as_pg "$pgbin/psql" -h "$work/pg" -p "$pg" -U cloudci -d postgres -Atc "$1"; }
token=$("$bin" relay token --json --secrets "$work/relay-secrets" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo "${COMMIT:-?}") load: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores)"
# Across instances first, on an empty log (the floods below leave the sequencers a backlog):
# subscribers on instances 2 and 3 (operator token: every event), deliveries into instance 1.
echo "| subscribers (on instances 2, 3) | deliveries into instance 1 | events each | delivery 2xx → subscriber p50 | p99 | max | ingest p99 | complete, in order |"
echo "|---|---|---|---|---|---|---|---|"
for _ in $(seq "$REPEAT"); do
  out=$("$fleet" --pid 0 --api "127.0.0.1:$a2,127.0.0.1:$a3" --token "$token" --hook "127.0.0.1:$r1" \
    --hook-path "/hooks/$PATH_SECRET" --hook-token "$HOOK_TOKEN" --body "$BODY" \
    --subs "$SUBS" --deliveries "$LAT_N" --rate "$LAT_RATE" --senders 4) && ok=yes || ok=NO
  echo "$out" >> "$work/fleet.log"
  read -r ip99 p50 p99 max <<<"$(echo "$out" | sed -n 's/.*ingest_ms p50=[0-9.]* p99=\([0-9.]*\).*latency_ms p50=\([0-9.]*\) p99=\([0-9.]*\) max=\([0-9.]*\).*/\1 \2 \3 \4/p')"
  echo "| $SUBS | $LAT_N at $LAT_RATE/s | $((LAT_N * 6)) | $p50 ms | $p99 ms | $max ms | $ip99 ms | $ok |"
done
# LAT_ONLY=1: the latency runs only (e.g. at another LAT_RATE).
if [ -n "${LAT_ONLY:-}" ]; then echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"; exit 0; fi
one="http://127.0.0.1:$r1/hooks/$PATH_SECRET"
three="http://127.0.0.1:$lb/hooks/$PATH_SECRET"
# Warm-up (page cache, WAL, prepared statements), not measured.
HOOK_TOKEN=$serve_token run_wrk "$serve_url" 32 >/dev/null
run_wrk "$one" 32 >/dev/null
run_wrk "$three" 32 >/dev/null
echo
echo "| receiver | c | deliveries/s | p99 | non-2xx |"
echo "|---|---|---|---|---|"
for c in 8 32; do
  read -r a ap ab <<<"$(HOOK_TOKEN=$serve_token run_wrk "$serve_url" "$c")"
  echo "| cloudci serve (SQLite, full) | $c | $a | $ap | ${ab:-0} |"
  read -r b bp bb <<<"$(run_wrk "$one" "$c")"
  echo "| cloudci relay ×1 (PostgreSQL) | $c | $b | $bp | ${bb:-0} |"
  read -r d dp db <<<"$(run_wrk "$three" "$c")"
  echo "| cloudci relay ×3 behind nginx | $c | $d | $dp | ${db:-0} |"
  python3 -c "a,b,d=$a,$b,$d; print(f'c={$c}: relay x1 / serve = {b/a:.2f}, relay x3 / relay x1 = {d/b:.2f}')"
done
psql_count=$(as_pg "$pgbin/psql" -h "$work/pg" -p "$pg" -U cloudci -d postgres -Atc \
  "SELECT COUNT(*) || ' deliveries stored, ' || COUNT(*) FILTER (WHERE processed) || ' processed, last seq ' || (SELECT seq FROM log_head) FROM deliveries" 2>/dev/null || true)
echo "relay log: ${psql_count:-?}"

# Steady rate: the fleet's own pacing over 32 connections, no subscriber.
serve_hostport=${serve_url#http://}; serve_hostport=${serve_hostport%%/*}
steady() { # label hook-host:port hook-path hook-token -> a table row
  local out p0
  p0=$(psql "SELECT COUNT(*) FROM deliveries WHERE NOT processed")
  out=$("$fleet" --pid 0 --api "127.0.0.1:$a1" --token "$token" --hook "$2" --hook-path "$3" --hook-token "$4" \
    --body "$BODY" --subs 0 --deliveries $((RATE * RATE_SECS)) --rate "$RATE" --senders 32)
  echo "$out" >> "$work/fleet.log"
  read -r sent p50 p99 max <<<"$(echo "$out" | sed -n 's/.*sent_in=\([0-9.]*\)s.*ingest_ms p50=\([0-9.]*\) p99=\([0-9.]*\) max=\([0-9.]*\).*/\1 \2 \3 \4/p')"
  local behind="—"
  if [ "$1" != serve ]; then
    # The sequencers: deliveries turned into events during the run, and what is still pending.
    local p1; p1=$(psql "SELECT COUNT(*) FROM deliveries WHERE NOT processed")
    behind="$(python3 -c "print(f'{($RATE*$RATE_SECS+$p0-$p1)/$sent:.0f}')")/s, $p1 pending"
  fi
  echo "| $1 | $RATE/s × ${RATE_SECS} s | $(python3 -c "print(f'{$RATE*$RATE_SECS/$sent:.0f}')")/s | $p50 ms | $p99 ms | $max ms | $behind |"
}
echo
echo "| receiver | offered | achieved | ingest p50 | p99 | max | relay: sequenced during the run, left pending |"
echo "|---|---|---|---|---|---|---|"
for _ in $(seq "$REPEAT"); do
  steady serve "$serve_hostport" "/${serve_url#http://*/}" "$serve_token"
  steady "relay ×1" "127.0.0.1:$r1" "/hooks/$PATH_SECRET" "$HOOK_TOKEN"
  steady "relay ×3 (nginx)" "127.0.0.1:$lb" "/hooks/$PATH_SECRET" "$HOOK_TOKEN"
done

echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "${KEEP_LOGS:-}" ] && cp "$work/fleet.log" "$work/wrk.log" "$work/relay.err" "$KEEP_LOGS"/ 2>/dev/null || true
