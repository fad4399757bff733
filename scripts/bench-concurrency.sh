#!/usr/bin/env bash
# Calls at once against a modest webhook receiver: `mock-api --slots 8 --service-ms 50`
# (8 calls served at once, 50 ms each: 160 calls a second at most; the rest queue inside
# it and are served to the end even after the job gave up on them). Runs the job on the
# shared workload's generator output (file source, file:// profiles, the seed's filter,
# -w 2, webhook time-outs of TIMEOUT_MS) with `concurrency: adaptive` and a sweep of fixed
# limits, and prints for each: events/s, calls received, repeats (calls - distinct
# Idempotency-Keys), the job's retries and failed deliveries, and passing events never
# delivered. `concurrency: 512` at -w 2 is what the job did before the limit existed
# (256 calls per worker, no limit per process).
#
#   scripts/bench-concurrency.sh [WORKLOAD_DIR] [EVENTS] [USERS]
#   LIMITS="adaptive 8 16 512" TIMEOUT_MS=2000 scripts/bench-concurrency.sh
#   BIN=path/to/event-trigger scripts/bench-concurrency.sh    # a binary built already
set -euo pipefail
cd "$(dirname "$0")/.."
WL=${1:-/tmp/event-trigger-wl-concurrency}
EVENTS=${2:-20000}
USERS=${3:-2000}
LIMITS=${LIMITS:-adaptive 4 8 12 16 32 64 512}
TIMEOUT_MS=${TIMEOUT_MS:-2000}
PORT=${BENCH_PORT:-18081}
GEN=../shared/bench/gen_events.py

if [ ! -s "$WL/events.jsonl" ]; then
  [ -f "$GEN" ] || { echo "no workload in $WL and no $GEN to make one" >&2; exit 1; }
  python3 "$GEN" "$WL" --events "$EVENTS" --users "$USERS" >/dev/null
fi
EVENTS=$(wc -l < "$WL/events.jsonl")
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin event-trigger
  BIN=target/release/event-trigger
fi
TMP=$(mktemp -d)
MOCK=
cleanup() {
  [ -n "$MOCK" ] && kill "$MOCK" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
echo 'event.eventType == "page_view" && user.country == "US"' > "$TMP/filter.rhai"
echo "workload: $WL ($EVENTS events), receiver: 8 slots x 50 ms, time-out ${TIMEOUT_MS} ms, -w 2, $(date -u +%FT%TZ)"
printf '%-12s %9s %8s %8s %8s %8s %8s %8s\n' concurrency events/s passed calls repeats retries failed missed

for limit in $LIMITS; do
  # A fresh receiver per run: its counters start at zero.
  [ -n "$MOCK" ] && kill "$MOCK" 2>/dev/null && wait "$MOCK" 2>/dev/null || true
  "$BIN" mock-api --profiles "$WL/profiles.jsonl" --listen "127.0.0.1:$PORT" \
    --slots 8 --service-ms 50 2>"$TMP/mock.log" &
  MOCK=$!
  for _ in $(seq 150); do curl -sf "127.0.0.1:$PORT/stats" >/dev/null && break; sleep 0.2; done
  cat > "$TMP/run.yml" <<YML
source: { type: file, path: "$WL/events.jsonl" }
profile-api: { base-url: "file://$WL/profiles.jsonl" }
filter: { script-path: "$TMP/filter.rhai" }
actions: { webhook: { url: "http://127.0.0.1:$PORT/webhook", timeout-ms: $TIMEOUT_MS, concurrency: $limit } }
engine: { checkpoint-dir: "$TMP/ck" }
metrics: { listen: "" }
YML
  RUST_LOG=error "$BIN" run --config "$TMP/run.yml" -w 2 >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err" >&2; exit 1; }
  summary=$(grep '^summary:' "$TMP/out")
  get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$summary"; }
  stats=$(curl -sf "127.0.0.1:$PORT/stats")
  calls=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["webhooks"])' "$stats")
  distinct=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["webhooks_distinct"])' "$stats")
  printf '%-12s %9s %8s %8s %8s %8s %8s %8s\n' "$limit" "$(get events_per_s)" "$(get passed)" \
    "$calls" "$((calls - distinct))" "$(get actions_retried)" "$(get actions_failed)" \
    "$(($(get passed) - distinct))"
done
