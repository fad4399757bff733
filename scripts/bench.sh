#!/usr/bin/env bash
# End-to-end benchmark on the shared workload (../shared/bench/gen_events.py), with the
# seed's filter (event.eventType == "page_view" && user.country == "US"):
#
#   throughput  file source; profiles from file:// and over HTTP (mock-api); webhooks to
#               mock-api, and a discarding sink (the Flink baseline's); -w 1 and -w 2
#   kafka       the same topic read by a bare rdkafka consumer (1 and 2 threads) and by
#               the job (run --bounded, -w 1 and -w 2): Tansu started here, 4 partitions
#   triggers    the discarding -w 1 run with a `cooldown: 1h` on its action against none,
#               alternating, twice (what caps cost per event)
#   latency     event -> webhook latency at the receiver (from X-Event-Ingested-At) at a
#               fixed offered load of half the measured maximum (file source paced by
#               source.max-events-per-second, -w 2, checkpoints every 10 s; LATENCY_RATE
#               and LATENCY_CHECKPOINT_MS (0: none) change them)
#   flink       the Flink 2.3 baseline (../shared/bench/flink, p=1, hashmap) on the same
#               workload, and the ratios against this run's figures
#
#   scripts/bench.sh [WORKLOAD_DIR] [EVENTS] [USERS]
#   PARTS="throughput latency" scripts/bench.sh ...      # a subset (default: all five)
#   BEFORE=/path/to/old/event-trigger scripts/bench.sh   # throughput and kafka runs of an
#                                                        # older build too, alternating
#
# WORKLOAD_DIR gets events.jsonl/profiles.jsonl from the generator when it has none
# (default /tmp/event-trigger-wl, 2,000,000 events, 100,000 users). Prints events/s, CPU
# seconds per million events and peak RSS per run; one table per part, then the ratios.
# The flink part needs Java 17 and the Flink jars (see ../shared/bench/flink/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
WL=${1:-/tmp/event-trigger-wl}
EVENTS=${2:-2000000}
USERS=${3:-100000}
PARTS=${PARTS:-throughput kafka triggers latency flink}
GEN=../shared/bench/gen_events.py
FLINK=../shared/bench/flink
PORT=${BENCH_PORT:-18080}
FILTER='event.eventType == "page_view" && user.country == "US"'

if [ ! -s "$WL/events.jsonl" ]; then
  [ -f "$GEN" ] || { echo "no workload in $WL and no $GEN to make one" >&2; exit 1; }
  python3 "$GEN" "$WL" --events "$EVENTS" --users "$USERS"
fi
EVENTS=$(wc -l < "$WL/events.jsonl")
cargo build --release --quiet --bin event-trigger
# The bare consumer (benches/bare_consumer.rs) is a benchmark target: its executable's
# name has a hash, which cargo reports.
BARE_BIN=$(cargo build --release --quiet --bench bare_consumer --message-format=json \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "bare_consumer" and m.get("executable"):
        print(m["executable"])')
BIN=target/release/event-trigger
TMP=$(mktemp -d)
MOCK=
BROKER_STARTED=
cleanup() {
  [ -n "$MOCK" ] && kill "$MOCK" 2>/dev/null
  [ -n "$BROKER_STARTED" ] && scripts/broker.sh stop
  rm -rf "$TMP"
}
trap cleanup EXIT
has() { [[ " $PARTS " == *" $1 "* ]]; }
echo "$FILTER" > "$TMP/filter.rhai"
echo "workload: $WL ($EVENTS events), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"

start_mock() { # a fresh receiver (its latency histogram starts empty)
  [ -n "$MOCK" ] && kill "$MOCK" 2>/dev/null && wait "$MOCK" 2>/dev/null || true
  "$BIN" mock-api --profiles "$WL/profiles.jsonl" --listen "127.0.0.1:$PORT" 2>"$TMP/mock.log" &
  MOCK=$!
  for _ in $(seq 150); do curl -sf "127.0.0.1:$PORT/stats" >/dev/null && return; sleep 0.2; done
  echo "mock-api did not start" >&2; cat "$TMP/mock.log" >&2; exit 1
}

config() { # name source-yaml profiles(file|http) action(webhook|discard) [engine-yaml]
  local base
  if [ "$3" = file ]; then base="file://$WL/profiles.jsonl"; else base="http://127.0.0.1:$PORT"; fi
  {
    echo "$2"
    echo "profile-api: { base-url: \"$base\" }"
    echo "filter: { script-path: \"$TMP/filter.rhai\" }"
    if [ "$4" = webhook ]; then
      echo "actions: { webhook: { url: \"http://127.0.0.1:$PORT/webhook\" } }"
    else
      echo "actions: { debug: { enabled: true } }"
    fi
    echo "engine: { checkpoint-dir: \"$TMP/ck-$1\" ${5:-} }"
    echo "metrics: { listen: \"\" }"
  } > "$TMP/$1.yml"
  echo "$TMP/$1.yml"
}

# Runs the job; prints "events/s cpu_s/1M rss_MiB passed fetched". A discarding sink is
# the debug action with its log off (nothing rendered).
# JOB_BIN is the binary (the build measured; BEFORE's for its rows).
JOB_BIN=$BIN
job() { # config workers [extra args]
  local cfg=$1 w=$2
  shift 2
  RUST_LOG=warn,event_trigger::action::debug=off /usr/bin/time -f '%e %U %S %M' -o "$TMP/time" \
    "$JOB_BIN" run --config "$cfg" -w "$w" "$@" >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err" >&2; exit 1; }
  local wall user sys rss summary
  read -r wall user sys rss < "$TMP/time"
  summary=$(grep '^summary:' "$TMP/out")
  get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$summary"; }
  awk -v n="$EVENTS" -v u="$user" -v s="$sys" -v rss="$rss" -v el="$(get elapsed_s)" \
      -v passed="$(get passed)" -v fetched="$(get fetched)" \
    'BEGIN { printf "%.0f %.2f %.0f %d %d\n", n/el, (u+s)/(n/1e6), rss/1024, passed, fetched }'
}

row() { # source profiles action w "figures" [build]
  read -r evs cpu rss passed fetched <<<"$5"
  printf '%-7s %-8s %-8s %-2s %10s %9s %8s %8s %8s %s\n' "$1" "$2" "$3" "$4" "$evs" "$cpu" "$rss" "$passed" "$fetched" "${6:-}"
}
header() { printf '%-7s %-8s %-8s %-2s %10s %9s %8s %8s %8s %s\n' source profiles action w events/s cpu_s/1M rss_MiB passed fetched "${BEFORE:+build}"; }
# With BEFORE, every throughput and kafka run is made by the old build, then this one.
if [ -n "${BEFORE:-}" ]; then
  [ -x "$BEFORE" ] || { echo "BEFORE=$BEFORE is not an executable" >&2; exit 1; }
  BUILDS="before after"
else
  BUILDS="after"
fi
measure() { # key source profiles action w config [extra args]: R[key] (after) and R[before/key]
  local key=$1 src=$2 p=$3 a=$4 w=$5 cfg=$6 b
  shift 6
  for b in $BUILDS; do
    local figures run_cfg=$cfg
    JOB_BIN=$BIN
    if [ "$b" = before ]; then
      # A consumer group and checkpoint directory of its own: nothing carries over.
      JOB_BIN=$BEFORE
      run_cfg=${cfg%.yml}-before.yml
      sed -e 's/consumer-group-id: \([^,]*\)/consumer-group-id: \1-before/' \
          -e 's#checkpoint-dir: "\([^"]*\)"#checkpoint-dir: "\1-before"#' "$cfg" > "$run_cfg"
    fi
    figures=$(job "$run_cfg" "$w" "$@")
    if [ "$b" = before ]; then R[before/$key]=$figures; else R[$key]=$figures; fi
    row "$src" "$p" "$a" "$w" "$figures" "${BEFORE:+$b}"
  done
  JOB_BIN=$BIN
}

declare -A R # figures by "source/profiles/action/w"
FILE_SRC="source: { type: file, path: \"$WL/events.jsonl\" }"

if has throughput || has latency || has flink; then
  start_mock
  echo; echo "== throughput: file source =="; header
  # profiles/action/workers; without the throughput part, only what latency (the -w 2
  # webhook maximum) and flink (the -w 1 discarding run) need.
  runs="file/webhook/1 file/webhook/2 http/webhook/1 http/webhook/2 file/discard/1 file/discard/2"
  has throughput || runs="file/webhook/2 file/discard/1"
  for r in $runs; do
    IFS=/ read -r p a w <<<"$r"
    measure "file/$r" file "$p" "$a" "$w" "$(config "t-$p-$a-$w" "$FILE_SRC" "$p" "$a")"
  done
fi

if has kafka; then
  # shellcheck source=scripts/broker.sh
  source scripts/broker.sh start
  BROKER_STARTED=1
  TOPIC=bench-$$
  "$BIN" produce --bootstrap-servers "$EVENT_TRIGGER_TEST_BROKER" --topic "$TOPIC" --partitions 4 \
    "$WL/events.jsonl" 2>&1 | grep -o 'produced.*' || true
  echo; echo "== kafka: Tansu on this machine, 4 partitions, run --bounded =="
  declare -A BARE
  for t in 1 2; do
    BARE[$t]=$("$BARE_BIN" "$EVENT_TRIGGER_TEST_BROKER" "$TOPIC" $t 2>&1 \
      | sed -n 's/.* \([0-9]*\) msg\/s.*/\1/p')
    echo "bare rdkafka consumer, $t thread(s): ${BARE[$t]} msg/s"
  done
  header
  for c in discard/1 discard/2 webhook/2; do
    a=${c%/*}; w=${c#*/}
    [ "$a" = webhook ] && { [ -n "$MOCK" ] || start_mock; }
    src="source: { type: kafka }
kafka: { bootstrap-servers: \"$EVENT_TRIGGER_TEST_BROKER\", topic: $TOPIC, consumer-group-id: g-$a-$w-$$, start-from: earliest }"
    measure "kafka/file/$a/$w" kafka file "$a" "$w" "$(config "k-$a-$w" "$src" file "$a")" --bounded
  done
  scripts/broker.sh stop
  BROKER_STARTED=
fi

if has triggers; then
  # Issue #18's cost: the same discarding run with a 1 h cooldown on its action (every
  # passing event's user checked and recorded; repeats capped) against none, alternating.
  echo; echo "== triggers: file source, file:// profiles, discarding, -w 1, cooldown 1h on / off =="
  header
  for round in 1 2; do
    for c in off on; do
      cd_key=""; [ "$c" = on ] && cd_key=", cooldown: 1h"
      {
        echo "$FILE_SRC"
        echo "profile-api: { base-url: \"file://$WL/profiles.jsonl\" }"
        echo "filter: { script-path: \"$TMP/filter.rhai\" }"
        echo "actions: [ { type: debug$cd_key } ]"
        echo "engine: { checkpoint-dir: \"$TMP/ck-cooldown-$c\" }"
        echo "metrics: { listen: \"\" }"
      } > "$TMP/cooldown-$c.yml"
      figures=$(job "$TMP/cooldown-$c.yml" 1)
      row file file "cd-$c" 1 "$figures" "round $round"
      capped=$(sed -n 's/.* capped=\([0-9]*\).*/\1/p' "$TMP/out")
      [ "$c" = on ] && echo "  capped: $capped of $(cut -d' ' -f4 <<<"$figures") passed"
    done
  done
fi

if has latency; then
  max=$(cut -d' ' -f1 <<<"${R[file/file/webhook/2]}")
  rate=${LATENCY_RATE:-$((max / 2))}
  echo; echo "== latency: file source paced at $rate events/s (the maximum: $max), file:// profiles, webhooks to mock-api, -w 2, checkpoint interval ${LATENCY_CHECKPOINT_MS:-10000} ms (0: none) =="
  start_mock
  paced="source: { type: file, path: \"$WL/events.jsonl\", max-events-per-second: $rate }"
  LAT=$(job "$(config lat "$paced" file webhook ", checkpoint-interval-ms: ${LATENCY_CHECKPOINT_MS:-10000}")" 2 --bounded)
  row file file webhook 2 "$LAT"
  stats=$(curl -sf "127.0.0.1:$PORT/stats")
  LATENCY=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); l, j = s["latency"], s["latency_in_job"]; print("%d %.1f %.1f %.1f %.0f %.0f %.0f" % (l["count"], l["p50_ms"], l["p99_ms"], l["max_ms"], j["p50_ms"], j["p99_ms"], j["max_ms"]))' "$stats")
  read -r lc p50 p99 lmax j50 j99 jmax <<<"$LATENCY"
  echo "event -> webhook: $lc calls, p50 $p50 ms, p99 $p99 ms, max $lmax ms (upper bounds: ingestion is stamped in whole ms)"
  echo "  of which in the job (ingested -> call sent, whole ms): p50 $j50, p99 $j99, max $jmax"
fi

if has flink; then
  echo; echo "== flink: $FLINK, p=1, hashmap, same workload =="
  if ! command -v java >/dev/null; then
    echo "skipped: no java (see $FLINK/README.md)"
  else
    FL=$(WL_DIR="$WL" "$FLINK/run.sh" "$EVENTS" "$USERS" 1 | grep '^SUMMARY')
    fget() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$FL"; }
    f_evs=$(fget ev_per_s_processing); f_cpu=$(fget cpu_s); f_rss=$(fget peak_rss_mib); f_passed=$(fget passed)
    awk -v e="$f_evs" -v c="$f_cpu" -v n="$EVENTS" -v r="$f_rss" -v p="$f_passed" \
      'BEGIN { printf "flink p=1: %.0f events/s (processing), %.1f CPU s per 1M events, %.0f MiB peak RSS, passed %d\n", e, c/(n/1e6), r, p }'
    read -r evs cpu rss _ <<<"${R[file/file/discard/1]}"
    awk -v fe="$f_evs" -v fc="$f_cpu" -v n="$EVENTS" -v fr="$f_rss" -v e="$evs" -v c="$cpu" -v r="$rss" \
      'BEGIN { printf "ratios (this job, file source, file:// profiles, discarding sink, -w 1):\n  events per CPU second %.1fx Flink, events/s %.1fx, peak RSS 1/%.1f\n", (fc/(n/1e6))/c, e/fe, fr/r }'
  fi
fi

echo; echo "== against the targets (performance issue) =="
if has throughput; then
  awk -v a="$(cut -d' ' -f1 <<<"${R[file/file/discard/1]}")" -v b="$(cut -d' ' -f1 <<<"${R[file/file/discard/2]}")" \
      -v c="$(cut -d' ' -f1 <<<"${R[file/file/webhook/1]}")" -v d="$(cut -d' ' -f1 <<<"${R[file/file/webhook/2]}")" \
    'BEGIN { printf "-w 2 / -w 1 (target >= 1.7): discarding %.2f, webhooks %.2f\n", b/a, d/c }'
  for b in $BUILDS; do
    k=; [ "$b" = before ] && k=before/
    read -r _ cw _ passed _ <<<"${R[${k}file/file/webhook/1]}"
    read -r _ cd _ _ _ <<<"${R[${k}file/file/discard/1]}"
    awk -v cw="$cw" -v cd="$cd" -v n="$EVENTS" -v p="$passed" -v b="${BEFORE:+ ($b)}" \
      'BEGIN { if (p > 0) printf "CPU per webhook call, -w 1%s: %.0f us (CPU with webhooks - CPU discarding) / calls\n", b, (cw-cd)*n/1e6/p*1e6 }'
  done
fi
if has kafka; then
  awk -v j1="$(cut -d' ' -f1 <<<"${R[kafka/file/discard/1]}")" -v j2="$(cut -d' ' -f1 <<<"${R[kafka/file/discard/2]}")" \
      -v b1="${BARE[1]}" -v b2="${BARE[2]}" \
    'BEGIN { printf "kafka job / bare consumer (target >= 0.8): -w 1 %.2f, -w 2 %.2f\n", j1/b1, j2/b2 }'
fi
if has latency; then echo "latency p99 (target < 5 ms): $p99 ms, max $lmax ms"; fi
