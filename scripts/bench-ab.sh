#!/usr/bin/env bash
# Side-by-side throughput of two `leash` builds (A and B), with direct calls and nginx as
# references, measured by wrk (Debian's) in alternating rounds in one run — this machine
# is shared and noisy, so compare the ratios of one run, never req/s across runs.
#
#   scripts/bench-ab.sh OLD_LEASH NEW_LEASH        (release binaries)
#   BENCH_SECONDS=5 BENCH_ROUNDS=3 BENCH_CONNECTIONS=64 (defaults)
#
# The upstream is nginx answering a canned JSON body; nginx also serves as the plain
# reverse-proxy reference. Each broker gets its own data folder, a one-tool policy and
# LEASH_RATE_LIMIT=0 (the per-agent limit would turn a benchmark into a 429 count).
# Every non-2xx answer is counted and fails the run: a 429 is not a success.
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2")
SECONDS_PER_ROUND=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=$(( CONNECTIONS < 2 ? 1 : 2 ))
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }
command -v nginx >/dev/null || { echo "nginx is needed: apt-get install nginx-light" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NGX=$(free_port); PA=$(free_port); PB=$(free_port)

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  upstream echo { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '{"ok":true,"items":[1,2,3]}'; } }
  server { listen 127.0.0.1:$NGX;
    location / { proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' & PIDS+=($!)

start_leash() { # binary port name
  local dir="$WORK/$3"; mkdir -p "$dir/policies" "$dir/data"
  cat > "$dir/policies/bench.toml" <<TOML
[tools."bench.echo"]
description = "canned JSON"
upstream = "http://127.0.0.1:$UP/echo"
timeout_ms = 5000
input_schema = { type = "object", properties = { q = { type = "string" } } }
upstream_headers = { Authorization = "Bearer bench-upstream-key" }

[agents.bench]
tools = ["bench.*"]
max_ttl_seconds = 3600
TOML
  LEASH_ADMIN_TOKEN=bench-admin-token-0123456789 LEASH_RATE_LIMIT=0 LEASH_LOG=warn \
    "$1" serve --listen "127.0.0.1:$2" --policies "$dir/policies" --data "$dir/data" \
    >"$dir/log" 2>&1 & PIDS+=($!)
  for _ in $(seq 100); do curl -sf "127.0.0.1:$2/healthz" >/dev/null && break; sleep 0.1; done
  local agent token
  agent=$(curl -sf -X POST "127.0.0.1:$2/v1/agents/bench/credentials" -H "Authorization: Bearer bench-admin-token-0123456789" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["credential"])')
  token=$(curl -sf -X POST "127.0.0.1:$2/v1/tasks" -H "Authorization: Bearer $agent" -H 'Content-Type: application/json' \
    -d '{"purpose":"benchmark","tools":["bench.echo"],"ttl_seconds":3600}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  cat > "$dir/call.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"q":"bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
  curl -sf -X POST "127.0.0.1:$2/v1/tools/bench.echo/call" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{"q":"x"}' >/dev/null
}
start_leash "$A" "$PA" a
start_leash "$B" "$PB" b
cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"q":"bench"}'
wrk.headers["Content-Type"] = "application/json"
LUA

declare -A URL=([direct]="http://127.0.0.1:$UP/echo" [nginx]="http://127.0.0.1:$NGX/echo"
  [A]="http://127.0.0.1:$PA/v1/tools/bench.echo/call" [B]="http://127.0.0.1:$PB/v1/tools/bench.echo/call")
declare -A SCRIPT=([direct]="$WORK/post.lua" [nginx]="$WORK/post.lua" [A]="$WORK/a/call.lua" [B]="$WORK/b/call.lua")
declare -A RPS P50 P99 BAD
to_us() { python3 -c "
import sys; v=sys.argv[1]
for unit,f in (('us',1),('ms',1000),('s',1e6)):
    if v.endswith(unit) and not (unit=='s' and v.endswith(('us','ms'))): print(round(float(v[:-len(unit)])*f)); break" "$1"; }
for round in $(seq "$ROUNDS"); do
  for target in direct nginx A B; do
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_ROUND}s" --latency -s "${SCRIPT[$target]}" "${URL[$target]}")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
    bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); bad=${bad:-0}
    errs=$(awk '/Socket errors/ {print}' <<<"$out")
    RPS[$target]="${RPS[$target]:-} $rps"; P50[$target]="${P50[$target]:-} $p50"; P99[$target]="${P99[$target]:-} $p99"
    BAD[$target]=$(( ${BAD[$target]:-0} + bad ))
    echo "round $round $target: $rps req/s, p50 ${p50} µs, p99 ${p99} µs, non-2xx $bad ${errs}" >&2
  done
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| target | req/s (median of $ROUNDS) | p50 µs | p99 µs | non-2xx |"
echo "|---|---|---|---|---|"
for target in direct nginx A B; do
  echo "| $target | $(median "${RPS[$target]}") | $(median "${P50[$target]}") | $(median "${P99[$target]}") | ${BAD[$target]} |"
done
python3 - "$(median "${RPS[A]}")" "$(median "${RPS[B]}")" "$(median "${RPS[nginx]}")" <<'PY'
import sys
a, b, n = map(float, sys.argv[1:])
print(f"\nB/A throughput: {b/a:.2f}; A/nginx: {a/n:.2f}; B/nginx: {b/n:.2f}")
PY
total_bad=$(( ${BAD[direct]} + ${BAD[nginx]} + ${BAD[A]} + ${BAD[B]} ))
if [ "$total_bad" -ne 0 ]; then echo "FAIL: $total_bad non-2xx answers" >&2; exit 1; fi
