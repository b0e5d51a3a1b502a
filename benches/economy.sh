#!/usr/bin/env bash
# The GitLab-side economy of a build, counted by gitlab-sim per route (its sim-only
# `/-/sim/requests`; GitLab has no such endpoint): requests for one `cloudci build --watch`
# through the daemon with webhooks flowing (log reads apart), and bytes read from GitLab while
# following a job's growing log, on the wire (gzipped as GitLab's nginx sends them, body plus
# the headers the sim sets), divided by the log's final size; for `build --watch` and for
# `cloudci gitlab trace --follow`, at several log sizes.
# Usage: benches/economy.sh [SIZES_KB] [SECONDS]   e.g. benches/economy.sh "256 1024 2048" 10
# Debug build: counts and bytes do not depend on optimisation.
# Everything listens on 127.0.0.1 and stops by itself (each case is one run of tests/economy.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${1:-"256 1024 2048"}
SECS=${2:-10}
cargo test -q --test economy --no-run 2>/dev/null
echo "| log written | over | build --watch: API requests | build --watch: trace reads, bytes read ÷ log | trace --follow: requests, bytes read ÷ log |"
echo "|---|---|---|---|---|"
for kb in $SIZES; do
  out=$(ECONOMY_REPORT=1 ECONOMY_LOG_KB=$kb ECONOMY_SECS=$SECS cargo test -q --test economy -- --nocapture --test-threads 1 2>/dev/null)
  api=$(echo "$out" | awk '/^cloudci build --watch through the daemon:/{f=1;next} /^[^ ]/{f=0} f && !/trace:/{gsub(":","",$0); n+=$(NF-3)} END{print n}')
  watch=$(echo "$out" | awk '/^build --watch:/{print $3" reads, "$NF}')
  follow=$(echo "$out" | awk '/^trace --follow:/{print $3" requests, "$NF}')
  size=$(echo "$out" | awk '/^build --watch:/{print $(NF-3)}')
  echo "| $kb KB ($size bytes) | ${SECS} s | $api | $watch | $follow |"
done
