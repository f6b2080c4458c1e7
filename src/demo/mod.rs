//! `pgtenant demo`: a throwaway PostgreSQL with a small multi-tenant SaaS schema
//! (organizations, products, offers under RLS on `app.current_tenant`; one
//! enterprise tenant in its own schema behind its own role), and the proxy in
//! front of it. The test suite starts the same database through [`seed`].

pub mod postgres;

use std::sync::Arc;

use anyhow::Context;

use crate::app::Proxy;
use crate::config::{self, Config};
pub use postgres::TempPostgres;

pub const DATABASE: &str = "saas";
/// The role the proxy logs in as: not a superuser, no BYPASSRLS, owns no table.
pub const BACKEND_USER: &str = "pgtenant_app";
/// The shared application user; clients log in as `app.<tenant>`.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "demo-password";

/// Tenants of the demo: (id, tier, own schema and role).
pub const TENANTS: &[(&str, &str, Option<&str>)] = &[
    ("acme", "free", None),
    ("umbrella", "free", None),
    ("initech", "growth", None),
    ("globex", "enterprise", Some("globex")),
];

/// Creates roles, schema, RLS policies and rows. `backend_password` becomes the
/// SCRAM password of [`BACKEND_USER`].
pub fn seed(pg: &TempPostgres, backend_password: &str) -> anyhow::Result<()> {
    let lit = postgres_protocol::escape::escape_literal(backend_password);
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE {BACKEND_USER} LOGIN NOINHERIT PASSWORD {lit}; \
             CREATE ROLE saas_owner NOLOGIN; \
             CREATE DATABASE {DATABASE} OWNER saas_owner"
        ),
    )?;
    pg.psql(DATABASE, &schema_sql())?;
    Ok(())
}

/// The demo's tables, policies, tenant schema and rows, run in [`DATABASE`]
/// (also shipped as `docker/initdb/demo-schema.psql` for the compose demo).
pub fn schema_sql() -> String {
    let mut sql = String::from(
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         SET ROLE saas_owner;
         CREATE TABLE organizations (tenant_id text PRIMARY KEY, name text NOT NULL);
         CREATE TABLE products (id serial PRIMARY KEY, tenant_id text NOT NULL DEFAULT current_setting('app.current_tenant'),
                                name text NOT NULL, price numeric(10,2) NOT NULL);
         CREATE TABLE offers (id serial PRIMARY KEY, tenant_id text NOT NULL DEFAULT current_setting('app.current_tenant'),
                              product_id int NOT NULL REFERENCES products, discount_pct int NOT NULL);
         RESET ROLE;
         DO $$ DECLARE t text; BEGIN
           FOREACH t IN ARRAY ARRAY['organizations', 'products', 'offers'] LOOP
             EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
             EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_setting(''app.current_tenant'', true)) \
                             WITH CHECK (tenant_id = current_setting(''app.current_tenant'', true))', t);
             EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO PUBLIC', t);
           END LOOP; END $$;
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO PUBLIC;
        ",
    );
    for (i, (id, tier, schema)) in TENANTS.iter().enumerate() {
        let name = format!("{}{} Inc.", id[..1].to_uppercase(), &id[1..]);
        sql.push_str(&format!(
            "INSERT INTO organizations VALUES ('{id}', '{name}');
             INSERT INTO products (tenant_id, name, price) VALUES ('{id}', '{id} widget', {p}), ('{id}', '{id} gadget', {q});
             INSERT INTO offers (tenant_id, product_id, discount_pct)
               SELECT '{id}', id, 10 FROM products WHERE tenant_id = '{id}';
            ",
            p = 10 + i,
            q = 20 + i
        ));
        if let Some(schema) = schema {
            // Its own schema with a different layout, reachable only through its role.
            sql.push_str(&format!(
                "CREATE ROLE tenant_{id} NOLOGIN;
                 GRANT tenant_{id} TO {BACKEND_USER};
                 CREATE SCHEMA {schema} AUTHORIZATION saas_owner;
                 REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;
                 GRANT USAGE ON SCHEMA {schema} TO tenant_{id};
                 CREATE TABLE {schema}.products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL);
                 ALTER TABLE {schema}.products OWNER TO saas_owner;
                 GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.products TO tenant_{id};
                 INSERT INTO {schema}.products VALUES ('GX-1', 'enterprise plan', 999), ('GX-2', 'support', 99);
                "
            ));
        }
        let _ = tier;
    }
    sql
}

/// The admin console user of the demo (`psql -d pgtenant`).
pub const ADMIN_USER: &str = "ops";
pub const ADMIN_PASSWORD: &str = "demo-admin";

/// The demo's `proxy.yaml`. The backend password comes from `${PGTENANT_BACKEND_PASSWORD}`.
pub fn config_yaml(listen: &str, metrics_listen: &str, pg_port: u16) -> String {
    let admin_secret = postgres_protocol::password::scram_sha_256(ADMIN_PASSWORD.as_bytes());
    let app_secret = postgres_protocol::password::scram_sha_256(APP_PASSWORD.as_bytes());
    let mut tenants = String::new();
    for (id, tier, schema) in TENANTS {
        tenants.push_str(&format!("  {id}:\n    tier: {tier}\n    cluster: main\n"));
        if let Some(schema) = schema {
            tenants.push_str(&format!(
                "    schema: {schema}\n    role: tenant_{id}\n    pool_size: 4\n"
            ));
        }
    }
    format!(
        r#"# Generated by `pgtenant demo`.
listen: "{listen}"
metrics: {{ listen: "{metrics_listen}" }}
admin:
  users:
    {ADMIN_USER}: {{ password: "{admin_secret}", role: admin }}
tenant_setting: app.current_tenant
resolution:
  username_separator: "."
  shared_users:
    {APP_USER}: {{ password: "{app_secret}" }}
clusters:
  main:
    host: 127.0.0.1
    port: {pg_port}
    database: {DATABASE}
    user: {BACKEND_USER}
    password: ${{PGTENANT_BACKEND_PASSWORD}}
    max_server_connections: 20
tiers:
  free:       {{ pool_size: 2, max_tenant_share: 1, statement_timeout: 5s, queue_timeout: 5s, max_client_connections: 20 }}
  growth:     {{ pool_size: 4, max_tenant_share: 2, statement_timeout: 30s, max_client_connections: 100, settings: {{ work_mem: 8MB }} }}
  enterprise: {{ pool_size: 4, statement_timeout: 60s, max_client_connections: 500 }}
tenants:
{tenants}"#
    )
}

/// Runs the demo until Ctrl-C: database, config, proxy, and one printed line
/// per tenant: `tenant=<id> tier=<tier> url=<DATABASE_URL>`, then the
/// `/metrics` URL and the admin console's URL.
pub async fn run(listen: &str, metrics_listen: &str) -> anyhow::Result<()> {
    let pg = TempPostgres::start(&[]).context("starting the demo PostgreSQL")?;
    let backend_password = format!("{:032x}", rand::random::<u128>());
    seed(&pg, &backend_password).context("creating the demo schema")?;
    // The throwaway password is written into the file (readable by its owner
    // only) so that SIGHUP and RELOAD can re-read it without the environment.
    let yaml = config_yaml(listen, metrics_listen, pg.port())
        .replace("${PGTENANT_BACKEND_PASSWORD}", &backend_password);
    let path = pg.dir().join("proxy.yaml");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        std::io::Write::write_all(&mut file, yaml.as_bytes())?;
    }
    let config: Config =
        config::load(&path).map_err(|e| anyhow::anyhow!("demo config is invalid:\n{e}"))?;
    let proxy = Proxy::bind(config, Some(path.clone())).await?;
    let addr = proxy.local_addr();
    println!(
        "pgtenant demo: PostgreSQL on 127.0.0.1:{}, proxy on {addr}, config {}",
        pg.port(),
        path.display()
    );
    for (id, tier, _) in TENANTS {
        println!(
            "tenant={id} tier={tier} url=postgres://{APP_USER}.{id}:{APP_PASSWORD}@{addr}/{DATABASE}"
        );
    }
    println!(
        "try: psql \"postgres://{APP_USER}.acme:{APP_PASSWORD}@{addr}/{DATABASE}\" -c \"SELECT current_setting('app.current_tenant') AS tenant, name FROM products\""
    );
    if let Some(metrics) = proxy.metrics_addr() {
        println!("metrics=http://{metrics}/metrics health=http://{metrics}/readyz");
    }
    println!(
        "admin=postgres://{ADMIN_USER}:{ADMIN_PASSWORD}@{addr}/pgtenant (try: psql \"postgres://{ADMIN_USER}:{ADMIN_PASSWORD}@{addr}/pgtenant\" -c \"SHOW POOLS\")"
    );
    println!("Ctrl-C stops the proxy and removes the database.");
    let pg = Arc::new(pg);
    proxy.run(crate::app::shutdown_signal()).await?;
    drop(pg);
    Ok(())
}
