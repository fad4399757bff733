#!/usr/bin/env bash
# Every test, with the Kafka tests against a real Kafka-protocol broker: installs (once)
# and starts Tansu on 127.0.0.1, runs `cargo test`, stops the broker.
# (Plain `cargo test` runs the Kafka tests on librdkafka's in-process mock cluster.)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=broker.sh
source scripts/broker.sh
trap 'scripts/broker.sh stop' EXIT
cargo test "$@"
