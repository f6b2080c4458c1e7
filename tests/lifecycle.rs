//! The proxy's life while it serves: live reloads (valid ones applied as a
//! diff, invalid ones refused with the running config kept), 20 reloads during
//! pgbench without a failed transaction, SIGTERM drain and SIGINT exit through
//! the real binary, and JSON logs with an audit trail.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const OPS_PASSWORD: &str = "ops-pw";

fn with_ops(yaml: &str) -> String {
    let scram = postgres_protocol::password::scram_sha_256(OPS_PASSWORD.as_bytes());
    format!("{yaml}\nadmin:\n  users:\n    ops: {{ password: \"{scram}\", role: admin }}\n")
}

fn growth_pool(proxy: &Proxy) -> pgtenant::pool::PoolStats {
    pool_stats(proxy, "growth")
}

fn pool_stats(proxy: &Proxy, label: &str) -> pgtenant::pool::PoolStats {
    let runtime = proxy.deps.runtime.load_full();
    let pool = runtime
        .pools
        .iter()
        .find(|(_, p)| p.identity.label == label)
        .map(|(_, p)| std::sync::Arc::clone(p))
        .unwrap_or_else(|| panic!("{label} pool"));
    pool.stats()
}

/// A reload that moves a tenant to another tier: each client moves at its next
/// transaction, and `max_tenant_share` counts per pool. A transaction still
/// running on the old pool does not count against the new one, and it gives
/// its server back to the old pool when it ends; in the new pool the tenant
/// holds at most the new tier's share, and its next client waits for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moved_to_another_tier_is_counted_against_the_new_pools_share() {
    let db = pg().database("reload_share");
    let yaml = with_literal_secrets(&demo_config(&db));
    let (proxy, dir) = start_file(&yaml).await;
    let (a1, a2, a3) = (
        proxy.connect("acme", &db).await,
        proxy.connect("acme", &db).await,
        std::sync::Arc::new(proxy.connect("acme", &db).await),
    );
    a1.simple_query("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(pool_stats(&proxy, "free").active(), 1);
    let moved = yaml.replace("acme:     { tier: free,", "acme:     { tier: growth,");
    assert_ne!(moved, yaml);
    std::fs::write(dir.path().join("proxy.yaml"), &moved).unwrap();
    proxy
        .deps
        .reload("test")
        .await
        .expect("a valid file reloads");

    // growth: max_tenant_share 2, whatever acme still holds in free.
    a2.simple_query("BEGIN; SELECT 1").await.unwrap();
    a3.simple_query("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(pool_stats(&proxy, "growth").active(), 2);
    let tiers = |proxy: &Proxy| {
        let mut tiers: Vec<String> = proxy
            .deps
            .control
            .clients()
            .iter()
            .map(|c| c.tier())
            .collect();
        tiers.sort();
        tiers
    };
    assert_eq!(
        tiers(&proxy),
        ["free", "growth", "growth"],
        "SHOW CLIENTS follows each client to its new tier"
    );
    assert_eq!(
        one(&a1, "SELECT current_setting('app.current_tenant')").await,
        "acme",
        "the open transaction goes on where it began"
    );
    a1.simple_query("COMMIT").await.unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    while pool_stats(&proxy, "free").active() != 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        pool_stats(&proxy, "free").active(),
        0,
        "the old pool got its server back"
    );

    // acme's third transaction in growth waits for one of its two to end.
    let waiting = tokio::spawn(async move { one(&a1, "SHOW work_mem").await });
    let until = Instant::now() + Duration::from_secs(2);
    while pool_stats(&proxy, "growth").waiting != 1 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        pool_stats(&proxy, "growth").waiting,
        1,
        "over the share, it queues"
    );
    assert_eq!(tiers(&proxy), ["growth", "growth", "growth"]);
    assert!(!waiting.is_finished());
    a3.simple_query("COMMIT").await.unwrap();
    let work_mem = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once acme is under its share")
        .unwrap();
    assert_eq!(work_mem, "8MB", "it ran with the growth tier's settings");
    a2.simple_query("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_valid_file_as_a_diff_and_refuses_an_invalid_one() {
    let db = pg().database("reload");
    let yaml = with_literal_secrets(&with_ops(&demo_config(&db)));
    let (proxy, dir) = start_file(&yaml).await;
    let path = dir.path().join("proxy.yaml");
    let acme = proxy.connect("acme", &db).await;
    let pid = one(&acme, "SELECT pg_backend_pid()").await;
    assert_eq!(one(&acme, "SHOW statement_timeout").await, "5s");
    let (umbrella, umbrella_conn) =
        connect_watched(&proxy.client_config("app.umbrella", APP_PASSWORD, &db)).await;
    one(&umbrella, "SELECT 1").await;
    // Two idle servers in the growth pool.
    let (i1, i2) = (
        proxy.connect("initech", &db).await,
        proxy.connect("initech", &db).await,
    );
    i1.simple_query("BEGIN; SELECT 1").await.unwrap();
    i2.simple_query("BEGIN; SELECT 1").await.unwrap();
    i1.simple_query("COMMIT").await.unwrap();
    i2.simple_query("COMMIT").await.unwrap();
    // A server goes back to the pool just after its client has the reply.
    let until = Instant::now() + Duration::from_secs(2);
    while growth_pool(&proxy).idle != 2 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(growth_pool(&proxy).idle, 2);

    // Valid: free's statement_timeout changes, growth shrinks to one server,
    // umbrella is removed, hooli is added.
    let changed = yaml
        .replace("statement_timeout: 5s", "statement_timeout: 7s")
        .replace(
            "growth:     { pool_size: 3, max_tenant_share: 2",
            "growth:     { pool_size: 1, max_tenant_share: 1",
        )
        .replace(
            "  umbrella: { tier: free, cluster: main }\n",
            "  hooli: { tier: growth, cluster: main }\n",
        );
    std::fs::write(&path, &changed).unwrap();
    proxy
        .deps
        .reload("test")
        .await
        .expect("a valid file reloads");
    assert_eq!(
        one(&acme, "SHOW statement_timeout").await,
        "7s",
        "tier settings apply at the next transaction"
    );
    assert_eq!(
        one(&acme, "SELECT pg_backend_pid()").await,
        pid,
        "an unchanged pool keeps its servers"
    );
    let growth = growth_pool(&proxy);
    assert_eq!(
        (growth.open, growth.sizes.max_size),
        (1, 1),
        "a smaller pool closes idle servers"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), umbrella_conn)
        .await
        .unwrap()
        .unwrap();
    let e = ended.expect_err("a removed tenant's client is told");
    assert_eq!(code(&e), "57P01");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("umbrella\" was removed"),
        "{e:?}"
    );
    let hooli = proxy.connect("hooli", &db).await;
    assert_eq!(
        one(&hooli, "SELECT current_setting('app.current_tenant')").await,
        "hooli"
    );
    let e = proxy
        .try_connect("app.umbrella", APP_PASSWORD, &db)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28000");

    // Invalid: refused with line and field; everything keeps running as it was.
    std::fs::write(&path, changed.replace("pool_size: 1", "pool_size: 0")).unwrap();
    let errors = proxy
        .deps
        .reload("test")
        .await
        .expect_err("an invalid file is refused");
    assert!(errors.contains("tiers.growth.pool_size (line"), "{errors}");
    assert_eq!(proxy.deps.metrics.reload_failures.get(), 1);
    assert_eq!(proxy.deps.metrics.reloads.get(), 1);
    assert_eq!(one(&acme, "SHOW statement_timeout").await, "7s");
    assert_eq!(one(&hooli, "SELECT 'still serving'").await, "still serving");

    // The console's RELOAD returns the errors to its caller.
    let admin = proxy
        .try_connect("ops", OPS_PASSWORD, "pgtenant")
        .await
        .unwrap();
    let e = admin.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(code(&e), "F0000");
    let message = e.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("tiers.growth.pool_size (line") && message.contains("column"),
        "{message}"
    );
    std::fs::write(&path, &changed).unwrap();
    admin
        .simple_query("RELOAD")
        .await
        .expect("RELOAD of a valid file");
    assert_eq!(proxy.deps.metrics.reloads.get(), 2);
}

fn write(path: &Path, yaml: &str) {
    // Whole-file replace, as editors and config management do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Reloads applied plus reloads refused, from `/metrics`.
async fn reloads(addr: std::net::SocketAddr) -> (u64, u64) {
    let (_, text) = http_get(addr, "/metrics").await;
    let value = |name: &str| sample(&text, name).unwrap_or(0.0) as u64;
    (
        value("pgtenant_config_reloads_total"),
        value("pgtenant_config_reload_failures_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_during_pgbench_fail_no_transaction() {
    let db = pg().database("reload_bench");
    pgbench_init(&db);
    let base = config(
        &db,
        "\n  shared: { pool_size: 4, max_tenant_share: 2, queue_timeout: 20s, statement_timeout: 30s }",
        &tenants("shared", "shared", "shared", "shared"),
    ) + "\nmetrics: { listen: \"127.0.0.1:0\" }\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    write(&path, &base);
    let binary = Binary::start(&path, "info");
    let metrics = binary.metrics_addr();
    let runs: Vec<_> = [
        ("acme", "extended"),
        ("initech", "prepared"),
        ("globex", "simple"),
    ]
    .into_iter()
    .map(|(tenant, mode)| {
        // One pgbench thread per client: in prepared mode a client's first run
        // prepares with blocking calls, which would stall a thread's other
        // client mid-transaction on a server the prepare then waits for (at
        // `max_tenant_share: 2`, a deadlock until the queue timeout).
        let options = ["-n", "-c", "4", "-j", "4", "-T", "12", "-M", mode];
        pgbench_as(binary.port, &db, tenant, &options).output()
    })
    .collect();
    let bench = tokio::spawn(futures_util::future::join_all(runs));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20u64 {
        let yaml = if i % 4 == 3 {
            // Invalid: a pool of zero, or an unknown key.
            if i % 8 == 3 {
                base.replace("queue_timeout:", "queue_timeout_typo: 1s, queue_timeout:")
            } else {
                base.replace("pool_size: 4", "pool_size: 0")
            }
        } else {
            base.replace("pool_size: 4", &format!("pool_size: {}", 2 + i % 3))
                .replace(
                    "statement_timeout: 30s",
                    &format!("statement_timeout: {}s", 30 + i),
                )
        };
        write(&path, &yaml);
        binary.signal("HUP");
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (ok, failed) = reloads(metrics).await;
            if ok + failed == i + 1 {
                break;
            }
            assert!(
                Instant::now() < until,
                "reload {i} not seen:\n{}",
                binary.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (out, tenant) in bench
        .await
        .unwrap()
        .into_iter()
        .zip(["acme", "initech", "globex"])
    {
        assert_pgbench_clean(tenant, &out.unwrap(), 100);
    }
    assert_eq!(reloads(metrics).await, (15, 5));
    let log = binary.log();
    assert_eq!(log.matches("configuration reloaded").count(), 15, "{log}");
    assert!(
        log.matches("configuration not reloaded").count() == 5
            && log.contains("unknown field `queue_timeout_typo`")
            && log.contains("tiers.shared.pool_size (line"),
        "errors are logged with their place:\n{log}"
    );
}

/// A config for the binary with a given `shutdown_timeout`.
fn binary_config(db: &str, shutdown: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let yaml = demo_config(db)
        + &format!("\nmetrics: {{ listen: \"127.0.0.1:0\" }}\nshutdown_timeout: {shutdown}\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    write(&path, &yaml);
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_transactions_then_exits() {
    let db = pg().database("sigterm");
    let (_dir, path) = binary_config(&db, "20s");
    let mut binary = Binary::start(&path, "info");
    let metrics = binary.metrics_addr();
    let config = binary.client_config("app.acme", APP_PASSWORD, &db);
    let (busy, busy_conn) = connect_watched(&config).await;
    let (idle, idle_conn) = connect_watched(&config).await;
    one(&idle, "SELECT 1").await;
    busy.simple_query("BEGIN; SELECT 1").await.unwrap();
    binary.signal("TERM");

    let ended = tokio::time::timeout(Duration::from_secs(5), idle_conn)
        .await
        .expect("idle client closed at once")
        .unwrap();
    assert_eq!(code(&ended.expect_err("told why")), "57P01");
    let (status, body) = http_get(metrics, "/readyz").await;
    assert_eq!((status, body.trim()), (503, "draining: shutting down"));
    assert!(
        config.connect(tokio_postgres::NoTls).await.is_err(),
        "no new clients while draining"
    );
    // The transaction in flight runs to its end.
    assert_eq!(one(&busy, "SELECT 'still running'").await, "still running");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        binary.child.try_wait().unwrap().is_none(),
        "waits for the open transaction"
    );
    busy.simple_query("COMMIT")
        .await
        .expect("the transaction commits");
    let ended = tokio::time::timeout(Duration::from_secs(5), busy_conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&ended.expect_err("closed at the boundary")), "57P01");
    let status = binary
        .wait_exit(Duration::from_secs(5))
        .expect("exits once drained");
    assert!(status.success(), "{status}");
    assert!(
        binary.log().contains("drained; exiting"),
        "{}",
        binary.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_after_shutdown_timeout_and_sigint_exits_at_once() {
    let db = pg().database("sigint");
    let (_dir, path) = binary_config(&db, "1s");
    for (signal, limit) in [
        ("TERM", Duration::from_millis(3000)),
        ("INT", Duration::from_millis(1000)),
    ] {
        let mut binary = Binary::start(&path, "info");
        let config = binary.client_config("app.acme", APP_PASSWORD, &db);
        let (stuck, _conn) = connect_watched(&config).await;
        stuck.simple_query("BEGIN; SELECT 1").await.unwrap();
        let sent = Instant::now();
        binary.signal(signal);
        let status = binary
            .wait_exit(limit)
            .unwrap_or_else(|| panic!("SIG{signal}: still running after {limit:?}"));
        assert!(status.success(), "SIG{signal}: {status}");
        if signal == "TERM" {
            assert!(
                sent.elapsed() >= Duration::from_millis(900),
                "SIGTERM waited for shutdown_timeout"
            );
        }
        assert!(stuck.simple_query("SELECT 1").await.is_err());
    }
    // Neither left a transaction open on PostgreSQL.
    let superuser = pg().superuser(&db).await;
    assert_eq!(open_transactions(&superuser).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_an_audit_trail_without_secrets() {
    let db = pg().database("audit");
    let yaml = with_ops(&demo_config(&db)) + "log_format: json\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    write(&path, &yaml);
    let binary = Binary::start(&path, "info");
    let acme = binary
        .client_config("app.acme", APP_PASSWORD, &db)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(acme.1);
    one(&acme.0, "SELECT 1").await;
    assert!(
        binary
            .client_config("app.acme", "not-the-password-93", &db)
            .connect(tokio_postgres::NoTls)
            .await
            .is_err()
    );
    let (admin, conn) = binary
        .client_config("ops", OPS_PASSWORD, "pgtenant")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin.simple_query("PAUSE TIER growth").await.unwrap();
    admin.simple_query("RESUME").await.unwrap();
    admin.simple_query("SHOW POOLS").await.unwrap();
    binary.signal("HUP");
    let until = Instant::now() + Duration::from_secs(10);
    while !binary.log().contains("configuration reloaded") {
        assert!(Instant::now() < until, "{}", binary.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let log = binary.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let audit = |want: &[(&str, &str)]| {
        events.iter().any(|e| {
            e["target"] == "pgtenant::audit" && want.iter().all(|(k, v)| e[*k].as_str() == Some(*v))
        })
    };
    assert!(
        audit(&[("event", "login"), ("outcome", "ok"), ("tenant", "acme")]),
        "{log}"
    );
    assert!(
        audit(&[
            ("event", "login"),
            ("outcome", "failed"),
            ("user", "app.acme")
        ]),
        "{log}"
    );
    assert!(
        audit(&[("event", "login"), ("outcome", "ok"), ("user", "ops")]),
        "{log}"
    );
    assert!(
        audit(&[
            ("event", "admin"),
            ("command", "PAUSE TIER growth"),
            ("user", "ops")
        ]),
        "{log}"
    );
    assert!(audit(&[("event", "admin"), ("command", "RESUME")]), "{log}");
    assert!(
        audit(&[
            ("event", "reload"),
            ("outcome", "ok"),
            ("trigger", "SIGHUP")
        ]),
        "{log}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "login"
            && e["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1"))),
        "logins carry the source address"
    );
    for secret in [
        APP_PASSWORD,
        BACKEND_PASSWORD,
        OPS_PASSWORD,
        "not-the-password-93",
    ] {
        assert!(!log.contains(secret), "the log holds {secret}:\n{log}");
    }
}

/// A reload that changes what a cluster's servers are (here its login role)
/// builds a new pool: clients move to it at their next transaction and the
/// old pool's servers are closed once no client uses it. A session-mode client
/// keeps its server until it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_new_cluster_servers_moves_clients_to_a_new_pool() {
    let db = pg().database("reload_cluster");
    let tiers = format!("{TIERS}  sticky: {{ pool_size: 2, pool_mode: session }}\n");
    let tenants = tenants("free", "sticky", "growth", "enterprise");
    let yaml = with_literal_secrets(&config(&db, &tiers, &tenants));
    let (proxy, dir) = start_file(&yaml).await;
    let acme = proxy.connect("acme", &db).await;
    let sticky = proxy.connect("umbrella", &db).await;
    assert_eq!(one(&acme, "SELECT session_user").await, "pgtenant_app");
    let sticky_pid = one(&sticky, "SELECT pg_backend_pid()").await;

    let moved = with_md5_login_role(&yaml);
    std::fs::write(dir.path().join("proxy.yaml"), &moved).unwrap();
    proxy.deps.reload("test").await.expect("reload");
    assert_eq!(
        one(&acme, "SELECT session_user").await,
        "pgtenant_md5",
        "the next transaction runs on the new pool"
    );
    assert_eq!(
        one(&acme, "SELECT current_setting('app.current_tenant')").await,
        "acme"
    );
    assert_eq!(
        one(&sticky, "SELECT pg_backend_pid()").await,
        sticky_pid,
        "a session-mode client keeps its server"
    );
    drop(sticky);
    // The old free pool is dropped with its idle server once acme moved on.
    let superuser = pg().superuser(&db).await;
    assert_eq!(
        servers_gone(&superuser).await,
        0,
        "servers of the old pools are closed"
    );
}

/// The RLS role check runs on reload too: a tenant role that does not exist
/// refuses the file and the running config stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_is_refused_when_a_tenant_role_is_missing() {
    let db = pg().database("reload_role");
    let yaml = with_literal_secrets(&demo_config(&db));
    let (proxy, dir) = start_file(&yaml).await;
    let broken = yaml.replace("role: tenant_globex", "role: tenant_nobody");
    std::fs::write(dir.path().join("proxy.yaml"), broken).unwrap();
    let errors = proxy
        .deps
        .reload("test")
        .await
        .expect_err("a missing role is refused");
    assert!(
        errors.contains("tenant roles are misconfigured") && errors.contains("tenant_nobody"),
        "{errors}"
    );
    let globex = proxy.connect("globex", &db).await;
    assert_eq!(one(&globex, "SELECT current_user").await, "tenant_globex");
    assert_eq!(proxy.deps.metrics.reload_failures.get(), 1);
}

/// `workers: 1` runs every session on one worker thread: no server ever
/// moves between workers. pgbench over two tenants and a check
/// of each tenant's context through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_threaded_proxy_serves_tenants() {
    let db = pg().database("one_worker");
    pgbench_init(&db);
    let (_dir, path) = binary_config(&db, "5s");
    let yaml = std::fs::read_to_string(&path).unwrap() + "workers: 1\n";
    write(&path, &yaml);
    let binary = Binary::start(&path, "info");
    let runs: Vec<_> = [("acme", "extended"), ("globex", "simple")]
        .into_iter()
        .map(|(tenant, mode)| {
            let options = ["-n", "-S", "-c", "8", "-j", "2", "-T", "3", "-M", mode];
            pgbench_as(binary.port, &db, tenant, &options).output()
        })
        .collect();
    let outs = futures_util::future::join_all(runs).await;
    for out in &outs {
        assert_pgbench_clean("pgbench on one worker", out.as_ref().unwrap(), 100);
    }
    for tenant in ["acme", "globex"] {
        let config = binary.client_config(&format!("app.{tenant}"), APP_PASSWORD, &db);
        let (client, _connection) = connect_watched(&config).await;
        let row = client
            .query_one("select current_setting('app.current_tenant')", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), tenant);
    }
    assert!(
        binary.log().contains("pgtenant accepting clients"),
        "{}",
        binary.log()
    );
}

/// A checkout queued in a pool that a reload then replaces still gets its
/// queue timeout (queue timeouts are swept for every live pool, not only for
/// those of the running config), and the session goes on in the new pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_in_a_replaced_pool_still_times_out() {
    let db = pg().database("reload_wait");
    let tiers = "\n  one: { pool_size: 1, queue_timeout: 1s }\n";
    let yaml = with_literal_secrets(&config(&db, tiers, &tenants("one", "one", "one", "one")));
    let (proxy, dir) = start_file(&yaml).await;
    let holder = proxy.connect("acme", &db).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = proxy.connect("umbrella", &db).await;
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let err = waiter.simple_query("SELECT 1").await.unwrap_err();
        (code(&err), waiter)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the second client waits for the server"
    );
    let moved = with_md5_login_role(&yaml);
    std::fs::write(dir.path().join("proxy.yaml"), &moved).unwrap();
    proxy.deps.reload("test").await.expect("reload");
    let (code, waiter) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the queued checkout times out")
        .unwrap();
    assert_eq!(code, "53300");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "timed out after {waited:?}"
    );
    assert_eq!(one(&waiter, "SELECT session_user").await, "pgtenant_md5");
    holder.batch_execute("COMMIT").await.unwrap();
}

/// `yaml` with cluster `main` logging in as another role: a reload of it
/// builds new pools for every tenant.
fn with_md5_login_role(yaml: &str) -> String {
    yaml.replace("user: pgtenant_app", "user: pgtenant_md5")
        .replace(
            &format!("password: {BACKEND_PASSWORD}"),
            &format!("password: {MD5_BACKEND_PASSWORD}"),
        )
}
