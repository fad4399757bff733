#!/usr/bin/env bash
# Fuzzes the event decoder and the filters (native tree against the rhai interpreter) for
# a bounded time each, growing the corpus kept in fuzz/corpus. Needs the nightly toolchain
# and cargo-fuzz (installed here on first use).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     # default 60 s, decode and filter
#
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the script; replay it with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...` (from fuzz/..).
# Not part of every CI run: the sanitizer build of the crate and librdkafka takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
shift || true
TARGETS=${*:-decode filter}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked
for t in $TARGETS; do
  echo "== fuzz $t for ${SECONDS_EACH}s" >&2
  # -max_len: messages up to 64 KB; the size limit itself is a unit test.
  log=$(mktemp)
  status=0
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=4096 >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|SUMMARY|.*panicked)' "$log" || true
  if [ $status != 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz $t failed (exit $status); crash inputs, if any, in fuzz/artifacts/$t" >&2
    exit 1
  fi
  rm -f "$log"
done
