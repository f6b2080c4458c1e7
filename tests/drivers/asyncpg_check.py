"""asyncpg through pgtenant: its statement cache (named statements),
executemany and a transaction, on two tenants that share servers."""
import asyncio
import os
from decimal import Decimal

import asyncpg

PORT, DB, PASSWORD = os.environ["PGT_PORT"], os.environ["PGT_DB"], os.environ["PGT_PASSWORD"]


async def connect(tenant):
    return await asyncpg.connect(host="127.0.0.1", port=int(PORT), database=DB,
                                 user=f"app.{tenant}", password=PASSWORD)


async def main():
    acme, umbrella = await connect("acme"), await connect("umbrella")
    for _ in range(20):
        assert await acme.fetchval("SELECT name FROM organizations WHERE tenant_id = $1", "acme") == "Acme Inc."
        assert await umbrella.fetchval("SELECT count(*) FROM products WHERE price > $1", Decimal(15)) == 1
        # The same SQL on both clients: the same statement cache entry name.
        assert await umbrella.fetchval("SELECT name FROM organizations WHERE tenant_id = $1", "umbrella") == "Umbrella Inc."
    async with acme.transaction():
        await acme.executemany("INSERT INTO products (name, price) VALUES ($1, $2)",
                               [("asyncpg 1", Decimal(1)), ("asyncpg 2", Decimal(2))])
        assert await acme.fetchval("SELECT count(*) FROM products") == 4
    assert await umbrella.fetchval("SELECT count(*) FROM products") == 2
    await acme.execute("DELETE FROM products WHERE name LIKE 'asyncpg %'")
    assert await acme.fetchval("SELECT count(*) FROM products") == 2
    await acme.close()
    await umbrella.close()
    print("asyncpg ok")


asyncio.run(main())
