//! Real client programs through the proxy, several tenants on a small shared
//! pool: pgbench in every query mode. Each run asserts zero failed
//! transactions; the scripts' own checks assert round-tripped values.

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

fn pgbench_init(db: &str) {
    let bin = pgtenant::demo::postgres::find_bin().unwrap();
    let init = std::process::Command::new(bin.join("pgbench"))
        .args(["-i", "-s", "1", "-q", "-h"])
        .arg(pg().pg.dir())
        .args(["-p", &pg().pg.port().to_string(), "-U", "postgres", db])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    pg().psql(
        db,
        "GRANT SELECT, UPDATE, INSERT ON ALL TABLES IN SCHEMA public TO PUBLIC",
    );
}

/// 32 clients over 3 tenants on `pool_size: 4`, in each of pgbench's modes
/// (`-M prepared` uses named statements that must survive moving between servers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_every_mode_over_three_tenants() {
    let db = pg().database("drivers_pgbench");
    pgbench_init(&db);
    let proxy = start(&shared_pool(&db)).await;
    let bin = pgtenant::demo::postgres::find_bin().unwrap();
    let port = proxy.port.to_string();
    for mode in ["simple", "extended", "prepared"] {
        let runs: Vec<_> = [("acme", "11"), ("umbrella", "11"), ("initech", "10")]
            .into_iter()
            .map(|(tenant, clients)| {
                tokio::process::Command::new(bin.join("pgbench"))
                    .args(["-n", "-S", "-c", clients, "-j", "2", "-T", "3", "-M", mode])
                    .args(["-h", "127.0.0.1", "-p", &port, "-U"])
                    .arg(format!("app.{tenant}"))
                    .arg(&db)
                    .env("PGPASSWORD", APP_PASSWORD)
                    .output()
            })
            .collect();
        for (run, tenant) in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .zip(["acme", "umbrella", "initech"])
        {
            let out = run.unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{mode} {tenant}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("number of failed transactions: 0"),
                "{mode} {tenant}: {stdout}"
            );
            let tx: u64 = stdout
                .lines()
                .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                .and_then(|v| v.split('/').next())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            assert!(
                tx > 100,
                "{mode} {tenant}: only {tx} transactions\n{stdout}"
            );
        }
    }
}
