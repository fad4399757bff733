#!/usr/bin/env bash
# Sets up the `rocksdb` cargo feature (the RocksDB state backend) to link Debian's
# librocksdb-dev instead of compiling RocksDB: installs librocksdb-dev and libclang-dev
# (bindgen needs it) when missing, and exports
#   ROCKSDB_LIB_DIR        where librocksdb.so is (librocksdb-sys then builds no C++)
#   EVENT_TRIGGER_FEATURES "--features rocksdb", for cargo
#
#   source scripts/rocksdb.sh && cargo test $EVENT_TRIGGER_FEATURES
#
# Measured on a 2-core machine: apt-get install ~9 s and ~15 s for the bindings, where
# the bundled build (no ROCKSDB_LIB_DIR) compiles RocksDB 8.1 from source in ~20 min.
set -euo pipefail

ROCKSDB_PACKAGES="librocksdb-dev libclang-dev"
rocksdb_lib_dir=$(dirname "$(ls /usr/lib/*/librocksdb.so /usr/lib/librocksdb.so 2>/dev/null | head -1)" 2>/dev/null || true)

if [ -z "$rocksdb_lib_dir" ] || [ "$rocksdb_lib_dir" = "." ] || ! ls /usr/lib/*/libclang*.so /usr/lib/llvm-*/lib/libclang*.so >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
    echo "rocksdb: installing $ROCKSDB_PACKAGES" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $ROCKSDB_PACKAGES >/dev/null \
      || { $sudo apt-get update -q >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $ROCKSDB_PACKAGES >/dev/null; }
    rocksdb_lib_dir=$(dirname "$(ls /usr/lib/*/librocksdb.so | head -1)")
  else
    echo "rocksdb: cannot install $ROCKSDB_PACKAGES here (no apt-get or no root);" \
         "the RocksDB backend and its tests are left out of this build" >&2
    export EVENT_TRIGGER_FEATURES=""
    return 0 2>/dev/null || exit 0
  fi
fi

export ROCKSDB_LIB_DIR="$rocksdb_lib_dir"
export EVENT_TRIGGER_FEATURES="--features rocksdb"
echo "rocksdb: linking the system library in $ROCKSDB_LIB_DIR" >&2
