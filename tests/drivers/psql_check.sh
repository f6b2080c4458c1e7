#!/bin/sh
# psql 18 through pgtenant, speaking protocol 3.2: simple queries, \bind
# (unnamed extended protocol), \parse / \bind_named / \close_prepared (named
# statements, the same name on two tenants), and a Ctrl-C cancel.
set -eu
conn() {
  echo "host=127.0.0.1 port=$PGT_PORT dbname=$PGT_DB user=app.$1 password=$PGT_PASSWORD max_protocol_version=3.2"
}
run() { tenant=$1; shift; "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 "$(conn "$tenant")" "$@"; }
expect() {
  if [ "$1" != "$2" ]; then
    printf 'expected:\n%s\ngot:\n%s\n' "$2" "$1"
    exit 1
  fi
}

got=$(run acme <<'SQL'
\conninfo
SELECT current_setting('app.current_tenant');
SELECT $1::int + 1 \bind 41 \g
SELECT name FROM products WHERE price > $1 ORDER BY name \parse cheap
\bind_named cheap 0 \g
\close_prepared cheap
SELECT count(*) FROM products \parse cheap
\bind_named cheap \g
SQL
)
expect "$(echo "$got" | grep -v '|' || true)" "acme
42
acme gadget
acme widget
2"
echo "$got" | grep -q '^Protocol Version|3.2$' || { echo "not protocol 3.2: $got"; exit 1; }

# Same statement name, different SQL, another tenant, sharing the same servers.
got=$(run umbrella <<'SQL'
SELECT count(*) FROM products WHERE price > $1 \parse cheap
\bind_named cheap 15 \g
SQL
)
expect "$got" "1"

# A closed statement is gone, with PostgreSQL's error; the session goes on.
got=$(run acme -v ON_ERROR_STOP=0 2>&1 <<'SQL'
SELECT 1 \parse gone
\close_prepared gone
\bind_named gone \g
SELECT 'still here';
SQL
)
expect "$got" 'ERROR:  prepared statement "gone" does not exist
still here'

# Ctrl-C: psql sends a CancelRequest with the 3.2-length key.
started=$(date +%s)
if timeout -s INT 1 "$PSQL" -X "$(conn acme)" -c 'SELECT pg_sleep(10)' 2>/tmp/psql_cancel.$$; then
  echo "pg_sleep was not cancelled"; exit 1
fi
grep -q 'canceling statement due to user request' /tmp/psql_cancel.$$ || { cat /tmp/psql_cancel.$$; exit 1; }
rm -f /tmp/psql_cancel.$$
[ $(( $(date +%s) - started )) -lt 5 ] || { echo "cancel took too long"; exit 1; }
echo "psql ok"
