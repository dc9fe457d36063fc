#!/usr/bin/env bash
# The end-to-end benchmark of a checked call, measured by load generators nobody here
# wrote, side by side in one run: this machine is shared and noisy, so compare the ratios
# of one run, never req/s across runs.
#
#   scripts/bench.sh                    build this checkout (release) and measure it
#   scripts/bench.sh OLD_LEASH          also measure another release binary ("before")
#   LEASH_BIN=path scripts/bench.sh     measure that binary instead of building
#   BENCH_SECONDS=5 BENCH_ROUNDS=3 BENCH_RATE=1000 BENCH_SECTIONS="saturation one fixed mcp mints"
#
# Targets, in alternating rounds: `direct` (the upstream itself: nginx answering a canned
# JSON body), `nginx` (nginx as a plain reverse proxy to it), `leash` (full checks: token,
# revocation, task state, Datalog authorizer, JSON Schema, budgets, audit) and, when
# given, `before`. Sections:
#   saturation  wrk, 64 connections: throughput and latency
#   one         wrk, one connection: the latency a checked call adds
#   fixed       oha at a fixed BENCH_RATE req/s: the tail (p99) at a sane load
#   mcp         MCP `tools/call` straight to an official-MCP-Python-SDK server vs through
#               Leash's `/mcp`, one connection (wrk)
#   mints       task mints per second, 64 concurrent callers (wrk)
# Every broker runs with LEASH_RATE_LIMIT=0 (the per-agent limit would turn a benchmark
# into a count of 429s), its own data folder (SQLite, synchronous=FULL) and a one-page
# policy. Every non-2xx answer and every socket error is counted and fails the run.
# For the brokers, the tables also give the CPU time the broker process spent per request
# (user + system, all its threads, from /proc): on a shared, noisy machine it varies far
# less from run to run than req/s does.
# Needs: wrk and nginx (apt-get install wrk nginx-light), oha (cargo install oha),
# target/interop-venv with the MCP Python SDK (scripts/test.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROUND=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
RATE=${BENCH_RATE:-1000}
SECTIONS=${BENCH_SECTIONS:-saturation one fixed mcp mints}
ADMIN=bench-admin-token-0123456789
for tool in wrk nginx oha; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (see the header of $0)" >&2; exit 2; }
done
VENV_PY=target/interop-venv/bin/python
if [[ " $SECTIONS " == *" mcp "* ]] && ! "$VENV_PY" -c "import mcp" 2>/dev/null; then
  echo "the mcp section needs $VENV_PY with mcp==2.3.0 (scripts/test.sh makes it)" >&2; exit 2
fi
if [ -z "${LEASH_BIN:-}" ]; then
  cargo build --release --quiet -p leash-broker --bin leash
  LEASH_BIN=target/release/leash
fi
LEASH_BIN=$(realpath "$LEASH_BIN")
TARGETS=(direct nginx leash)
BEFORE_BIN=""
if [ $# -ge 1 ]; then BEFORE_BIN=$(realpath "$1"); TARGETS+=(before); fi
BROKERS=(leash); [ -n "$BEFORE_BIN" ] && BROKERS+=(before)

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
wait_for() { for _ in $(seq 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "$1 never answered" >&2; return 1; }

UP=$(free_port); NGX=$(free_port); MCP=$(free_port)
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
  keepalive_requests 10000000;
  upstream echo { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '{"ok":true,"items":[1,2,3]}'; } }
  server { listen 127.0.0.1:$NGX;
    location / { proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' & PIDS+=($!)
if [[ " $SECTIONS " == *" mcp "* ]]; then
  "$VENV_PY" tests/interop/mcp_upstream.py "$MCP" >"$WORK/mcp.log" 2>&1 & PIDS+=($!)
  wait_for "127.0.0.1:$MCP/ready" || { cat "$WORK/mcp.log" >&2; exit 1; }
fi

declare -A PORT TOKEN AGENT
start_broker() { # name binary
  local name=$1 dir="$WORK/$1" port; port=$(free_port); PORT[$name]=$port
  mkdir -p "$dir/policies" "$dir/data"
  local granted='"bench.*"'; [[ " $SECTIONS " == *" mcp "* ]] && granted='"bench.*", "mcpb.*"'
  cat > "$dir/policies/bench.toml" <<TOML
[tools."bench.echo"]
description = "canned JSON"
upstream = "http://127.0.0.1:$UP/echo"
timeout_ms = 5000
input_schema = { type = "object", properties = { q = { type = "string" } } }
upstream_headers = { Authorization = "Bearer bench-upstream-key" }

[agents.bench]
tools = [$granted]
max_ttl_seconds = 3600
TOML
  if [[ " $SECTIONS " == *" mcp "* ]]; then
    printf '\n[mcp_servers.mcpb]\nurl = "http://127.0.0.1:%s/mcp"\ntimeout_ms = 5000\n' "$MCP" >> "$dir/policies/bench.toml"
  fi
  LEASH_ADMIN_TOKEN=$ADMIN LEASH_RATE_LIMIT=0 LEASH_LOG=warn \
    "$2" serve --listen "127.0.0.1:$port" --policies "$dir/policies" --data "$dir/data" \
    >"$dir/log" 2>&1 & PIDS+=($!)
  wait_for "127.0.0.1:$port/healthz" || { cat "$dir/log" >&2; exit 1; }
  AGENT[$name]=$(curl -sf -X POST "127.0.0.1:$port/v1/agents/bench/credentials" -H "Authorization: Bearer $ADMIN" | json_field credential)
  local tools='["bench.echo"]'
  if [[ " $SECTIONS " == *" mcp "* ]]; then
    tools='["bench.echo","mcpb.add"]'
    for _ in $(seq 100); do curl -sf "127.0.0.1:$port/v1/tools" -H "Authorization: Bearer $ADMIN" | grep -q mcpb.add && break; sleep 0.1; done
  fi
  TOKEN[$name]=$(curl -sf -X POST "127.0.0.1:$port/v1/tasks" -H "Authorization: Bearer ${AGENT[$name]}" \
    -H 'Content-Type: application/json' -d "{\"purpose\":\"benchmark\",\"tools\":$tools,\"ttl_seconds\":3600}" | json_field token)
  curl -sf -X POST "127.0.0.1:$port/v1/tools/bench.echo/call" -H "Authorization: Bearer ${TOKEN[$name]}" \
    -H 'Content-Type: application/json' -d '{"q":"x"}' >/dev/null
}
start_broker leash "$LEASH_BIN"
[ -n "$BEFORE_BIN" ] && start_broker before "$BEFORE_BIN"

# One wrk script per target and section: method, body, headers.
lua() { # file body header...
  local file=$1 body=$2; shift 2
  { echo 'wrk.method = "POST"'; printf "wrk.body = '%s'\n" "$body"
    echo 'wrk.headers["Content-Type"] = "application/json"'
    for h in "$@"; do printf 'wrk.headers["%s"] = "%s"\n' "${h%%: *}" "${h#*: }"; done; } > "$file"
}
declare -A URL SCRIPT HEADERS
CALL_BODY='{"q":"bench"}'
URL[direct]="http://127.0.0.1:$UP/echo"; URL[nginx]="http://127.0.0.1:$NGX/echo"
lua "$WORK/direct.lua" "$CALL_BODY"; SCRIPT[direct]="$WORK/direct.lua"; SCRIPT[nginx]="$WORK/direct.lua"
for b in "${BROKERS[@]}"; do
  URL[$b]="http://127.0.0.1:${PORT[$b]}/v1/tools/bench.echo/call"
  lua "$WORK/$b.lua" "$CALL_BODY" "Authorization: Bearer ${TOKEN[$b]}"; SCRIPT[$b]="$WORK/$b.lua"
  HEADERS[$b]="Authorization: Bearer ${TOKEN[$b]}"
done

to_us() { python3 -c "
import sys; v=sys.argv[1]
for unit,f in (('us',1),('ms',1000),('s',1e6)):
    if v.endswith(unit) and not (unit=='s' and v.endswith(('us','ms'))): print(round(float(v[:-len(unit)])*f)); break" "$1"; }
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
TOTAL_BAD=0
declare -A RPS P50 P99 BAD CPU BROKER_PID
for b in "${BROKERS[@]}"; do
  BROKER_PID[$b]=$(pgrep -f -- "--data $WORK/$b/data" | head -1)
  BROKER_PID[mint-$b]=${BROKER_PID[$b]}; BROKER_PID[mcp-$b]=${BROKER_PID[$b]}
done
TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of every thread
reset() { RPS=(); P50=(); P99=(); BAD=(); CPU=(); }
record() { # target rps p50 p99 bad
  RPS[$1]="${RPS[$1]:-} $2"; P50[$1]="${P50[$1]:-} $3"; P99[$1]="${P99[$1]:-} $4"
  BAD[$1]=$(( ${BAD[$1]:-0} + $5 )); TOTAL_BAD=$(( TOTAL_BAD + $5 ))
}
run_wrk() { # target connections url script
  local threads=$(( $2 < 2 ? 1 : 2 )) out rps p50 p99 bad errs pid=${BROKER_PID[$1]:-} t0 cpu=""
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  out=$(wrk -t"$threads" -c"$2" -d"${SECONDS_PER_ROUND}s" --latency -s "$4" "$3")
  if [ -n "$pid" ]; then
    cpu=$(python3 -c "import sys; t, n, hz = map(float, sys.argv[1:]); print(round(t * 1e6 / hz / n, 1))" \
      "$(( $(cpu_ticks "$pid") - t0 ))" "$(awk '/requests in/ {print $1}' <<<"$out")" "$TICKS")
    CPU[$1]="${CPU[$1]:-} $cpu"
  fi
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); bad=${bad:-0}
  errs=$(awk '/Socket errors/ {n=0; for (i=3;i<=NF;i+=2) n+=$(i+1)+0; print n}' <<<"$out"); errs=${errs:-0}
  record "$1" "$rps" "$p50" "$p99" $(( bad + errs ))
  echo "  $1: $rps req/s, p50 $p50 µs, p99 $p99 µs, non-2xx $bad, socket errors $errs${cpu:+, broker CPU $cpu µs/req}" >&2
}
run_oha() { # target url header...
  local target=$1 url=$2; shift 2
  local args=(-z "${SECONDS_PER_ROUND}s" -q "$RATE" -c 16 --latency-correction --wait-ongoing-requests-after-deadline --no-tui --output-format json -m POST -d "$CALL_BODY" -H 'Content-Type: application/json')
  for h in "$@"; do args+=(-H "$h"); done
  local parsed; parsed=$(oha "${args[@]}" "$url" | python3 -c '
import json, sys
r = json.load(sys.stdin)
codes = r.get("statusCodeDistribution", {})
ok = sum(n for c, n in codes.items() if 200 <= int(c) < 300)
bad = sum(codes.values()) - ok + sum(r.get("errorDistribution", {}).values())
p = r["latencyPercentiles"]
if bad:
    print("   not 2xx:", {c: n for c, n in codes.items() if not 200 <= int(c) < 300}, r.get("errorDistribution"), file=sys.stderr)
print(round(r["summary"]["requestsPerSec"], 1), round(p["p50"] * 1e6), round(p["p99"] * 1e6), bad)')
  # shellcheck disable=SC2086
  record "$target" $parsed
  echo "  $target: $parsed (req/s, p50 µs, p99 µs, bad)" >&2
}
table() { # title targets...
  echo; echo "$1"; shift; echo
  echo "| target | req/s (median of $ROUNDS) | p50 µs | p99 µs | non-2xx | broker CPU µs/req |"
  echo "|---|---|---|---|---|---|"
  for t in "$@"; do
    local cpu="—"; [ -n "${CPU[$t]:-}" ] && cpu=$(median "${CPU[$t]}")
    echo "| $t | $(median "${RPS[$t]}") | $(median "${P50[$t]}") | $(median "${P99[$t]}") | ${BAD[$t]:-0} | $cpu |"
  done
}
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }

echo "# scripts/bench.sh — $(date -u +%F), $(nproc) cores, ${ROUNDS} rounds of ${SECONDS_PER_ROUND} s, leash = $(basename "$LEASH_BIN")${BEFORE_BIN:+, before = $BEFORE_BIN}"
for section in $SECTIONS; do
  reset
  case $section in
    saturation|one)
      conns=64; [ "$section" = one ] && conns=1
      for r in $(seq "$ROUNDS"); do
        echo "$section round $r" >&2
        for t in "${TARGETS[@]}"; do run_wrk "$t" "$conns" "${URL[$t]}" "${SCRIPT[$t]}"; done
      done
      table "## wrk, $conns connection(s)" "${TARGETS[@]}"
      n50=$(median "${P50[nginx]}"); d50=$(median "${P50[direct]}"); l50=$(median "${P50[leash]}")
      echo
      echo "- leash/nginx throughput: $(ratio "$(median "${RPS[leash]}")" "$(median "${RPS[nginx]}")")"
      echo "- p50 added over direct: nginx +$(( n50 - d50 )) µs, leash +$(( l50 - d50 )) µs"
      if [ -n "$BEFORE_BIN" ]; then
        echo "- leash/before throughput: $(ratio "$(median "${RPS[leash]}")" "$(median "${RPS[before]}")")"
      fi ;;
    fixed)
      for r in $(seq "$ROUNDS"); do
        echo "fixed round $r" >&2
        for t in "${TARGETS[@]}"; do
          if [ "$t" = direct ] || [ "$t" = nginx ]; then run_oha "$t" "${URL[$t]}"
          else run_oha "$t" "${URL[$t]}" "${HEADERS[$t]}"; fi
        done
      done
      table "## oha, fixed rate $RATE req/s (16 connections)" "${TARGETS[@]}"
      echo
      echo "- p99 leash − nginx: $(( $(median "${P99[leash]}") - $(median "${P99[nginx]}") )) µs" ;;
    mcp)
      # What a current MCP client sends (protocol 2026-07-28, stateless: no initialize),
      # as Leash's own MCP client sends it upstream; an older client's request takes the
      # Python SDK's slower compatibility path and would flatter Leash.
      meta='"_meta":{"io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"0.1.0"},"io.modelcontextprotocol/protocolVersion":"2026-07-28"}'
      body_direct="{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{$meta,\"name\":\"add\",\"arguments\":{\"a\":1,\"b\":2}}}"
      body_leash="{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{$meta,\"name\":\"mcpb.add\",\"arguments\":{\"a\":1,\"b\":2}}}"
      accept="Accept: application/json, text/event-stream"
      lua "$WORK/mcp-direct.lua" "$body_direct" "$accept" "mcp-protocol-version: 2026-07-28" "mcp-method: tools/call" "mcp-name: add"
      mcp_targets=(mcp-direct)
      for b in "${BROKERS[@]}"; do
        lua "$WORK/mcp-$b.lua" "$body_leash" "$accept" "Authorization: Bearer ${TOKEN[$b]}" \
          "mcp-protocol-version: 2026-07-28" "mcp-method: tools/call" "mcp-name: mcpb.add"
        answer=$(curl -s -X POST "127.0.0.1:${PORT[$b]}/mcp" -H 'Content-Type: application/json' -H "$accept" \
          -H "Authorization: Bearer ${TOKEN[$b]}" -H "mcp-protocol-version: 2026-07-28" -H "mcp-method: tools/call" \
          -H "mcp-name: mcpb.add" -d "$body_leash")
        grep -q '"isError":false' <<<"$answer" || { echo "MCP call through $b failed: $answer" >&2; exit 1; }
        mcp_targets+=("mcp-$b")
      done
      for r in $(seq "$ROUNDS"); do
        echo "mcp round $r" >&2
        run_wrk mcp-direct 1 "http://127.0.0.1:$MCP/mcp" "$WORK/mcp-direct.lua"
        for b in "${BROKERS[@]}"; do run_wrk "mcp-$b" 1 "http://127.0.0.1:${PORT[$b]}/mcp" "$WORK/mcp-$b.lua"; done
      done
      table "## MCP tools/call, one connection (wrk; upstream: the official MCP Python SDK)" "${mcp_targets[@]}"
      echo
      echo "- p50 added by leash: +$(( $(median "${P50[mcp-leash]}") - $(median "${P50[mcp-direct]}") )) µs" ;;
    mints)
      for b in "${BROKERS[@]}"; do
        lua "$WORK/mint-$b.lua" '{"purpose":"bench","tools":["bench.echo"],"ttl_seconds":600}' "Authorization: Bearer ${AGENT[$b]}"
      done
      for r in $(seq "$ROUNDS"); do
        echo "mints round $r" >&2
        for b in "${BROKERS[@]}"; do run_wrk "mint-$b" 64 "http://127.0.0.1:${PORT[$b]}/v1/tasks" "$WORK/mint-$b.lua"; done
      done
      mint_targets=(); for b in "${BROKERS[@]}"; do mint_targets+=("mint-$b"); done
      table "## task mints, 64 connections (wrk, POST /v1/tasks)" "${mint_targets[@]}" ;;
    *) echo "unknown section $section" >&2; exit 2 ;;
  esac
done
for b in "${BROKERS[@]}"; do
  pid=$(pgrep -f -- "--data $WORK/$b/data" | head -1 || true)
  [ -n "$pid" ] && echo "- $b peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$pid/status")"
done
if [ "$TOTAL_BAD" -ne 0 ]; then echo "FAIL: $TOTAL_BAD non-2xx answers or socket errors" >&2; exit 1; fi
