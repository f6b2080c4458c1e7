#!/usr/bin/env bash
# pgtenant against PgBouncer on one throwaway PostgreSQL: an interleaved pgbench
# matrix (TPS, latency, each pooler's own CPU per transaction from /proc), then
# resident memory per idle client, printed as tables of medians and ratios.
# Run as root (PostgreSQL runs as the `postgres` user). Needs:
#   apt-get install -y postgresql-15 pgbouncer valgrind
# Examples:
#   benches/pgbench-matrix.sh                               # 16 clients, simple + extended, 3 x 10 s
#   CLIENTS="16 64 256" MODES="simple extended prepared" REPS=3 benches/pgbench-matrix.sh
#   MEMORY=5000 benches/pgbench-matrix.sh                   # also RSS per idle client at 5,000
#   INSTR=1 benches/pgbench-matrix.sh                       # also callgrind instructions per transaction
#   HOLD=10000 benches/pgbench-matrix.sh                    # also: 16-client pgbench while 10,000 idle clients are held
#   TENANTS=100 CLIENTS=100 benches/pgbench-matrix.sh        # clients spread over 100 tenants of one tier
#     (one pgbench process per tenant; PgBouncer and direct run as many processes as one user)
#   SERVER_SOCKET=unix benches/pgbench-matrix.sh            # both poolers reach PostgreSQL over its
#     Unix-domain socket instead of TCP 127.0.0.1 (clients still use TCP); direct stays on TCP
#   BASELINE_BIN=/tmp/pgtenant-old benches/pgbench-matrix.sh  # also another pgtenant build (say,
#     of the previous commit), as target pgtenant-base on port PROXY_PORT+1, same config
#   BASELINE_BIN=target/release/pgtenant BASE_WORKERS=1 benches/pgbench-matrix.sh  # this build
#     twice: the baseline with another `workers` setting (WORKERS sets the first's; 0 = one per core)
# Settings (ports, data directory under /tmp/pgtenant-bench) are in benches/e2e/env.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/benches/e2e
source "$BENCH/env.sh"
PROXY_DIR=$ANCHORS/pgtenant
PROXY_PORT=${PROXY_PORT:-7440}
WORKERS=${WORKERS:-0}
# Where the poolers reach PostgreSQL: TCP, or its socket directory.
case ${SERVER_SOCKET:-tcp} in
  tcp) export SERVER_HOST=127.0.0.1 ;;
  unix) export SERVER_HOST=$PGDATA ;;
  *) echo "SERVER_SOCKET is tcp or unix" >&2; exit 2 ;;
esac
BIN=$ROOT/target/release/pgtenant

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
[ -e "$PGDATA/PG_VERSION" ] || "$BENCH/pg-setup.sh"
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status > /dev/null 2>&1 || "$BENCH/pg-start.sh"

mkdir -p "$PROXY_DIR"
secret=$(echo "$BENCH_PASS" | "$BIN" scram-secret)
cat > "$PROXY_DIR/proxy.yaml" <<YAML
listen: 127.0.0.1:$PROXY_PORT
workers: $WORKERS
limits: { max_client_connections: 20000 }
clusters:
  bench: { host: $SERVER_HOST, port: $PG_PORT, database: $BENCH_DB, user: $BENCH_USER, password: "$BENCH_PASS", max_server_connections: 50 }
tiers:
  bench: { pool_size: 20, queue_timeout: 60s, max_client_connections: 20000 }
tenants:
  bench:
    tier: bench
    cluster: bench
    users:
      $BENCH_USER: { password: "$secret" }
YAML
TENANTS=${TENANTS:-}
TENANT_USER=tenant%03d
for i in $(seq 1 "${TENANTS:-0}"); do
  user=$(printf "$TENANT_USER" "$i")
  echo "  $user: { tier: bench, cluster: bench, users: { $user: { password: \"$secret\" } } }"
done >> "$PROXY_DIR/proxy.yaml"

BASE_PORT=$((PROXY_PORT + 1))
if [ -n "${BASELINE_BIN:-}" ]; then
  sed -e "s/^listen: .*/listen: 127.0.0.1:$BASE_PORT/" -e "s/^workers: .*/workers: ${BASE_WORKERS:-$WORKERS}/" \
    "$PROXY_DIR/proxy.yaml" > "$PROXY_DIR/base.yaml"
fi

start_one() { # binary config port pidfile log
  # A session of its own, as PgBouncer's daemon has: with the kernel's
  # autogroup scheduling on, a process in this script's session would share
  # one CPU share with pgbench.
  RUST_LOG=warn setsid "$1" run -c "$2" > "$5" 2>&1 &
  echo $! > "$4"
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p "$3" && return; sleep 0.1; done
  echo "pgtenant ($1) did not start: $(cat "$5")" >&2; exit 1
}
start_pgtenant() {
  ulimit -n 20000
  start_one "$BIN" "$PROXY_DIR/proxy.yaml" "$PROXY_PORT" "$PROXY_DIR/pid" "$PROXY_DIR/log"
  if [ -n "${BASELINE_BIN:-}" ]; then
    start_one "$BASELINE_BIN" "$PROXY_DIR/base.yaml" "$BASE_PORT" "$PROXY_DIR/base.pid" "$PROXY_DIR/base.log"
  fi
}
stop_all() {
  [ -s "$PROXY_DIR/pid" ] && kill "$(cat "$PROXY_DIR/pid")" 2>/dev/null || true
  [ -s "$PROXY_DIR/base.pid" ] && kill "$(cat "$PROXY_DIR/base.pid")" 2>/dev/null || true
  "$BENCH/pgbouncer-stop.sh" > /dev/null 2>&1 || true
  sleep 1
}
trap stop_all EXIT
stop_all
MAX_CLIENT_CONN=10000 "$BENCH/pgbouncer-start.sh"
start_pgtenant

OUT=${OUT:-$ANCHORS/results/pgtenant-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
TARGETS="direct:$PG_PORT pgbouncer:$PGB_PORT:$PGB_DIR/pgbouncer.pid pgtenant:$PROXY_PORT:$PROXY_DIR/pid${TENANTS:+:$TENANT_USER}"
[ -n "${BASELINE_BIN:-}" ] && TARGETS+=" pgtenant-base:$BASE_PORT:$PROXY_DIR/base.pid${TENANTS:+:$TENANT_USER}"
# Many processes take seconds to launch and TPS counts only while all run:
# longer runs with tenants, so that the common window stays several seconds.
[ -n "$TENANTS" ] && DURATION=${DURATION:-15}
OUT=$OUT TARGETS=$TARGETS \
  PROCS=${TENANTS:-1} MODES=${MODES:-simple extended} CLIENTS=${CLIENTS:-16} REPS=${REPS:-3} DURATION=${DURATION:-10} \
  FOREIGN_IGNORE="postgres pgbench pgbouncer pgtenant${BASELINE_BIN:+ $(basename "$BASELINE_BIN" | cut -c1-15)}" "$BENCH/bench-matrix.sh"
echo "## TPS, latency and pooler CPU per transaction (medians; ratios to PgBouncer)"
python3 "$BENCH/summarize.py" "$OUT/runs.csv" --compact | tee "$OUT/summary.md"

if [ -n "${MEMORY:-}" ]; then
  # Each pooler freshly started, then MEMORY idle clients held.
  stop_all; MAX_CLIENT_CONN=10000 "$BENCH/pgbouncer-start.sh"; start_pgtenant
  "$BENCH/mem-per-conn.sh" pgbouncer "$PGB_PORT" "$(cat "$PGB_DIR/pgbouncer.pid")" "$MEMORY" | tee "$OUT/mem.txt"
  "$BENCH/mem-per-conn.sh" pgtenant "$PROXY_PORT" "$(cat "$PROXY_DIR/pid")" "$MEMORY" | tee -a "$OUT/mem.txt"
  echo "## Resident memory per idle client at $MEMORY clients"
  awk -F, '/^mem,/{kib[$2]=$7; held[$2]=$4} END {
    printf "| pooler | clients held | KiB per idle client |\n|---|---|---|\n";
    for (p in kib) printf "| %s | %s | %s |\n", p, held[p], kib[p];
    if (kib["pgbouncer"] > 0) printf "pgtenant / PgBouncer: %.2fx\n", kib["pgtenant"] / kib["pgbouncer"] }' "$OUT/mem.txt"
fi

if [ -n "${INSTR:-}" ]; then
  stop_all
  if [ -n "$TENANTS" ]; then
    # One one-client process per tenant (PgBouncer: as many, as one user),
    # fewer transactions each: under callgrind every process waits its turn.
    echo "## User-space instructions per transaction (callgrind, $TENANTS one-client tenants)"
    export PROCS=$TENANTS SMALL=${SMALL:-20} BIG=${BIG:-120}
    PGT_USERS=$TENANT_USER
  else
    echo "## User-space instructions per transaction (callgrind, 4 clients)"
    PGT_USERS=$BENCH_USER
  fi
  USER_FMT=$PGT_USERS PIDFILE=$PROXY_DIR/vg.pid START_CMD="cd $PROXY_DIR && (RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file=\$CG_OUT $BIN run -c proxy.yaml > vg.log 2>&1 & echo \$! > $PROXY_DIR/vg.pid)" \
    "$BENCH/instr-per-tx.sh" pgtenant "$PROXY_PORT" | tee "$OUT/instr.txt"
  "$BENCH/pgbouncer-instr.sh" | tee -a "$OUT/instr.txt"
fi
echo "results in $OUT"

if [ -n "${HOLD:-}" ]; then
  # Each pooler freshly started holds HOLD logged-in idle clients while a
  # 16-client pgbench runs through it: held connections must not stop service.
  echo "## Served while $HOLD idle clients are held (pgbench -S -c 16, 10 s)"
  echo "| pooler | clients held | TPS while held | RSS MiB while held |"
  echo "|---|---|---|---|"
  stop_all; MAX_CLIENT_CONN=$((HOLD + 100)) "$BENCH/pgbouncer-start.sh" > /dev/null; start_pgtenant
  for t in "pgbouncer:$PGB_PORT:$PGB_DIR/pgbouncer.pid" "pgtenant:$PROXY_PORT:$PROXY_DIR/pid"; do
    IFS=: read -r label port pidfile <<< "$t"
    ready=$(mktemp -u)
    (ulimit -n 20000; exec python3 "$BENCH/hold_conns.py" --port "$port" -n "$HOLD" --hold 600 --ready-file "$ready") > /dev/null 2>&1 &
    holder=$!
    while [ ! -s "$ready" ] && kill -0 "$holder" 2>/dev/null; do sleep 0.5; done
    read -r _ held _ < "$ready" || held=0
    tps=$("$PGBENCH" -h 127.0.0.1 -p "$port" -U "$BENCH_USER" -n -S -c 16 -j 2 -T 10 "$BENCH_DB" 2>&1 | awk '/^tps = /{print $3}')
    rss=$(awk '/^VmRSS/{printf "%.0f", $2 / 1024}' "/proc/$(cat "$pidfile")/status")
    echo "| $label | $held | ${tps:-failed} | $rss |"
    kill -TERM "$holder"; wait "$holder" || true; rm -f "$ready"
  done | tee "$OUT/hold.md"
fi
