// node-postgres through pgtenant: named statements and parameterized queries
// on two tenants that share servers.
const assert = require('assert');
const { Client } = require('pg');

const { PGT_PORT, PGT_DB, PGT_PASSWORD } = process.env;
const connect = async (tenant) => {
  const client = new Client({
    host: '127.0.0.1', port: Number(PGT_PORT), database: PGT_DB,
    user: `app.${tenant}`, password: PGT_PASSWORD,
  });
  await client.connect();
  return client;
};

(async () => {
  const acme = await connect('acme');
  const umbrella = await connect('umbrella');
  for (let i = 0; i < 20; i++) {
    // Both clients use the name "q" for different SQL.
    let r = await acme.query({ name: 'q', text: 'SELECT name FROM organizations WHERE tenant_id = $1', values: ['acme'] });
    assert.strictEqual(r.rows[0].name, 'Acme Inc.');
    r = await umbrella.query({ name: 'q', text: 'SELECT count(*)::int AS n FROM products WHERE price > $1', values: [15] });
    assert.strictEqual(r.rows[0].n, 1);
  }
  const r = await acme.query('SELECT $1::int + 1 AS v, current_setting($2) AS t', [41, 'app.current_tenant']);
  assert.deepStrictEqual(r.rows[0], { v: 42, t: 'acme' });
  await acme.end();
  await umbrella.end();
  console.log('node-postgres ok');
})().catch((e) => { console.error(e); process.exit(1); });
