#!/usr/bin/env bash
# Durable ingest (`durability = "full"`) of `cloudci serve` with signatures required, side by side
# with its anchors in the same run: nginx answering `return 200` and adnanh/webhook (X-Gitlab-Token
# rule, runs /bin/true). GitLab's sample pipeline delivery, signed as GitLab 19 signs, wrk -t1,
# loopback. Then cloudci alone at c = 1, 8, 32, 128, and the group commit's batch sizes.
# `cloudci serve` registers its hook on a gitlab-sim, so GitLab confirms the signing token and
# signatures are required, as in production.
# Usage: benches/ingest.sh [DURATION]   (apt-get install -y wrk webhook nginx-light)
# Every server listens on 127.0.0.1 and is stopped at the end; each wrk run lasts DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
TARGET=${CARGO_TARGET_DIR:-target}
# The ngrok feature only adds a tunnel (unused here: tunnel = "none"); without it the build is shorter.
cargo build --release -q -p cloudci -p gitlab-sim --no-default-features
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export BODY="$PWD/gitlab/tests/fixtures/webhook-pipeline-event.json"
rate() { grep -E "Requests/sec" | awk '{print $2}'; }
run_wrk() { # url conns -> prints "req/s p99 non-2xx"; each run signs its own ids (no duplicates)
  local out runs
  # Counted in a file: run_wrk runs in a subshell (`$(...)`), where a shell variable's increment
  # is lost — which made every run after the first reuse the first run's ids (duplicates, which
  # store nothing and cost no fsync).
  runs=$(($(cat "$work/runs" 2>/dev/null || echo 0) + 1))
  echo "$runs" > "$work/runs"
  out=$(cd benches && SIGNED="$work/signed-$runs.txt" wrk -t1 -c"$2" -d"$DURATION" --latency -s signed.lua "$1")
  echo "$out" >> "$work/wrk.log"
  echo "$(echo "$out" | rate) $(echo "$out" | awk '$1=="99%"{print $2}') $(echo "$out" | awk '/Non-2xx/{print $NF}')"
}

# gitlab-sim with one project, so serve registers a hook and GitLab "confirms" the signing token.
git init -q "$work/repo" && git -C "$work/repo" -c user.email=b@b -c user.name=b commit -q --allow-empty -m init
sim=$(port)
"$TARGET/release/gitlab-sim" --listen "127.0.0.1:$sim" --token simtok --project acme/fw="$work/repo" >/dev/null 2>&1 &
pids+=($!)
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
[targets.host]
[projects.fw]
gitlab = "acme/fw"
targets = ["host"]
TOML
for _ in $(seq 50); do curl -s "http://127.0.0.1:$sim/api/v4/version" >/dev/null && break; sleep 0.1; done
GITLAB_HOST="http://127.0.0.1:$sim" GITLAB_TOKEN=simtok CLOUDCI_LOG="warn,cloudci_webhook::ingest=debug" \
  "$TARGET/release/cloudci" --config "$work/cloudci.toml" serve >/dev/null 2>"$work/serve.err" &
serve=$!; pids+=($serve)
confirmed() { python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("signing_confirmed") else 1)' "$work/state/hook.json" 2>/dev/null; }
for _ in $(seq 100); do confirmed && break; sleep 0.1; done
confirmed || { echo "signing not confirmed"; cat "$work/serve.err"; exit 1; }
shown=$("$TARGET/release/cloudci" --config "$work/cloudci.toml" hooks show --json)
url=$(echo "$shown" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
export HOOK_TOKEN=$(echo "$shown" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
# Distinct signed ids for each wrk run (timestamps must be within GitLab's 5 minutes): a run
# that reused ids would measure cheap duplicates.
secs=${DURATION%s}
python3 - "$work/state/secrets/signing-token" "$BODY" "$work" 12 $((secs * 20000)) <<'PY'
import base64, hashlib, hmac, sys, time
key = base64.b64decode(open(sys.argv[1]).read().strip().removeprefix("whsec_"))
body = open(sys.argv[2], "rb").read()
ts = str(int(time.time()))
for run in range(int(sys.argv[4])):
    with open(f"{sys.argv[3]}/signed-{run}.txt", "w") as out:
        for i in range(int(sys.argv[5])):
            wid = f"bench-{ts}-{run}-{i}"
            sig = base64.b64encode(hmac.new(key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
            out.write(f"{wid} {ts} v1,{sig}\n")
PY

# Anchors.
np=$(port); mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes auto;
error_log $work/nginx/logs/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  client_max_body_size 25m;
  server { listen 127.0.0.1:$np; location / { return 200; } }
}
NGINX
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
wp=$(port)
cat > "$work/hooks.json" <<JSON
[{"id": "gitlab", "execute-command": "/bin/true",
  "trigger-rule": {"match": {"type": "value", "value": "$HOOK_TOKEN", "parameter": {"source": "header", "name": "X-Gitlab-Token"}}}}]
JSON
webhook -hooks "$work/hooks.json" -ip 127.0.0.1 -port "$wp" >/dev/null 2>&1 &
pids+=($!)
sleep 1

# A short warm-up of each server first (page cache, WAL file, connection pools), not measured.
for u in "http://127.0.0.1:$np/" "http://127.0.0.1:$wp/hooks/gitlab" "$url"; do
  (cd benches && SIGNED="$work/signed-0.txt" wrk -t1 -c32 -d3s -s signed.lua "$u" >/dev/null)
done
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo "${COMMIT:-?}") load: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores)"
echo "| server | c | req/s | p99 | non-2xx |"
echo "|---|---|---|---|---|"
read -r n_rate n_p99 n_bad <<<"$(run_wrk "http://127.0.0.1:$np/" 32)"
echo "| nginx return 200 | 32 | $n_rate | $n_p99 | ${n_bad:-0} |"
read -r w_rate w_p99 w_bad <<<"$(run_wrk "http://127.0.0.1:$wp/hooks/gitlab" 32)"
echo "| adnanh/webhook | 32 | $w_rate | $w_p99 | ${w_bad:-0} |"
read -r c_rate c_p99 c_bad <<<"$(run_wrk "$url" 32)"
echo "| cloudci serve, full | 32 | $c_rate | $c_p99 | ${c_bad:-0} |"
python3 -c "c,w,n=$c_rate,$w_rate,$n_rate; print(f'ratios: cloudci/adnanh = {c/w:.2f}x (target >= 4), cloudci/nginx = {c/n:.2f} (target >= 0.5)')"
for c in 1 8 32 128; do
  read -r r p b <<<"$(run_wrk "$url" "$c")"
  echo "| cloudci serve, full | $c | $r | $p | ${b:-0} |"
done
kill "$serve"; wait "$serve" 2>/dev/null || true
echo "group commit, per 10 s window (deliveries, commits, mean and largest batch):"
grep "group commit" "$work/serve.err" | sed -E 's/^.*(batches=[0-9]+) (deliveries=[0-9]+) (mean_batch=[0-9.]+) (max_batch=[0-9]+).*$/  \1 \2 \3 \4/' || true
sqlite3 "$work/state/events.db" "SELECT COUNT(*) || ' deliveries stored, ' || SUM(processed) || ' processed' FROM deliveries" 2>/dev/null || true
# Every measured request was a new delivery when this is the stored count less the warm-up's
# (the first two runs in wrk.log are the anchors').
echo "cloudci requests in the measured runs: $(grep "requests in" "$work/wrk.log" | tail -n +3 | awk '{s+=$1} END {print s}')"
