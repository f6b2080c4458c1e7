//! Real client programs through the proxy, several tenants on a small shared
//! pool: pgbench in every query mode (zero failed transactions), and psql 18,
//! psycopg 3, asyncpg, node-postgres and pgjdbc running the scripts in
//! tests/drivers/, which assert round-tripped values. `scripts/dev setup` installs those drivers.

mod common;

use common::*;

/// Tenants that share one tier whose pool has 4 servers.
fn shared_pool(db: &str) -> String {
    config(
        db,
        "\n  shared: { pool_size: 4, max_tenant_share: 3, queue_timeout: 20s }",
        &tenants("shared", "shared", "shared", "shared"),
    )
}

/// 32 clients over 3 tenants on `pool_size: 4`, in each of pgbench's modes
/// (`-M prepared` uses named statements that must survive moving between servers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_every_mode_over_three_tenants() {
    let db = pg().database("drivers_pgbench");
    pgbench_init(&db);
    let proxy = start(&shared_pool(&db)).await;
    for mode in ["simple", "extended", "prepared"] {
        let runs: Vec<_> = [("acme", "11"), ("umbrella", "11"), ("initech", "10")]
            .into_iter()
            .map(|(tenant, clients)| {
                let options = ["-n", "-S", "-c", clients, "-j", "2", "-T", "3", "-M", mode];
                pgbench_as(proxy.port, &db, tenant, &options).output()
            })
            .collect();
        for (run, tenant) in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .zip(["acme", "umbrella", "initech"])
        {
            assert_pgbench_clean(&format!("{mode} {tenant}"), &run.unwrap(), 100);
        }
    }
}

/// Where `scripts/dev setup` installs the non-Rust drivers.
fn drivers_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/drivers")
}

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/drivers")
        .join(name)
}

/// Runs a driver check against a fresh proxy; it must print `<what> ok`.
async fn run_check(
    what: &str,
    program: &std::path::Path,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
) {
    assert!(
        program.exists() || program.components().count() == 1,
        "{} is missing: run `scripts/dev setup` (it installs the driver matrix)",
        program.display()
    );
    let db = pg().database("drivers");
    let proxy = start(&shared_pool(&db)).await;
    let out = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .env("PGT_PORT", proxy.port.to_string())
        .env("PGT_DB", &db)
        .env("PGT_PASSWORD", APP_PASSWORD)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{what}: cannot run {}: {e}; run `scripts/dev setup`",
                program.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("{what} ok")),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3() {
    let python = drivers_dir().join("venv/bin/python");
    run_check(
        "psycopg",
        &python,
        &[script("psycopg_check.py").as_os_str()],
        &[],
    )
    .await;
}

/// sqlx: its connection pool and statement cache (every query is a named
/// prepared statement), binds, a transaction rolled back, two tenants on the
/// proxy's shared servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx() {
    use sqlx::Row;
    let db = pg().database("drivers_sqlx");
    let proxy = start(&shared_pool(&db)).await;
    let pools: Vec<(&str, sqlx::PgPool)> =
        futures_util::future::join_all(["acme", "umbrella"].map(|tenant| {
            let url = format!(
                "postgres://app.{tenant}:{APP_PASSWORD}@127.0.0.1:{}/{db}",
                proxy.port
            );
            async move {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(3)
                    .connect(&url)
                    .await
                    .unwrap();
                (tenant, pool)
            }
        }))
        .await;
    for round in 0..20 {
        for (tenant, pool) in &pools {
            let row = sqlx::query(
                "SELECT current_setting('app.current_tenant') AS t, count(*) AS n, $1::int AS round
                 FROM products WHERE tenant_id = $2",
            )
            .bind(round)
            .bind(*tenant)
            .fetch_one(pool)
            .await
            .unwrap();
            assert_eq!(row.get::<String, _>("t"), *tenant);
            assert_eq!(row.get::<i64, _>("n"), 2);
            assert_eq!(row.get::<i32, _>("round"), round);
        }
    }
    let (_, acme) = &pools[0];
    let mut tx = acme.begin().await.unwrap();
    sqlx::query("INSERT INTO products (name, price) VALUES ($1, $2)")
        .bind("sqlx widget")
        .bind(5)
        .execute(&mut *tx)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 3);
    tx.rollback().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(acme)
        .await
        .unwrap();
    assert_eq!(n, 2, "the rolled-back row is gone");
}

/// psql 18 (`\bind`, `\parse`/`\bind_named`, protocol 3.2, Ctrl-C cancel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql18() {
    let psql = drivers_dir().join("pg18/bin/psql");
    assert!(psql.exists(), "psql 18 is missing: run `scripts/dev setup`");
    run_check(
        "psql",
        std::path::Path::new("sh"),
        &[script("psql_check.sh").as_os_str()],
        &[("PSQL", psql.as_os_str())],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg() {
    let python = drivers_dir().join("venv/bin/python");
    run_check(
        "asyncpg",
        &python,
        &[script("asyncpg_check.py").as_os_str()],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres() {
    let node = std::path::Path::new("node");
    let modules = drivers_dir().join("node/node_modules");
    assert!(
        modules.join("pg").exists(),
        "node-postgres is missing: run `scripts/dev setup`"
    );
    // NODE_PATH lets the script in tests/ find the locally installed module.
    run_check(
        "node-postgres",
        node,
        &[script("node_pg_check.js").as_os_str()],
        &[("NODE_PATH", modules.as_os_str())],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc() {
    let jar = std::path::Path::new("/usr/share/java/postgresql.jar");
    assert!(
        jar.exists(),
        "pgjdbc is missing: run `scripts/dev setup` (Debian's libpostgresql-jdbc-java)"
    );
    let classes = drivers_dir().join("java");
    std::fs::create_dir_all(&classes).unwrap();
    let javac = std::process::Command::new("javac")
        .arg("-d")
        .arg(&classes)
        .arg(script("JdbcCheck.java"))
        .output()
        .expect("javac runs (scripts/dev setup installs a JDK)");
    assert!(
        javac.status.success(),
        "{}",
        String::from_utf8_lossy(&javac.stderr)
    );
    let classpath = format!("{}:{}", classes.display(), jar.display());
    run_check(
        "jdbc",
        std::path::Path::new("java"),
        &["-cp".as_ref(), classpath.as_ref(), "JdbcCheck".as_ref()],
        &[],
    )
    .await;
}
