#!/usr/bin/env bash
# Instructions, not seconds: valgrind's callgrind counts what each build executes on a
# small workload (file source, file:// profiles, the seed's filter, -w 1), once with a
# discarding sink and once with webhooks to mock-api, and prints the instructions per
# event (discarding run / events) and per webhook call ((webhooks - discarding) / calls).
# The counts repeat to ~0.1% whatever else the machine does, where its CPU seconds move
# by 10-40% between runs: use it for A/B of hot-path changes; the seconds stay
# scripts/bench.sh's. Only the process's own user-space work is counted (not the
# kernel's, not mock-api's); threads run one at a time under valgrind (~30x slower).
#
#   scripts/bench-instructions.sh [BIN ...]       # default: target/release/event-trigger
#   WL=/path/to/workload EVENTS=100000 USERS=10000 scripts/bench-instructions.sh old new
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-100000}
USERS=${USERS:-10000}
WL=${WL:-/tmp/event-trigger-wl-$EVENTS}
PORT=${BENCH_PORT:-18082}
GEN=../shared/bench/gen_events.py
FILTER='event.eventType == "page_view" && user.country == "US"'

command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 1; }
if [ ! -s "$WL/events.jsonl" ]; then
  [ -f "$GEN" ] || { echo "no workload in $WL and no $GEN to make one" >&2; exit 1; }
  python3 "$GEN" "$WL" --events "$EVENTS" --users "$USERS" >/dev/null
fi
EVENTS=$(wc -l < "$WL/events.jsonl")
if [ $# -eq 0 ]; then
  cargo build --release --quiet --bin event-trigger
  set -- target/release/event-trigger
fi
for bin in "$@"; do
  [ -x "$bin" ] || { echo "$bin is not an executable" >&2; exit 1; }
done
TMP=$(mktemp -d)
MOCK=
cleanup() {
  [ -n "$MOCK" ] && kill "$MOCK" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
echo "$FILTER" > "$TMP/filter.rhai"

"$1" mock-api --profiles "$WL/profiles.jsonl" --listen "127.0.0.1:$PORT" 2>"$TMP/mock.log" &
MOCK=$!
for _ in $(seq 150); do curl -sf "127.0.0.1:$PORT/stats" >/dev/null && break; sleep 0.2; done
curl -sf "127.0.0.1:$PORT/stats" >/dev/null || { echo "mock-api did not start" >&2; cat "$TMP/mock.log" >&2; exit 1; }

config() { # action(webhook|discard)
  {
    echo "source: { type: file, path: \"$WL/events.jsonl\" }"
    echo "profile-api: { base-url: \"file://$WL/profiles.jsonl\" }"
    echo "filter: { script-path: \"$TMP/filter.rhai\" }"
    if [ "$1" = webhook ]; then
      echo "actions: { webhook: { url: \"http://127.0.0.1:$PORT/webhook\" } }"
    else
      echo "actions: { debug: { enabled: true } }"
    fi
    echo "engine: { checkpoint-dir: \"$TMP/ck\" }"
    echo "metrics: { listen: \"\" }"
  } > "$TMP/$1.yml"
}
config webhook
config discard

count() { # bin action -> "instructions passed"
  rm -rf "$TMP/ck"
  RUST_LOG=warn,event_trigger::action::debug=off valgrind --tool=callgrind --dump-instr=no \
    --callgrind-out-file="$TMP/cg.out" "$1" run --config "$TMP/$2.yml" -w 1 \
    >"$TMP/out" 2>"$TMP/err" || { tail "$TMP/err" >&2; exit 1; }
  local ir passed
  ir=$(sed -n 's/^==[0-9]*== Collected : \([0-9]*\)/\1/p' "$TMP/err")
  [ -n "$ir" ] || ir=$(sed -n "s/^summary: //p" "$TMP/cg.out")
  passed=$(sed -n 's/^summary:.* passed=\([0-9]*\).*/\1/p' "$TMP/out")
  echo "$ir $passed"
}

echo "workload: $WL ($EVENTS events), $(date -u +%FT%TZ)"
printf '%-40s %16s %16s %8s %12s %14s\n' build discarding webhooks calls "per event" "per call"
for bin in "$@"; do
  read -r d passed < <(count "$bin" discard)
  read -r w calls < <(count "$bin" webhook)
  [ "$passed" = "$calls" ] || echo "note: $passed passed discarding, $calls with webhooks" >&2
  awk -v b="$bin" -v d="$d" -v w="$w" -v c="$calls" -v n="$EVENTS" \
    'BEGIN { printf "%-40s %16.0f %16.0f %8d %12.0f %14.0f\n", b, d, w, c, d / n, (w - d) / c }'
done
