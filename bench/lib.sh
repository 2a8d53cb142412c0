# Shared by the bench scripts (sourced after `cd` to the repository): starting the mock and
# the relay, and the admin API of the relay on $RELAY, with $ADMIN_TOKEN.

# The script's children, stopped when it exits (`trap stop_children EXIT`).
PIDS=()
stop_children() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
# wait_port PORT: returns once something listens on 127.0.0.1:PORT; gives up after 10 s.
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; exit 1
}
# The relay to measure: BENCH_BIN, or this tree's release build, built first.
relay_binary() {
  if [ -n "${BENCH_BIN:-}" ]; then echo "$BENCH_BIN"; return; fi
  cargo build --release -q -p claude-code-relay >&2
  echo "$PWD/target/release/claude-code-relay"
}
# start_relay BIN: BIN's zero-delay mock on $MOCK and BIN as the relay on $RELAY, with its
# SQLite store and both logs in $WORK, logging as the benchmarks do; sets MOCK_PID and
# RELAY_PID and returns once both listen.
start_relay() {
  "$1" mock-upstream --listen 127.0.0.1:$MOCK --no-record >"$WORK/mock.log" 2>&1 & PIDS+=($!); MOCK_PID=$!
  RELAY_LISTEN=127.0.0.1:$RELAY DATABASE_URL="sqlite://$WORK/relay.db" RELAY_ADMIN_TOKEN=$ADMIN_TOKEN \
    RELAY_LOG_LANG=en RELAY_LOG_FORMAT=text "$1" >"$WORK/relay.log" 2>&1 & PIDS+=($!); RELAY_PID=$!
  wait_port $MOCK; wait_port $RELAY
}

admin() { curl -sf "http://127.0.0.1:$RELAY/api/v1/admin/$1" -H "Authorization: Bearer $ADMIN_TOKEN" -d "$2"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
# group NAME MOCK_PORT CREDENTIAL...: a group with one account per credential against the
# mock on MOCK_PORT, priorities 1, 2, ... in order; prints a relay key of the group.
group() {
  local name=$1 port=$2; shift 2
  local gid; gid=$(admin groups "{\"name\":\"$name\"}" | json "['id']")
  local priority=1
  for credential in "$@"; do
    admin accounts "{\"name\":\"$name-$priority\",\"platform\":\"claude_console\",\"group_id\":$gid,\"base_url\":\"http://127.0.0.1:$port\",\"api_key\":\"$credential\",\"priority\":$priority}" >/dev/null
    priority=$((priority + 1))
  done
  admin api-keys "{\"name\":\"$name\",\"group_id\":$gid}" | json "['key']"
}
