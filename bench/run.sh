#!/usr/bin/env bash
# The load benchmark: the mock upstream direct, through nginx, and through the relay, side by
# side in one run. Usage: bench/run.sh   (BENCH_SECONDS=10 per measurement by default;
# BENCH_SOAK_SECONDS=600 adds the memory soak; BENCH_BIN=path measures another build of the
# relay, such as bench/pgo-build.sh's, against the same mock). Needs wrk (apt-get install
# wrk); nginx is measured when it is installed. Prints a markdown table; see BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

DUR=${BENCH_SECONDS:-10}
SOAK=${BENCH_SOAK_SECONDS:-0}
MOCK=19090 SLOW=19091 LONG=19092 NGINX=19081 NGINX_SLOW=19082 RELAY=19080
ADMIN_TOKEN=bench-admin

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p claude-code-relay -p relay-bench
BIN=$PWD/target/release/claude-code-relay
PROBE=$PWD/target/release/relay-bench
WORK=$(mktemp -d)
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

"$BIN" mock-upstream --listen 127.0.0.1:$MOCK --no-record >"$WORK/mock.log" 2>&1 & PIDS+=($!); MOCK_PID=$!
"$BIN" mock-upstream --listen 127.0.0.1:$SLOW --chunk-delay 50ms --no-record >"$WORK/slow.log" 2>&1 & PIDS+=($!)
"$BIN" mock-upstream --listen 127.0.0.1:$LONG --chunk-delay 50ms --text-chunks 100 --no-record >"$WORK/long.log" 2>&1 & PIDS+=($!)
RELAY_LISTEN=127.0.0.1:$RELAY DATABASE_URL="sqlite://$WORK/relay.db" RELAY_ADMIN_TOKEN=$ADMIN_TOKEN \
  RELAY_LOG_LANG=en RELAY_LOG_FORMAT=text "${BENCH_BIN:-$BIN}" >"$WORK/relay.log" 2>&1 & PIDS+=($!); RELAY_PID=$!

HAVE_NGINX=0
if command -v nginx >/dev/null; then
  sed -e "s#__WORK__#$WORK#g" -e "s#__MOCK_PORT__#$MOCK#" -e "s#__SLOW_PORT__#$SLOW#" \
      -e "s#__NGINX_PORT__#$NGINX#" -e "s#__NGINX_SLOW_PORT__#$NGINX_SLOW#" bench/nginx.conf >"$WORK/nginx.conf"
  # In the foreground of its own (`daemon off`), as a child of this script like the relay and
  # the mock: a daemon would start a session of its own, and with the kernel's autogroup
  # scheduling (on by default) the CPU is then shared between sessions before threads, which
  # caps nginx at a half of the machine while wrk and the mock share the other half.
  nginx -c "$WORK/nginx.conf" -p "$WORK" & PIDS+=($!)
  HAVE_NGINX=1
fi
for port in $MOCK $SLOW $LONG $RELAY; do wait_port $port; done
# Every process measured shares this script's session, hence one scheduling autogroup.
[ $HAVE_NGINX = 1 ] && wait_port $NGINX

FAST_KEY=$(group fast $MOCK sk-a sk-b sk-c sk-d)
SLOW_KEY=$(group slow $SLOW sk-a sk-b sk-c sk-d)
LONG_KEY=$(group long $LONG sk-a sk-b)
FAILOVER_KEY=$(group failover $MOCK sk-mock-429 sk-ok)
FAILOVER_ACCOUNT=$(curl -sf "http://127.0.0.1:$RELAY/api/v1/admin/accounts" -H "Authorization: Bearer $ADMIN_TOKEN" \
  | python3 -c "import json,sys; print([a['id'] for a in json.load(sys.stdin)['items'] if a['name']=='failover-1'][0])")

TICKS=$(getconf CLK_TCK)
cpu_ticks() {  # sum of utime+stime of the given pids and their threads
  local total=0
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    local fields; fields=$(sed 's/^.*) //' "/proc/$pid/stat")
    set -- $fields
    total=$((total + ${12} + ${13}))
  done
  echo $total
}
nginx_pids() { [ $HAVE_NGINX = 1 ] && { cat "$WORK/nginx.pid"; pgrep -P "$(cat "$WORK/nginx.pid")"; } || true; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# measure LABEL TARGET URL KEY STREAM CONCURRENCY PIDS... (MEASURE_SECONDS and MEASURE_OUT
# override the duration and the file the line is added to)
measure() {
  local label=$1 target=$2 url=$3 key=$4 stream=$5 conc=$6; shift 6
  local threads=2; [ "$conc" = 1 ] && threads=1
  local before; before=$(cpu_ticks "$@")
  local out; out=$(BENCH_KEY=$key BENCH_STREAM=$stream wrk -t$threads -c"$conc" -d"${MEASURE_SECONDS:-$DUR}s" -s bench/post.lua "$url/v1/messages")
  local after; after=$(cpu_ticks "$@")
  local line; line=$(echo "$out" | grep '^RESULT')
  local requests duration errors p50 p99
  requests=$(echo "$line" | sed 's/.*requests=\([0-9]*\).*/\1/')
  duration=$(echo "$line" | sed 's/.*duration_us=\([0-9]*\).*/\1/')
  errors=$(echo "$line" | sed 's/.*errors=\([0-9]*\).*/\1/')
  p50=$(echo "$line" | sed 's/.*p50_us=\([0-9]*\).*/\1/')
  p99=$(echo "$line" | sed 's/.*p99_us=\([0-9]*\).*/\1/')
  local rps; rps=$(python3 -c "print(round($requests / ($duration / 1e6)))")
  local cpu="-"
  [ $# -gt 0 ] && cpu=$(python3 -c "print(round(($after - $before) / $TICKS * 1e6 / max($requests, 1), 1))")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$target" "$rps" "$(python3 -c "print($p50/1000)")" \
    "$(python3 -c "print($p99/1000)")" "$cpu" "$errors" "$requests" | tee -a "${MEASURE_OUT:-$RESULTS}"
}

# A warm-up for each target (connections, caches, the relay's first SQLite pages), not counted.
for url in "http://127.0.0.1:$MOCK" "http://127.0.0.1:$RELAY"; do
  BENCH_KEY=$FAST_KEY BENCH_STREAM=0 wrk -t2 -c64 -d2s -s bench/post.lua "$url/v1/messages" >/dev/null
done
[ $HAVE_NGINX = 1 ] && BENCH_STREAM=0 wrk -t2 -c64 -d2s -s bench/post.lua "http://127.0.0.1:$NGINX/v1/messages" >/dev/null

echo "== throughput and latency (wrk, ${DUR}s each)"
for shape in "non-stream c=1:0:1" "non-stream c=64:0:64" "stream c=1:1:1" "stream c=64:1:64"; do
  IFS=: read -r label stream conc <<<"$shape"
  measure "$label" direct "http://127.0.0.1:$MOCK" x "$stream" "$conc"
  [ $HAVE_NGINX = 1 ] && measure "$label" nginx "http://127.0.0.1:$NGINX" x "$stream" "$conc" $(nginx_pids)
  measure "$label" relay "http://127.0.0.1:$RELAY" "$FAST_KEY" "$stream" "$conc" $RELAY_PID
done
for shape in "stream 50ms/chunk c=1:1:1" "stream 50ms/chunk c=64:1:64"; do
  IFS=: read -r label stream conc <<<"$shape"
  measure "$label" direct "http://127.0.0.1:$SLOW" x "$stream" "$conc"
  [ $HAVE_NGINX = 1 ] && measure "$label" nginx "http://127.0.0.1:$NGINX_SLOW" x "$stream" "$conc" $(nginx_pids)
  measure "$label" relay "http://127.0.0.1:$RELAY" "$SLOW_KEY" "$stream" "$conc" $RELAY_PID
done
echo "relay peak RSS after the load: $(( $(hwm_kb $RELAY_PID) / 1024 )) MiB"

# One 10-s measurement per target at c=1 puts each p99 at the mercy of whatever else the
# machine did in those seconds. Short rounds alternating the targets see the same moments:
# the added latency is taken per round, then its median over the rounds.
ROUNDS=${BENCH_LATENCY_ROUNDS:-5} ROUND_SECONDS=${BENCH_ROUND_SECONDS:-4}
echo "== added latency at concurrency 1, non-stream: $ROUNDS rounds of ${ROUND_SECONDS}s per target, alternated"
LATENCY="$WORK/latency.tsv"
: >"$LATENCY"
c1() {  # target url key -> appends "round target p50_us p99_us"
  local line
  line=$(BENCH_KEY=$3 BENCH_STREAM=0 wrk -t1 -c1 -d"${ROUND_SECONDS}s" -s bench/post.lua "$2/v1/messages" | grep '^RESULT')
  printf '%s\t%s\t%s\t%s\n' "$round" "$1" "$(echo "$line" | sed 's/.*p50_us=\([0-9]*\).*/\1/')" \
    "$(echo "$line" | sed 's/.*p99_us=\([0-9]*\).*/\1/')" >>"$LATENCY"
}
for round in $(seq 1 "$ROUNDS"); do
  c1 direct "http://127.0.0.1:$MOCK" x
  [ $HAVE_NGINX = 1 ] && c1 nginx "http://127.0.0.1:$NGINX" x
  c1 relay "http://127.0.0.1:$RELAY" "$FAST_KEY"
done
python3 - "$LATENCY" <<'PY'
import statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    round_, target, p50, p99 = line.split()
    rounds.setdefault(round_, {})[target] = (int(p50) / 1000, int(p99) / 1000)
for round_, targets in rounds.items():
    print(f"round {round_}: " + ", ".join(f"{t} p50 {v[0]:.3f} p99 {v[1]:.3f} ms" for t, v in targets.items()))
for target in ("nginx", "relay"):
    over = [(t[target][0] - t["direct"][0], t[target][1] - t["direct"][1]) for t in rounds.values() if target in t]
    if over:
        print(f"{target} over direct, median of the rounds: p50 {statistics.median(o[0] for o in over):+.3f} ms, "
              f"p99 {statistics.median(o[1] for o in over):+.3f} ms "
              f"(per round p99: {', '.join(f'{o[1]:+.3f}' for o in over)})")
PY

# The same for the throughput target: on a shared 2-core VM one 10-s measurement at c=64 can
# land 10-20% off its neighbours. Short rounds alternating nginx and the relay see the same
# moments; the ratio is taken per round, then its median.
if [ $HAVE_NGINX = 1 ]; then
  C64_ROUNDS=${BENCH_C64_ROUNDS:-6} C64_SECONDS=${BENCH_C64_SECONDS:-5}
  echo "== non-stream c=64: $C64_ROUNDS rounds of ${C64_SECONDS}s per target, alternated with nginx"
  C64="$WORK/c64.tsv"
  : >"$C64"
  c64() {  # target url key pids... -> appends measure's line, labelled with the round
    MEASURE_SECONDS=$C64_SECONDS MEASURE_OUT=$C64 measure "$round" "$1" "$2" "$3" 0 64 "${@:4}" >/dev/null
  }
  for round in $(seq 1 "$C64_ROUNDS"); do
    c64 nginx "http://127.0.0.1:$NGINX" x $(nginx_pids)
    c64 relay "http://127.0.0.1:$RELAY" "$FAST_KEY" $RELAY_PID
  done
  python3 - "$C64" <<'PY'
import statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    round_, target, rps, _p50, _p99, cpu = line.split()[:6]
    rounds.setdefault(round_, {})[target] = (float(rps), float(cpu))
ratios = []
for round_, t in rounds.items():
    rate, cpu = t["relay"][0] / t["nginx"][0], t["relay"][1] / t["nginx"][1]
    ratios.append((rate, cpu))
    print(f"round {round_}: nginx {t['nginx'][0]:,.0f} req/s {t['nginx'][1]:.1f} us/req, "
          f"relay {t['relay'][0]:,.0f} req/s {t['relay'][1]:.1f} us/req: {rate:.0%} of the rate, {cpu:.2f}x the CPU")
print(f"relay against nginx, median of the rounds: {statistics.median(r[0] for r in ratios):.0%} of the rate "
      f"({min(r[0] for r in ratios):.0%}-{max(r[0] for r in ratios):.0%}), "
      f"{statistics.median(r[1] for r in ratios):.2f}x the CPU per request "
      f"({min(r[1] for r in ratios):.2f}-{max(r[1] for r in ratios):.2f}x)")
PY
fi

echo "== time to first byte and first text delta (concurrency 1)"
echo "direct: $("$PROBE" --url "http://127.0.0.1:$MOCK" ttfb --requests 2000 | tr '\n' ' ')"
[ $HAVE_NGINX = 1 ] && echo "nginx:  $("$PROBE" --url "http://127.0.0.1:$NGINX" ttfb --requests 2000 | tr '\n' ' ')"
echo "relay:  $("$PROBE" --url "http://127.0.0.1:$RELAY" --key "$FAST_KEY" ttfb --requests 2000 | tr '\n' ' ')"

echo "== failover after a 429 (concurrency 1, non-stream)"
echo "direct hit on the healthy account through the relay: $("$PROBE" --url "http://127.0.0.1:$RELAY" --key "$FAST_KEY" latency --requests 2000)"
echo "first account 429, second serves:                     $("$PROBE" --url "http://127.0.0.1:$RELAY" --key "$FAILOVER_KEY" failover --requests 2000 --admin-token $ADMIN_TOKEN --account-id "$FAILOVER_ACCOUNT")"

echo "== 1,000 concurrent slow streams (50 ms per chunk, ~5 s each)"
RSS_BEFORE=$(rss_kb $RELAY_PID)
"$PROBE" --url "http://127.0.0.1:$RELAY" --key "$LONG_KEY" streams --concurrency 1000 &
STREAMS=$!
PEAK=0
while kill -0 $STREAMS 2>/dev/null; do
  now=$(rss_kb $RELAY_PID); [ "$now" -gt "$PEAK" ] && PEAK=$now
  sleep 0.2
done
wait $STREAMS
echo "relay RSS before: $((RSS_BEFORE / 1024)) MiB, peak during: $((PEAK / 1024)) MiB, VmHWM: $(( $(hwm_kb $RELAY_PID) / 1024 )) MiB"

if [ "$SOAK" -gt 0 ]; then
  echo "== soak: non-stream c=64 for ${SOAK}s, relay RSS every 30s"
  BENCH_KEY=$FAST_KEY BENCH_STREAM=0 wrk -t2 -c64 -d"${SOAK}s" -s bench/post.lua "http://127.0.0.1:$RELAY/v1/messages" >"$WORK/soak.txt" &
  SOAK_PID=$!
  while kill -0 $SOAK_PID 2>/dev/null; do
    echo "t=$(date +%s) rss=$(( $(rss_kb $RELAY_PID) / 1024 ))MiB"
    sleep 30
  done
  grep RESULT "$WORK/soak.txt"
fi

echo
echo "| shape | target | req/s | p50 ms | p99 ms | CPU µs/req | errors |"
echo "|---|---|---|---|---|---|---|"
while IFS=$'\t' read -r label target rps p50 p99 cpu errors _; do
  echo "| $label | $target | $rps | $p50 | $p99 | $cpu | $errors |"
done <"$RESULTS"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%d GiB", $2/1048576}' /proc/meminfo), $(uname -r); $(date -u +%Y-%m-%d)"
