#!/usr/bin/env bash
# Sets up the `kafka-tls` cargo feature (librdkafka built with OpenSSL, for Kafka over
# TLS): installs libssl-dev and pkg-config when missing, and appends the feature to
# EVENT_TRIGGER_FEATURES (after scripts/rocksdb.sh, which sets it).
#
#   source scripts/rocksdb.sh && source scripts/kafka-tls.sh && cargo test $EVENT_TRIGGER_FEATURES
set -euo pipefail

if ! pkg-config --exists openssl 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
    echo "kafka-tls: installing libssl-dev pkg-config" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libssl-dev pkg-config >/dev/null \
      || { $sudo apt-get update -q >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libssl-dev pkg-config >/dev/null; }
  fi
fi
if pkg-config --exists openssl 2>/dev/null; then
  features=${EVENT_TRIGGER_FEATURES:-}
  features=${features#--features }
  export EVENT_TRIGGER_FEATURES="--features ${features:+$features,}kafka-tls"
  echo "kafka-tls: building librdkafka with the system's OpenSSL" >&2
else
  echo "kafka-tls: no OpenSSL development files here; Kafka over TLS and its test are left out" >&2
fi
