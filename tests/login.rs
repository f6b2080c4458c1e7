//! Logins and configuration through the real proxy: client auth (SCRAM, md5),
//! tenant resolution errors, client caps, server auth methods, two clusters,
//! the RLS start-up check, and the CLI.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    APP_PASSWORD, Proxy, code, demo_config, one, pg, raw_login, server_connections, start,
    start_file, start_tier, with_literal_secrets,
};

fn with_user(db: &str, user_yaml: &str) -> String {
    demo_config(db).replace(
        "  acme:     { tier: free, cluster: main }",
        &format!("  acme:\n    tier: free\n    cluster: main\n    users:\n{user_yaml}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_get_postgres_errors() {
    let db = pg().database("auth");
    let proxy = start(&demo_config(&db)).await;
    let cases = [
        (
            "app.acme",
            "wrong",
            db.as_str(),
            "28P01",
            "password authentication failed for user \"app.acme\"",
        ),
        (
            "nobody",
            APP_PASSWORD,
            db.as_str(),
            "28P01",
            "password authentication failed for user \"nobody\"",
        ),
        (
            "app.nobody",
            APP_PASSWORD,
            db.as_str(),
            "28000",
            "tenant \"nobody\" does not exist",
        ),
        (
            "app.closed",
            APP_PASSWORD,
            db.as_str(),
            "28000",
            "tenant \"closed\" is disabled",
        ),
        (
            "app.acme",
            APP_PASSWORD,
            "elsewhere",
            "3D000",
            "database \"elsewhere\" does not exist",
        ),
    ];
    for (user, password, database, sqlstate, message) in cases {
        let err = proxy
            .try_connect(user, password, database)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} logged in"));
        assert_eq!(code(&err), sqlstate, "{user}");
        assert_eq!(err.as_db_error().unwrap().message(), message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_user_with_md5_secret_logs_in() {
    let db = pg().database("md5");
    let secret = postgres_protocol::password::md5(b"acme-pw", "acme_admin");
    let proxy = start(&with_user(
        &db,
        &format!("      acme_admin: {{ password: \"{secret}\" }}\n"),
    ))
    .await;
    let client = proxy
        .try_connect("acme_admin", "acme-pw", &db)
        .await
        .unwrap();
    assert_eq!(
        one(&client, "SELECT current_setting('app.current_tenant')").await,
        "acme"
    );
    let err = proxy
        .try_connect("acme_admin", "nope", &db)
        .await
        .err()
        .unwrap();
    assert_eq!(code(&err), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_over_its_client_cap_is_refused() {
    let db = pg().database("cap");
    let proxy = start_tier(&db, "capped", "{ pool_size: 2, max_client_connections: 2 }").await;
    let a = proxy.connect("acme", &db).await;
    let _b = proxy.connect("acme", &db).await;
    acme_is_refused_over_its_cap(&proxy, &db).await;
    // Other tenants have their own count, and a closed client frees its place.
    let _u = proxy.connect("umbrella", &db).await;
    drop(a);
    acme_clients_down_to(&proxy, 1).await;
    proxy.connect("acme", &db).await;
}

async fn acme_is_refused_over_its_cap(proxy: &Proxy, db: &str) {
    let err = proxy
        .try_connect("app.acme", APP_PASSWORD, db)
        .await
        .err()
        .unwrap();
    assert_eq!(code(&err), "53300");
}

/// acme's clients as the proxy counts them, once down to `at_most` (or after 5 s).
async fn acme_clients_down_to(proxy: &Proxy, at_most: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.deps.clients.get("acme") > at_most && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.deps.clients.get("acme")
}

/// A client reset while it sits idle (an RST, no `Terminate`) frees its place
/// at once: the idle session's read sees the reset and ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_that_is_reset_frees_its_place() {
    let db = pg().database("capreset");
    let proxy = start_tier(&db, "capped", "{ pool_size: 1, max_client_connections: 1 }").await;
    let raw = raw_login(proxy.port, "app.acme", APP_PASSWORD, &db).await;
    acme_is_refused_over_its_cap(&proxy, &db).await;
    // A zero linger makes the close a reset.
    raw.set_zero_linger().unwrap();
    drop(raw);
    assert_eq!(
        acme_clients_down_to(&proxy, 0).await,
        0,
        "the reset session kept its place"
    );
    let client = proxy.connect("acme", &db).await;
    assert_eq!(
        one(&client, "SELECT current_setting('app.current_tenant')").await,
        "acme"
    );
}

/// The proxy logs in to PostgreSQL with md5 and with trust as well as SCRAM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_logins_with_md5_and_trust() {
    let db = pg().database("srvauth");
    for (user, password) in [
        ("pgtenant_md5", "    password: ${TEST_MD5_PASSWORD}\n"),
        ("pgtenant_trust", ""),
    ] {
        let yaml = demo_config(&db).replace(
            "    user: pgtenant_app\n    password: ${TEST_BACKEND_PASSWORD}\n",
            &format!("    user: {user}\n{password}"),
        );
        let proxy = start(&yaml).await;
        let client = proxy.connect("globex", &db).await;
        assert_eq!(
            one(&client, "SELECT session_user || '/' || current_user").await,
            format!("{user}/tenant_globex")
        );
    }
}

/// Tenants on two clusters (here two databases) run on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_two_clusters() {
    let (main_db, eu_db) = (pg().database("main"), pg().database("eu"));
    let yaml = demo_config(&main_db)
        .replace(
            "tiers:",
            &format!(
                "  eu:\n    host: 127.0.0.1\n    port: {}\n    database: {eu_db}\n    user: pgtenant_app\n    password: ${{TEST_BACKEND_PASSWORD}}\n    max_server_connections: 5\ntiers:",
                pg().pg.port()
            ),
        )
        .replace("  umbrella: { tier: free, cluster: main }", "  umbrella: { tier: free, cluster: eu }");
    let proxy = start(&yaml).await;
    let acme = proxy.connect("acme", &main_db).await;
    let umbrella = proxy.connect("umbrella", &eu_db).await;
    assert_eq!(one(&acme, "SELECT current_database()").await, main_db);
    assert_eq!(one(&umbrella, "SELECT current_database()").await, eu_db);
    // Each tenant must use its own cluster's database name.
    let err = proxy
        .try_connect("app.umbrella", APP_PASSWORD, &main_db)
        .await
        .err()
        .unwrap();
    assert_eq!(code(&err), "3D000");
}

/// The test config with tenant `umbrella` moved to an extra cluster `name`
/// (database `gone`) on `127.0.0.1:port`.
fn umbrella_on_cluster(db: &str, name: &str, port: u16, connect_timeout: &str) -> String {
    demo_config(db)
        .replace(
            "tiers:",
            &format!(
                "  {name}:\n    host: 127.0.0.1\n    port: {port}\n    database: gone\n    user: x\n    connect_timeout: {connect_timeout}\n    max_server_connections: 5\ntiers:"
            ),
        )
        .replace(
            "  umbrella: { tier: free, cluster: main }",
            &format!("  umbrella: {{ tier: free, cluster: {name} }}"),
        )
}

/// The error of a login as `umbrella` that must fail.
async fn umbrella_login_error(proxy: &Proxy) -> tokio_postgres::Error {
    match proxy
        .try_connect("app.umbrella", APP_PASSWORD, "gone")
        .await
    {
        Ok(_) => panic!("the login succeeded"),
        Err(e) => e,
    }
}

/// A failed server connection, reported with the cluster's name.
fn assert_08001_naming(err: &tokio_postgres::Error, cluster: &str) {
    assert_eq!(code(err), "08001");
    assert!(
        (err.as_db_error().unwrap().message()).contains(&format!("\"{cluster}\"")),
        "{err}"
    );
}

/// A cluster that cannot be reached: the client is told which, and the proxy
/// keeps serving other clusters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_gives_08001_naming_it() {
    let db = pg().database("down");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = start(&umbrella_on_cluster(&db, "down", closed_port, "1s")).await;
    let err = umbrella_login_error(&proxy).await;
    assert_08001_naming(&err, "down");
    let acme = proxy.connect("acme", &db).await;
    assert_eq!(one(&acme, "SELECT 1").await, "1");
}

/// A cluster that takes the connection and never answers: the login fails
/// with 08001 once `connect_timeout` has passed (a timer that the session's
/// worker keeps on the control thread's runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cluster_fails_the_login_at_connect_timeout() {
    let db = pg().database("silent");
    // Never accepted: the kernel completes connections into the backlog.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let proxy = start(&umbrella_on_cluster(&db, "silent", port, "300ms")).await;
    let started = std::time::Instant::now();
    let err = umbrella_login_error(&proxy).await;
    let waited = started.elapsed();
    assert_08001_naming(&err, "silent");
    assert!(
        waited >= std::time::Duration::from_millis(300)
            && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    let acme = proxy.connect("acme", &db).await;
    assert_eq!(one(&acme, "SELECT 1").await, "1");
    drop(silent);
}

/// A cluster whose login password is wrong (SCRAM, derived off the worker):
/// the client is told which cluster, the proxy keeps no server and goes on
/// serving; fixed by a reload, the next login works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cluster_password_gives_08001_naming_it() {
    let db = pg().database("badpass");
    let yaml = demo_config(&db);
    let wrong = yaml.replace("${TEST_BACKEND_PASSWORD}", "not-the-password");
    let (proxy, dir) = start_file(&with_literal_secrets(&wrong)).await;
    let err = proxy
        .try_connect("app.acme", APP_PASSWORD, &db)
        .await
        .err()
        .unwrap();
    assert_08001_naming(&err, "main");
    let superuser = pg().superuser(&db).await;
    assert_eq!(server_connections(&superuser).await, 0);
    std::fs::write(dir.path().join("proxy.yaml"), with_literal_secrets(&yaml)).unwrap();
    proxy.deps.reload("test").await.expect("reload");
    let acme = proxy.connect("acme", &db).await;
    assert_eq!(
        one(&acme, "SELECT current_setting('app.current_tenant')").await,
        "acme"
    );
}

/// A cluster whose `host` is a directory is reached over PostgreSQL's
/// Unix-domain socket there (`tls: prefer` connects plain, as libpq):
/// transactions carry their tenant context, cancel requests reach the server,
/// an idle server terminated on the socket is noticed and replaced, and a
/// directory without a server gives 08001 naming the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_cluster_serves_tenants_and_cancels() {
    let db = pg().database("unix");
    let socket_dir = pg().pg.dir().display().to_string();
    let yaml = demo_config(&db)
        .replace("    host: 127.0.0.1\n", &format!("    host: {socket_dir}\n"))
        .replace(
            "    max_server_connections: 50\n",
            "    max_server_connections: 50\n    tls: { mode: prefer }\n",
        )
        .replace(
            "tiers:",
            "  nowhere: { host: /nonexistent, database: gone, user: x, max_server_connections: 5 }\ntiers:",
        )
        .replace(
            "  umbrella: { tier: free, cluster: main }",
            "  umbrella: { tier: free, cluster: nowhere }",
        );
    let proxy = start(&yaml).await;
    let client = proxy.connect("initech", &db).await;
    assert_eq!(
        one(&client, "SELECT current_setting('app.current_tenant')").await,
        "initech"
    );
    // PostgreSQL shows no client address for a Unix-domain socket.
    let superuser = pg().superuser(&db).await;
    let row = superuser
        .query_one(
            "SELECT count(*), count(client_addr) FROM pg_stat_activity \
             WHERE datname = current_database() AND usename = 'pgtenant_app'",
            &[],
        )
        .await
        .unwrap();
    let (servers, over_tcp): (i64, i64) = (row.get(0), row.get(1));
    assert!(servers >= 1, "no server connection seen");
    assert_eq!(over_tcp, 0, "a server connection went over TCP");

    common::cancel_a_running_query(&client).await;

    // Servers terminated while idle: the next transaction gets a new one.
    superuser
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND usename = 'pgtenant_app'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        common::servers_gone(&superuser).await,
        0,
        "terminated servers are gone"
    );
    assert_eq!(
        one(&client, "SELECT current_setting('app.current_tenant')").await,
        "initech"
    );

    let err = proxy
        .try_connect("app.umbrella", APP_PASSWORD, "gone")
        .await
        .expect_err("no server in /nonexistent");
    assert_eq!(code(&err), "08001");
    assert!(
        err.as_db_error().unwrap().message().contains("\"nowhere\""),
        "{err}"
    );
}

/// With require_rls_enforced, a backend role that bypasses RLS stops the proxy
/// from starting; without it the proxy starts (and warns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_bypassing_role_is_refused_when_required() {
    let db = pg().database("rls");
    let yaml = demo_config(&db).replace("user: pgtenant_app", "user: pgtenant_bypass");
    let strict = yaml.replace(
        "listen: 127.0.0.1:0",
        "listen: 127.0.0.1:0\nrequire_rls_enforced: true",
    );
    let config = pgtenant::config::parse(&strict, &common::env).unwrap();
    let err = pgtenant::app::Proxy::bind(config, None)
        .await
        .err()
        .expect("bypassing role accepted");
    assert!(err.to_string().contains("BYPASSRLS"), "{err}");
    let config = pgtenant::config::parse(&yaml, &common::env).unwrap();
    assert!(pgtenant::app::Proxy::bind(config, None).await.is_ok());
    // The demo's own role passes the strict check.
    let ok = config_strict(&db);
    assert!(pgtenant::app::Proxy::bind(ok, None).await.is_ok());
}

fn config_strict(db: &str) -> pgtenant::config::Config {
    let yaml = demo_config(db).replace(
        "listen: 127.0.0.1:0",
        "listen: 127.0.0.1:0\nrequire_rls_enforced: true",
    );
    pgtenant::config::parse(&yaml, &common::env).unwrap()
}

fn pgtenant() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgtenant"))
}

#[test]
fn check_accepts_the_bundled_config() {
    let out = pgtenant()
        .args(["check", concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.yaml")])
        .env("PGTENANT_BACKEND_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_every_error_with_path_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:6432
clusters:
  main: { host: h, database: d, user: u, max_server_connections: 1 }
tiers:
  free: { pool_size: 2, statement_timeout: soon }
tenants:
  Bad.Id: { tier: gold, cluster: main }
",
    )
    .unwrap();
    let out = pgtenant().arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("line 5, column"), "{stderr}");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:6432
clusters:
  main: { host: h, database: d, user: u, password: '${NOPE_UNSET}', max_server_connections: 1 }
tiers:
  free: { pool_size: 2 }
tenants:
  Bad.Id: { tier: gold, cluster: main, schema: \"x; drop\" }
  ok: { tier: free, cluster: nowhere }
  full: { tier: free, cluster: main }
",
    )
    .unwrap();
    let out = pgtenant().arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for expected in [
        "clusters.main.password (line 3, column",
        "environment variable NOPE_UNSET is not set",
        "tenants.Bad.Id (line 7, column 3)",
        "tenants.Bad.Id.tier (line 7, column 19): no tier named \"gold\"",
        "tenants.Bad.Id.schema (line 7",
        "tenants.ok.cluster (line 8, column",
        "clusters.main.max_server_connections (line 3",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn scram_secret_prints_a_verifier_postgres_format() {
    use std::io::Write;
    let mut child = pgtenant()
        .arg("scram-secret")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hunter2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let verifier = String::from_utf8(out.stdout).unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    assert!(pgtenant::config::Secret::parse(verifier.trim()).is_ok());
}

/// psql through the proxy (pgbench runs in tests/drivers.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_works_through_the_proxy() {
    let db = pg().database("bench");
    let bin = pgtenant::demo::postgres::find_bin().unwrap();
    let proxy = start(&demo_config(&db)).await;
    let port = proxy.port.to_string();
    let psql = tokio::process::Command::new(bin.join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "app.initech",
            "-d",
            &db,
        ])
        .args([
            "-c",
            "SELECT current_setting('app.current_tenant')",
            "-c",
            "SELECT count(*) FROM products",
        ])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&psql.stdout),
        "initech\n2\n",
        "{}",
        String::from_utf8_lossy(&psql.stderr)
    );
}

/// A cluster whose PostgreSQL has no TLS: `prefer` falls back to plain
/// connections, `require` (and stronger) gets no server, so clients get 08001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_tls_against_a_server_without_tls() {
    let db = pg().database("no_tls");
    let with_tls = |mode: &str| {
        demo_config(&db).replace(
            "    max_server_connections: 50\n",
            &format!("    max_server_connections: 50\n    tls: {{ mode: {mode} }}\n"),
        )
    };
    let prefer = start(&with_tls("prefer")).await;
    let client = prefer.connect("acme", &db).await;
    assert_eq!(
        one(
            &client,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .await,
        "f"
    );
    let require = start(&with_tls("require")).await;
    let e = require
        .try_connect("app.acme", APP_PASSWORD, &db)
        .await
        .expect_err("no server without TLS");
    assert_eq!(code(&e), "08001");
}
