#!/usr/bin/env bash
# Why a request waits for a core: `perf sched` records the scheduler while wrk drives one
# connection (concurrency 1) through the relay, then this lists how often a relay worker,
# woken by a socket, waited over 0.1 ms before it ran, by the thread that held the core.
# On a shared VM the p99 of one wrk run moves by a millisecond between runs; these counts
# show the relay's own part in it (its SQLite and usage-writer threads) apart from the
# machine's. Needs wrk and perf (apt-get install wrk linux-perf), as root or with
# kernel.perf_event_paranoid <= 1.
#   bench/sched.sh          # 3 s recorded inside 5 s of load
#   BENCH_BIN=/tmp/other-build bench/sched.sh   # another build of the relay
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

MOCK=19290 RELAY=19285 ADMIN_TOKEN=bench-admin
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf is needed: apt-get install linux-perf" >&2; exit 1; }
BIN=$(relay_binary)
WORK=$(mktemp -d)
trap stop_children EXIT
start_relay "$BIN"
KEY=$(group fast $MOCK sk-1 sk-2 sk-3 sk-4)

BENCH_KEY=$KEY BENCH_STREAM=0 wrk -t1 -c1 -d5s -s bench/post.lua "http://127.0.0.1:$RELAY/v1/messages" >"$WORK/wrk.txt" &
LOAD=$!
sleep 1
perf sched record -o "$WORK/sched.data" -- sleep 3 >/dev/null 2>&1
wait $LOAD
perf sched timehist -i "$WORK/sched.data" 2>/dev/null >"$WORK/timehist.txt"
grep '^RESULT' "$WORK/wrk.txt"
# timehist columns: time, cpu, task, wait time, scheduling delay, run time (ms). The thread
# that ran last on a core before a delayed worker is the one it waited behind.
awk 'NR > 3 {
  cpu = $2; task = $3; sub(/\[.*/, "", task); delay = $5 + 0
  if (task ~ /^relay-worker/) { wakeups++; if (delay > 0.1) { late++; behind[before[cpu]]++ } }
  before[cpu] = task
} END {
  printf "relay worker wakeups: %d, waited over 0.1 ms: %d\n", wakeups, late
  for (task in behind) printf "%6d behind %s\n", behind[task], task
}' "$WORK/timehist.txt" | { read -r summary; echo "$summary"; sort -rn | head -12; }
