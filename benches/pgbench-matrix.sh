#!/usr/bin/env bash
# pgbench through pgtenant, through PgBouncer and straight to PostgreSQL, on the
# same PostgreSQL, interleaved, with the team's baseline scripts (shared/bench,
# beside this repository). Needs: apt-get install -y pgbouncer time.
#   benches/pgbench-matrix.sh            # 16 clients, simple + extended, 3 x 10 s
#   CLIENTS="1 16 64" REPS=5 benches/pgbench-matrix.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
source "$BENCH/env.sh"
PROXY_DIR=$ANCHORS/pgtenant
PROXY_PORT=${PROXY_PORT:-7440}

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
[ -e "$PGDATA/PG_VERSION" ] || "$BENCH/pg-setup.sh"
[ -e "$PGDATA/postmaster.pid" ] || "$BENCH/pg-start.sh"
"$BENCH/pgbouncer-start.sh"

mkdir -p "$PROXY_DIR"
secret=$(echo "$BENCH_PASS" | "$ROOT/target/release/pgtenant" scram-secret)
cat > "$PROXY_DIR/proxy.yaml" <<YAML
listen: 127.0.0.1:$PROXY_PORT
clusters:
  bench: { host: 127.0.0.1, port: $PG_PORT, database: $BENCH_DB, user: $BENCH_USER, password: "$BENCH_PASS", max_server_connections: 50 }
tiers:
  bench: { pool_size: 20, queue_timeout: 60s, max_client_connections: 5000 }
tenants:
  bench:
    tier: bench
    cluster: bench
    users:
      $BENCH_USER: { password: "$secret" }
YAML
RUST_LOG=warn "$ROOT/target/release/pgtenant" run -c "$PROXY_DIR/proxy.yaml" > "$PROXY_DIR/log" 2>&1 &
echo $! > "$PROXY_DIR/pid"
trap 'kill "$(cat "$PROXY_DIR/pid")" 2>/dev/null; "$BENCH/pgbouncer-stop.sh"' EXIT
sleep 1

OUT=${OUT:-$ANCHORS/results/pgtenant-$(date +%Y%m%d-%H%M%S)}
OUT=$OUT TARGETS="direct:$PG_PORT pgbouncer:$PGB_PORT:$PGB_DIR/pgbouncer.pid pgtenant:$PROXY_PORT:$PROXY_DIR/pid" \
  MODES=${MODES:-simple extended} CLIENTS=${CLIENTS:-16} REPS=${REPS:-3} DURATION=${DURATION:-10} \
  FOREIGN_IGNORE="postgres pgbench pgbouncer pgtenant" "$BENCH/bench-matrix.sh"
python3 "$BENCH/summarize.py" "$OUT/runs.csv" --compact
