#!/usr/bin/env bash
# End-to-end benchmark on the shared workload: the job on a file source with profiles
# from file:// and over HTTP (mock-api), at -w 1 and -w 2, webhooks to mock-api.
# Prints events/s, CPU seconds per million events and peak RSS per run.
#
#   scripts/bench.sh [WORKLOAD_DIR] [EVENTS] [USERS]
#
# WORKLOAD_DIR gets events.jsonl/profiles.jsonl from ../shared/bench/gen_events.py when
# it has none (default /tmp/event-trigger-wl, 2,000,000 events, 100,000 users).
set -euo pipefail
cd "$(dirname "$0")/.."
WL=${1:-/tmp/event-trigger-wl}
EVENTS=${2:-2000000}
USERS=${3:-100000}
GEN=../shared/bench/gen_events.py
PORT=${BENCH_PORT:-18080}

if [ ! -s "$WL/events.jsonl" ]; then
  [ -f "$GEN" ] || { echo "no workload in $WL and no $GEN to make one" >&2; exit 1; }
  python3 "$GEN" "$WL" --events "$EVENTS" --users "$USERS"
fi
EVENTS=$(wc -l < "$WL/events.jsonl")
cargo build --release --quiet
BIN=target/release/event-trigger
TMP=$(mktemp -d)
trap 'kill $MOCK 2>/dev/null || true; rm -rf "$TMP"' EXIT

"$BIN" mock-api --profiles "$WL/profiles.jsonl" --listen "127.0.0.1:$PORT" 2>"$TMP/mock.log" &
MOCK=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/stats" >/dev/null && break; sleep 0.2; done

echo 'event.eventType == "page_view" && user.country == "US"' > "$TMP/filter.rhai"
printf '%-8s %-3s %10s %12s %10s %10s %9s %8s\n' profiles w events/s cpu_s/1M rss_MiB passed fetched wall_s
for profiles in file http; do
  if [ $profiles = file ]; then base="file://$WL/profiles.jsonl"; else base="http://127.0.0.1:$PORT"; fi
  cat > "$TMP/bench.yml" <<YML
source: { type: file, path: "$WL/events.jsonl" }
profile-api: { base-url: "$base" }
filter: { script-path: "$TMP/filter.rhai" }
actions: { webhook: { url: "http://127.0.0.1:$PORT/webhook" } }
YML
  for w in 1 2; do
    /usr/bin/time -f '%e %U %S %M' -o "$TMP/time" "$BIN" run --config "$TMP/bench.yml" -w $w \
      >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err" >&2; exit 1; }
    read -r wall user sys rss < "$TMP/time"
    summary=$(grep '^summary:' "$TMP/out")
    get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$summary"; }
    awk -v p=$profiles -v w=$w -v n="$EVENTS" -v wall="$wall" -v u="$user" -v s="$sys" -v rss="$rss" \
        -v passed="$(get passed)" -v fetched="$(get fetched)" -v el="$(get elapsed_s)" \
      'BEGIN { printf "%-8s %-3s %10.0f %12.2f %10.0f %10d %9d %8.1f\n", p, w, n/el, (u+s)/(n/1e6), rss/1024, passed, fetched, wall }'
  done
done
