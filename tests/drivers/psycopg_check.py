"""psycopg 3 through pgtenant: server-side prepared statements, pipeline mode,
COPY, a transaction and cancel, on two tenants that share servers."""
import os
import sys
import threading
import time

import psycopg

PORT, DB, PASSWORD = os.environ["PGT_PORT"], os.environ["PGT_DB"], os.environ["PGT_PASSWORD"]


def connect(tenant, **extra):
    return psycopg.connect(host="127.0.0.1", port=PORT, dbname=DB, user=f"app.{tenant}",
                           password=PASSWORD, autocommit=True, **extra)


acme, umbrella = connect("acme"), connect("umbrella")
for _ in range(20):
    row = acme.execute("SELECT name FROM organizations WHERE tenant_id = %s", ("acme",), prepare=True).fetchone()
    assert row[0] == "Acme Inc.", row
    row = umbrella.execute("SELECT count(*) FROM products WHERE price > %s", (15,), prepare=True).fetchone()
    assert row[0] == 1, row

with acme.pipeline():
    first = acme.execute("SELECT %s::int + 1", (41,), prepare=True)
    second = acme.execute("SELECT current_setting('app.current_tenant')")
assert first.fetchone()[0] == 42
assert second.fetchone()[0] == "acme"

with acme.transaction():
    acme.execute("INSERT INTO products (name, price) VALUES (%s, %s)", ("psycopg widget", 3))
    assert acme.execute("SELECT count(*) FROM products").fetchone()[0] == 3
acme.execute("DELETE FROM products WHERE name = 'psycopg widget'")

with acme.cursor() as cur:
    with cur.copy("COPY (SELECT name FROM products ORDER BY name) TO STDOUT") as copy:
        names = [row[0] for row in copy.rows()]
assert names == ["acme gadget", "acme widget"], names


def cancel_soon():
    time.sleep(0.5)
    umbrella.cancel()


threading.Thread(target=cancel_soon).start()
started = time.monotonic()
try:
    umbrella.execute("SELECT pg_sleep(10)")
    sys.exit("pg_sleep was not cancelled")
except psycopg.errors.QueryCanceled:
    pass
assert time.monotonic() - started < 5
assert umbrella.execute("SELECT current_setting('app.current_tenant')").fetchone()[0] == "umbrella"

# Protocol 3.2 (libpq 18, bundled with psycopg-binary): spoken natively, with the
# 32-byte cancel key; both of libpq's cancel paths must find the query.
assert psycopg.pq.version() >= 180000, psycopg.pq.version()
modern = connect("acme", max_protocol_version="3.2")
assert modern.info.full_protocol_version == 30002, modern.info.full_protocol_version
for cancel in (modern.cancel, modern.cancel_safe):
    threading.Thread(target=lambda: (time.sleep(0.5), cancel())).start()
    started = time.monotonic()
    try:
        modern.execute("SELECT pg_sleep(10)")
        sys.exit(f"pg_sleep was not cancelled by {cancel.__name__} over protocol 3.2")
    except psycopg.errors.QueryCanceled:
        pass
    assert time.monotonic() - started < 5
assert modern.execute("SELECT current_setting('app.current_tenant')").fetchone()[0] == "acme"
print("psycopg ok")
