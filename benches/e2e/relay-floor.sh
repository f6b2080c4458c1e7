#!/usr/bin/env bash
# User-space instructions per transaction of the least a proxy's event loop
# can do: a 1:1 byte relay (examples/relay_floor.rs) on a raw epoll loop and
# on tokio, counted as instr-per-tx.sh counts the poolers. The relays forward
# pgbench straight to the benchmark's PostgreSQL (set up and started here if
# it is not running).
# usage: relay-floor.sh [MODES]     (default "simple extended")
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); source "$HERE/env.sh"
ROOT=$(cd "$HERE/../.." && pwd)
PORT=${FLOOR_PORT:-7450}
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --example relay_floor
[ -e "$PGDATA/PG_VERSION" ] || "$HERE/pg-setup.sh"
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status > /dev/null 2>&1 || "$HERE/pg-start.sh"
BIN=$ROOT/target/release/examples/relay_floor
DIR=$ANCHORS/relay-floor; mkdir -p "$DIR"
for mode in epoll tokio tokio-ready; do
  PIDFILE=$DIR/vg.pid START_CMD="(valgrind --tool=callgrind --callgrind-out-file=\$CG_OUT $BIN $mode 127.0.0.1:$PORT 127.0.0.1:$PG_PORT > $DIR/vg.log 2>&1 & echo \$! > $DIR/vg.pid)" \
    "$HERE/instr-per-tx.sh" "relay-$mode" "$PORT" "${1:-simple extended}"
done
