#!/usr/bin/env bash
# Where the relay's CPU per request goes next to nginx's, at concurrency 64 (non-stream):
# user and system time per request of nginx's workers, of the relay's request workers, and
# of the relay's other threads (the usage writer, SQLite's threads, the log flusher), in
# alternated rounds against the same mock. Needs wrk and nginx (apt-get install wrk
# nginx-light).
#   bench/split.sh              # 6 rounds of 4 s per target
#   bench/split.sh 10 5         # 10 rounds of 5 s
#   BENCH_BIN=/tmp/other-build bench/split.sh   # another build of the relay
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-6} SECONDS_PER_ROUND=${2:-4}
MOCK=19390 RELAY=19385 NGINX=19386 ADMIN_TOKEN=bench-admin
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is needed: apt-get install nginx-light" >&2; exit 1; }
BIN=$(relay_binary)
WORK=$(mktemp -d)
trap stop_children EXIT
start_relay "$BIN"
# As in run.sh: nginx in the foreground, in this script's session (one scheduling autogroup).
sed -e "s#__WORK__#$WORK#g" -e "s#__MOCK_PORT__#$MOCK#" -e "s#__SLOW_PORT__#$MOCK#" \
    -e "s#__NGINX_PORT__#$NGINX#" -e "s#__NGINX_SLOW_PORT__#$((NGINX + 1))#" bench/nginx.conf >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" & PIDS+=($!)
wait_port $NGINX
for _ in $(seq 1 50); do [ -s "$WORK/nginx.pid" ] && break; sleep 0.1; done

KEY=$(group fast $MOCK sk-1 sk-2 sk-3 sk-4)
NGINX_STATS=$(for pid in $(cat "$WORK/nginx.pid") $(pgrep -P "$(cat "$WORK/nginx.pid")"); do echo "/proc/$pid/stat"; done)
# The relay's threads by name: its request workers, and everything else.
threads() {
  for stat in /proc/$RELAY_PID/task/*/stat; do
    local kind=others
    grep -q '^relay-worker' "${stat%stat}comm" && kind=workers
    if [ "$kind" = "$1" ]; then echo "$stat"; fi
  done
}
ticks() { awk '{sub(/^.*\) /, ""); split($0, f, " "); u += f[12]; s += f[13]} END {print u + 0, s + 0}' "$@"; }
load() {
  BENCH_KEY=$KEY wrk -t2 -c64 -d"$2s" -s bench/post.lua "http://127.0.0.1:$1/v1/messages" \
    | sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p'
}
load $NGINX 2 >/dev/null; load $RELAY 2 >/dev/null
TICK_US=$((1000000 / $(getconf CLK_TCK)))
per_request() { awk -v t=$TICK_US -v n="$3" -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "user %5.2f sys %5.2f", (y[1] - x[1]) * t / n, (y[2] - x[2]) * t / n}'; }
echo "CPU µs per request, non-stream c=64, ${SECONDS_PER_ROUND}-s rounds alternated"
for round in $(seq 1 "$ROUNDS"); do
  before=$(ticks $NGINX_STATS); n=$(load $NGINX "$SECONDS_PER_ROUND"); after=$(ticks $NGINX_STATS)
  line="round $round: nginx $((n / SECONDS_PER_ROUND)) req/s $(per_request "$before" "$after" "$n")"
  workers=$(threads workers); others=$(threads others)
  w0=$(ticks $workers); o0=$(ticks $others); n=$(load $RELAY "$SECONDS_PER_ROUND"); w1=$(ticks $workers); o1=$(ticks $others)
  echo "$line | relay $((n / SECONDS_PER_ROUND)) req/s, workers $(per_request "$w0" "$w1" "$n"), others $(per_request "$o0" "$o1" "$n")"
done
