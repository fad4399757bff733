#!/usr/bin/env bash
# Every test, with the Kafka tests against a real Kafka-protocol broker: installs (once)
# and starts Tansu on 127.0.0.1, sets up the `rocksdb` feature (Debian's librocksdb-dev)
# and the `kafka-tls` one (libssl-dev), runs `cargo test --features rocksdb,kafka-tls`,
# stops the broker.
# (Plain `cargo test` runs the Kafka tests on librdkafka's in-process mock cluster, and
# leaves out the RocksDB backend.)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=rocksdb.sh
source scripts/rocksdb.sh
# shellcheck source=kafka-tls.sh
source scripts/kafka-tls.sh
# shellcheck source=broker.sh
source scripts/broker.sh start
trap 'scripts/broker.sh stop' EXIT
# shellcheck disable=SC2086 # EVENT_TRIGGER_FEATURES is a list of arguments
cargo test $EVENT_TRIGGER_FEATURES "$@"
