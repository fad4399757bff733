#!/usr/bin/env bash
# What checkpoints cost: the job through Kafka (Tansu, started here) with checkpoints off,
# every 60 s and every 1 s; the size and duration of the final checkpoint; and how long a
# restart takes to restore it.
#
#   scripts/bench-checkpoints.sh [WORKLOAD_DIR] [EVENTS] [USERS]
#   BACKENDS="hashmap rocksdb" scripts/bench-checkpoints.sh ...   # the state backends to run
#   INTERVALS="60000" scripts/bench-checkpoints.sh ...            # the intervals (0 = off)
#   FULL_EVERY=1 scripts/bench-checkpoints.sh ...                 # whole parts only (default 30, as the job:
#                                                                 # deltas in between)
#   COMPRESSION=none scripts/bench-checkpoints.sh ...             # parts uncompressed (lz4: every part
#                                                                 # compressed; default lz4-whole, as the job)
#   BIN=path/to/event-trigger scripts/bench-checkpoints.sh ...    # a binary built already (for
#                                                                 # RocksDB: --features rocksdb)
#   REPEAT=3 scripts/bench-checkpoints.sh ...                     # each backend's intervals run
#                                                                 # this many times, alternating;
#                                                                 # the ratios to "off" of each
#                                                                 # round and their median
#
# Defaults: /tmp/event-trigger-wl-1m, 2,000,000 events over 1,000,000 users (from
# ../shared/bench/gen_events.py). The filter passes nothing, so the figures are the
# engine's (look-ups from a file:// snapshot, state, checkpoints), not the webhooks'.
# writer_cpu_s: the CPU seconds of the threads writing checkpoint parts (each part's
# `cpu_ms` in the log); steadier than events/s, which the machine's noise moves by
# 10-20% between identical runs.
set -euo pipefail
cd "$(dirname "$0")/.."
WL=${1:-/tmp/event-trigger-wl-1m}
EVENTS=${2:-2000000}
USERS=${3:-1000000}
GEN=../shared/bench/gen_events.py

if [ ! -s "$WL/events.jsonl" ]; then
  python3 "$GEN" "$WL" --events "$EVENTS" --users "$USERS"
fi
EVENTS=$(wc -l < "$WL/events.jsonl")
BACKENDS=${BACKENDS:-hashmap}
FULL_EVERY=${FULL_EVERY:-30}
COMPRESSION=${COMPRESSION:-lz4-whole}
FEATURES=""
if [[ " $BACKENDS " == *" rocksdb "* ]]; then
  # shellcheck source=scripts/rocksdb.sh
  source scripts/rocksdb.sh
  FEATURES=$EVENT_TRIGGER_FEATURES
fi
if [ -z "${BIN:-}" ]; then
  # shellcheck disable=SC2086
  cargo build --release --quiet $FEATURES
  BIN=target/release/event-trigger
fi
# shellcheck source=scripts/broker.sh
source scripts/broker.sh start
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"; scripts/broker.sh stop' EXIT
TOPIC=ckbench-$$
"$BIN" produce --bootstrap-servers "$EVENT_TRIGGER_TEST_BROKER" --topic "$TOPIC" "$WL/events.jsonl" >/dev/null 2>&1
echo 'false' > "$TMP/filter.rhai"

config() { # interval group dir backend
  cat > "$TMP/$2.yml" <<YML
source: { type: kafka }
kafka: { bootstrap-servers: "$EVENT_TRIGGER_TEST_BROKER", topic: $TOPIC, consumer-group-id: $2, start-from: earliest }
profile-api: { base-url: "file://$WL/profiles.jsonl" }
filter: { script-path: "$TMP/filter.rhai" }
actions: { debug: { enabled: true } }
engine: { checkpoint-interval-ms: $1, checkpoint-dir: "$3", state-backend: $4, state-dir: "$TMP/state-$2", checkpoint-full-every: $FULL_EVERY, checkpoint-compression: $COMPRESSION }
YML
  echo "$TMP/$2.yml"
}

run() { # config -> "wall user sys rss" and the log in $TMP/err
  RUST_LOG=info /usr/bin/time -f '%e %U %S %M' -o "$TMP/time" "$BIN" run --bounded -w 2 --config "$1" \
    >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err" >&2; exit 1; }
  cat "$TMP/time"
}

printf '%-8s %-9s %10s %10s %10s %12s %14s %12s %12s %12s %12s\n' backend interval events/s cpu_s/1M rss_MiB checkpoints last_ck_users last_ck_MiB part_ms avg_ck_MiB writer_cpu_s
INTERVALS=${INTERVALS:-0 60000 1000}
REPEAT=${REPEAT:-1}
last_interval=${INTERVALS##* }
declare -A EVS # events/s by "backend interval round"
for backend in $BACKENDS; do
for round in $(seq "$REPEAT"); do
for interval in $INTERVALS; do
  # A round of its own: a fresh consumer group and directory (the round before's goes,
  # a checkpoint of the 6M-event workload being ~1 GB).
  rm -rf "$TMP/ck-$backend-$interval"*
  dir=$TMP/ck-$backend-$interval-$round
  cfg=$(config $interval "g$backend$interval-$round" "$dir" "$backend")
  read -r wall user sys rss <<<"$(run "$cfg")"
  el=$(sed -n 's/.* elapsed_s=\([0-9.]*\).*/\1/p' "$TMP/out")
  n=$(grep -c 'checkpoint complete' "$TMP/err" || true)
  last=$(grep 'checkpoint complete' "$TMP/err" | tail -1 || true)
  users=$(sed -n 's/.*users[^0-9]*\([0-9]*\).*/\1/p' <<<"$last")
  bytes=$(sed -n 's/.*bytes[^0-9]*\([0-9]*\).*/\1/p' <<<"$last")
  # The final checkpoint's part writes (one per worker, -w 2): the longer, in ms, from
  # the snapshot's start to the part on disk.
  part_ms=$(grep 'checkpoint part written' "$TMP/err" | tail -2 \
    | sed -n 's/.* ms[^0-9]*\([0-9]*\).*/\1/p' | sort -n | tail -1 || true)
  # Bytes written per checkpoint, on average (with deltas, what changed).
  avg=$({ grep 'checkpoint complete' "$TMP/err" || true; } | sed -n 's/.*bytes[^0-9]*\([0-9]*\).*/\1/p' \
    | awk '{ s += $1; n++ } END { if (n) printf "%.1f", s / n / 1048576; else print 0 }')
  # The part writers' CPU seconds, beside the workers': on two cores, what the workers lose.
  writer_cpu=$({ grep 'checkpoint part written' "$TMP/err" || true; } | sed -n 's/.* cpu_ms[^0-9]*\([0-9]*\).*/\1/p' \
    | awk '{ s += $1 } END { printf "%.2f", s / 1000 }')
  awk -v b="$backend" -v i=$interval -v n="$EVENTS" -v el="$el" -v u="$user" -v s="$sys" -v rss="$rss" -v c="$n" \
      -v users="${users:-0}" -v bytes="${bytes:-0}" -v pms="${part_ms:-0}" -v avg="$avg" \
    -v wcpu="$writer_cpu" \
    'BEGIN { printf "%-8s %-9s %10.0f %10.2f %10.0f %12d %14d %12.1f %12d %12s %12.2f\n", b, i, n/el, (u+s)/(n/1e6), rss/1024, c, users, bytes/1048576, pms, avg, wcpu }'
  EVS[$backend $interval $round]=$(awk -v n="$EVENTS" -v el="$el" 'BEGIN { printf "%.0f", n/el }')
  if [ "$interval" = 1000 ]; then
    echo "part writes at 1 s (ms: snapshot to disk, cpu_ms: the writer's CPU; the last ones are the final checkpoint's):"
    grep 'checkpoint part written' "$TMP/err" | sed -n 's/.* worker=\([0-9]*\) users=\([0-9]*\) records=\([0-9]*\) bytes=\([0-9]*\) ms=\([0-9]*\) cpu_ms=\([0-9]*\) delta=\([a-z]*\).*/  w\1 users=\2 records=\3 bytes=\4 ms=\5 cpu_ms=\6 delta=\7/p' | tail -6
  fi
  if [ "$interval" = "$last_interval" ] && [ "$interval" != 0 ] && [ "$round" = "$REPEAT" ]; then
    # Restart on the same group and directory: restores every user, reads nothing new.
    # A copy of the directory is restored again below (a restart writes a checkpoint).
    rm -rf "$dir.copy" && cp -a "$dir" "$dir.copy"
    read -r wall user sys rss <<<"$(run "$cfg")"
    echo "$backend restart: $(grep '^summary:' "$TMP/out" | grep -o 'restored=[0-9]*') in ${wall}s wall, peak RSS $((rss / 1024)) MiB"
    # The restore itself: from the state operator's start to the last user restored, on
    # the slower worker (the wall time above also has the start-up, the consumer's group
    # join and the final checkpoint).
    restore_ms() { grep 'checkpoint restored' "$TMP/err" | sed -n 's/.* ms[^0-9]*\([0-9]*\).*/\1/p' | sort -n | tail -1 || true; }
    echo "$backend restore: $(restore_ms) ms (slower worker; the file:// profile snapshot loads meanwhile)"
    # The same checkpoint restored with an empty profile snapshot: the restore alone,
    # not sharing the 2 cores with loading the benchmark's profile file (GBs of JSON; a
    # restart that reads nothing new looks nobody up).
    : > "$TMP/no-profiles.jsonl"
    sed -e "s#$WL/profiles.jsonl#$TMP/no-profiles.jsonl#" -e "s#checkpoint-dir: \"$dir\"#checkpoint-dir: \"$dir.copy\"#" "$cfg" > "$cfg.alone.yml"
    run "$cfg.alone.yml" > /dev/null
    echo "$backend restore alone: $(grep '^summary:' "$TMP/out" | grep -o 'restored=[0-9]*') in $(restore_ms) ms (slower worker)"
  fi
done
done
done

# Each round's events/s at each interval over its run without checkpoints, and the median
# (the machine's noise moves a single run by 10-20%).
if [[ " $INTERVALS " == *" 0 "* ]]; then
  for backend in $BACKENDS; do
    for interval in $INTERVALS; do
      [ "$interval" = 0 ] && continue
      ratios=$(for round in $(seq "$REPEAT"); do
        awk -v a="${EVS[$backend $interval $round]}" -v b="${EVS[$backend 0 $round]}" 'BEGIN { printf "%.1f\n", 100 * a / b }'
      done)
      median=$(sort -n <<<"$ratios" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
      echo "$backend $interval ms / off, each round: $(tr '\n' ' ' <<<"$ratios")(%); median $median%"
    done
  done
fi
