#!/usr/bin/env bash
# Instructions per request, counted by callgrind: unlike CPU time on a shared machine, the
# count repeats from run to run, so it shows small changes. One relay worker under
# valgrind, the mock beside it, wrk at concurrency 4 after a warm-up; the count covers
# everything the relay process runs (workers, SQLite's thread, the usage writer, logging).
#   bench/callgrind.sh            # non-stream, 8 s
#   BENCH_STREAM=1 bench/callgrind.sh 10
#   BENCH_SCRIPT=bench/claude-code.lua bench/callgrind.sh   # Claude Code's 21 request headers
#   BENCH_BIN=/tmp/other-build bench/callgrind.sh           # another build of the relay
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SECONDS_LOADED=${1:-8}
STREAM=${BENCH_STREAM:-0}
MOCK=19190 RELAY=19185 ADMIN_TOKEN=bench-admin
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }
BIN=$(relay_binary)
WORK=${BENCH_WORK:-$(mktemp -d)}
trap stop_children EXIT

"$BIN" mock-upstream --listen 127.0.0.1:$MOCK --no-record >"$WORK/mock.log" 2>&1 & PIDS+=($!)
RELAY_WORKERS=1 RELAY_LISTEN=127.0.0.1:$RELAY DATABASE_URL="sqlite://$WORK/relay.db" \
  RELAY_ADMIN_TOKEN=$ADMIN_TOKEN RELAY_LOG_LANG=en RELAY_LOG_FORMAT=text \
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" "$BIN" \
  >"$WORK/relay.log" 2>"$WORK/valgrind.log" & VALGRIND=$!; PIDS+=($VALGRIND)
for _ in $(seq 1 200); do curl -sf -o /dev/null "http://127.0.0.1:$RELAY/healthz" && break; sleep 0.2; done

KEY=$(group fast $MOCK sk-1 sk-2 sk-3 sk-4)

load() { BENCH_KEY=$KEY BENCH_STREAM=$STREAM wrk -t1 -c4 -d"$1s" -s "${BENCH_SCRIPT:-bench/post.lua}" "http://127.0.0.1:$RELAY/v1/messages"; }
load 3 >/dev/null
callgrind_control -z "$VALGRIND" >/dev/null 2>&1
REQUESTS=$(load "$SECONDS_LOADED" | sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p')
callgrind_control -d "$VALGRIND" >/dev/null 2>&1
DUMP="$WORK/callgrind.out.1"
for _ in $(seq 1 50); do [ -s "$DUMP" ] && break; sleep 0.2; done
TOTAL=$(callgrind_annotate "$DUMP" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "requests=$REQUESTS instructions=$TOTAL per_request=$((TOTAL / REQUESTS))"
echo "largest inclusive costs per request (relay code and what it calls):"
callgrind_annotate --inclusive=yes --auto=no "$DUMP" \
  | awk -v n="$REQUESTS" '/^ *[0-9,]+ \(/ {c=$1; gsub(",", "", c); sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, ""); printf "%8d %s\n", c / n, $0}' \
  | sed -E 's#/rustc/[0-9a-f]+/library/##; s#[^ ]*/registry/src/[^/]+/##; s#/work/[^ ]*/crates/#crates/#; s# \[[^]]*\]$##' \
  | grep -E 'relay_|claude_code_relay|sqlx_sqlite|sqlite3_step|memcpy|mi_malloc' | awk '!seen[$0]++' | head -40
