#!/usr/bin/env bash
# Context switches and CPU per transaction of one running pooler during a
# pgbench -S run, from /proc/<pid>/task/*/status and /proc/<pid>/stat.
# usage: ctx-switches.sh PID PORT [CLIENTS] [SECONDS] [MODE]
#   e.g. with benches/pgbench-matrix.sh's poolers still up, or started alike:
#   benches/e2e/ctx-switches.sh "$(cat /tmp/pgtenant-bench/pgtenant/pid)" 7440 16 6
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); source "$HERE/env.sh"
PID=$1 PORT=$2 C=${3:-16} T=${4:-6} MODE=${5:-simple}
# voluntary, involuntary switches summed over threads; utime, stime in ticks
counts() {
  local v=0 n=0 a b
  for t in /proc/"$PID"/task/*; do
    read -r a b < <(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' "$t/status")
    v=$((v + a)); n=$((n + b))
  done
  echo "$v $n $(awk '{print $14, $15}' /proc/"$PID"/stat)"
}
read -r v0 n0 u0 s0 < <(counts)
out=$("$PGBENCH" -h 127.0.0.1 -p "$PORT" -n -S -M "$MODE" -c "$C" -j 2 -T "$T" 2>&1)
read -r v1 n1 u1 s1 < <(counts)
tx=$(echo "$out" | awk '/actually processed/{split($NF, a, "/"); print a[1]}')
tps=$(echo "$out" | awk '/^tps/{print $3}')
# User and system time are split by the kernel's tick sampling: read them
# over runs of several seconds.
awk -v tx="$tx" -v tps="$tps" -v dv=$((v1 - v0)) -v dn=$((n1 - n0)) -v du=$((u1 - u0)) \
  -v ds=$((s1 - s0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {
    us = 1e6 / hz / tx
    printf "tps %.0f, per transaction: %.3f voluntary, %.3f involuntary context switches, %.1f us CPU (%.1f user, %.1f system)\n",
      tps, dv / tx, dn / tx, (du + ds) * us, du * us, ds * us }'
