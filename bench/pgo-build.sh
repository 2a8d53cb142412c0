#!/usr/bin/env bash
# Builds the relay with profile-guided optimisation: an instrumented build serves a training
# load (the project's mock upstream; non-stream and stream requests at concurrency 1 and 64,
# Claude Code's request headers, a failover after a 429), then the release build is compiled
# again with the profile it wrote. Prints the optimised binary's path (target/pgo/release/).
#
# Needs wrk (apt-get install wrk) and llvm-profdata of the LLVM version rustc is built with
# (`rustc -vV`): `rustup component add llvm-tools`, or Debian's llvm-<major> package;
# LLVM_PROFDATA=path chooses one. Both builds have target folders of their own under
# target/, so the first run compiles every dependency twice.
#   bench/pgo-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
find_profdata() {
  [ -n "${LLVM_PROFDATA:-}" ] && { echo "$LLVM_PROFDATA"; return; }
  local sysroot; sysroot=$(rustc --print sysroot)
  for candidate in "$sysroot"/lib/rustlib/*/bin/llvm-profdata "llvm-profdata-$LLVM_MAJOR" llvm-profdata; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    # A profile written by rustc's LLVM is read only by the same major version.
    if "$candidate" --version 2>/dev/null | grep -q "LLVM version $LLVM_MAJOR\."; then
      echo "$candidate"; return
    fi
  done
}
PROFDATA=$(find_profdata)
[ -n "$PROFDATA" ] || {
  echo "llvm-profdata for LLVM $LLVM_MAJOR is needed: rustup component add llvm-tools," \
       "or apt-get install llvm-$LLVM_MAJOR, or LLVM_PROFDATA=path" >&2
  exit 1
}

TARGET=$PWD/target
RAW=$TARGET/pgo-profiles
rm -rf "$RAW" && mkdir -p "$RAW"
echo "== instrumented build (target/pgo-gen)" >&2
RUSTFLAGS="-Cprofile-generate=$RAW" CARGO_TARGET_DIR=$TARGET/pgo-gen \
  cargo build --release --locked -q -p claude-code-relay
TRAINEE=$TARGET/pgo-gen/release/claude-code-relay

MOCK=19490 RELAY=19485 ADMIN_TOKEN=pgo-admin
WORK=$(mktemp -d)
trap 'stop_children; rm -rf "$WORK"' EXIT
# The mock runs from the same binary: its profile is the mock's code, not the relay's, and
# is written to the same folder; it does no harm beside the relay's.
start_relay "$TRAINEE"
KEY=$(group fast $MOCK sk-1 sk-2 sk-3 sk-4)
FAILOVER_KEY=$(group failover $MOCK sk-mock-429 sk-ok)
URL=http://127.0.0.1:$RELAY/v1/messages
echo "== training load" >&2
train() { local key=$1 stream=$2 connections=$3 seconds=$4 script=${5:-bench/post.lua}
  BENCH_KEY=$key BENCH_STREAM=$stream wrk -t"$(( connections < 2 ? 1 : 2 ))" -c"$connections" -d"${seconds}s" -s "$script" "$URL" \
    | sed -n 's/^RESULT /  /p' >&2; }
train "$KEY" 0 64 8
train "$KEY" 1 64 6
train "$KEY" 0 1 3
train "$KEY" 1 1 3
train "$KEY" 0 4 3 bench/claude-code.lua
train "$FAILOVER_KEY" 0 4 2
curl -sf "http://127.0.0.1:$RELAY/api/v1/admin/logs?limit=50" -H "Authorization: Bearer $ADMIN_TOKEN" >/dev/null
# The profile is written when the process exits normally: a graceful stop.
kill -TERM "$RELAY_PID" "$MOCK_PID"
wait "$RELAY_PID" || { echo "the instrumented relay did not stop cleanly" >&2; exit 1; }
wait "$MOCK_PID" || true

"$PROFDATA" merge -o "$TARGET/pgo.profdata" "$RAW"
echo "== optimised build (target/pgo)" >&2
RUSTFLAGS="-Cprofile-use=$TARGET/pgo.profdata" CARGO_TARGET_DIR=$TARGET/pgo \
  cargo build --release --locked -q -p claude-code-relay
echo "$TARGET/pgo/release/claude-code-relay"
