//! What SREs see and do, through a running proxy: `/metrics` (checked by
//! promtool, values checked against what clients did, tenant series bounded),
//! `/healthz` and `/readyz`, and the admin console (SHOW, PAUSE/RESUME,
//! DRAIN, KILL, RELOAD, stats users) with tokio-postgres and psql.

mod common;

use std::time::Duration;

use common::*;
use tokio_postgres::SimpleQueryMessage;

const OPS_PASSWORD: &str = "ops-pw";
const WATCHER_PASSWORD: &str = "watcher-pw";

/// The test config plus metrics and two console users.
fn operable(db: &str, extra_clusters: &str) -> String {
    let scram = |p: &str| postgres_protocol::password::scram_sha_256(p.as_bytes());
    let yaml = demo_config(db);
    format!(
        "{yaml}\nmetrics: {{ listen: \"127.0.0.1:0\", max_tenant_series: 2 }}\nadmin:\n  users:\n    ops: {{ password: \"{}\", role: admin }}\n    watcher: {{ password: \"{}\", role: stats }}\n",
        scram(OPS_PASSWORD),
        scram(WATCHER_PASSWORD)
    )
    .replace("tiers:", &format!("{extra_clusters}tiers:"))
}

async fn console(proxy: &Proxy, user: &str, password: &str) -> tokio_postgres::Client {
    proxy
        .try_connect(user, password, "pgtenant")
        .await
        .expect("admin console login")
}

/// `SHOW …` as rows of (column → value).
async fn show(admin: &tokio_postgres::Client, what: &str) -> Vec<Vec<(String, String)>> {
    admin
        .simple_query(&format!("SHOW {what}"))
        .await
        .unwrap_or_else(|e| panic!("SHOW {what}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn field<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    row.iter()
        .find(|(c, _)| c == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
}

fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool is missing: install the Debian package `prometheus` (scripts/dev setup does)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_what_clients_did() {
    let db = pg().database("metrics");
    let proxy = start(&operable(&db, "")).await;
    let addr = proxy.metrics.expect("metrics listener");
    let acme = proxy.connect("acme", &db).await;
    for _ in 0..5 {
        one(&acme, "SELECT count(*) FROM products").await;
    }
    let err = acme.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(code(&err), "22012");
    // Three more tenants are active; only two get series of their own.
    for tenant in ["umbrella", "initech", "globex"] {
        let c = proxy.connect(tenant, &db).await;
        one(&c, "SELECT 1").await;
    }

    settled(&proxy).await;
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    promtool_check(&text);
    let labels = "{cluster=\"main\",tier=\"free\"}";
    let tx = sample(&text, &format!("pgtenant_transactions_total{labels}")).unwrap();
    assert!(
        tx >= 7.0,
        "acme 6 + umbrella 1 (plus logins' probes): {tx}\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            "pgtenant_errors_total{cluster=\"main\",tier=\"free\",class=\"22\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("pgtenant_pool_size{labels}")),
        Some(2.0)
    );
    assert!(sample(&text, &format!("pgtenant_queue_wait_seconds_count{labels}")).unwrap() >= tx);
    assert_eq!(
        sample(
            &text,
            "pgtenant_queue_wait_seconds_bucket{cluster=\"main\",tier=\"free\",le=\"+Inf\"}"
        ),
        sample(&text, &format!("pgtenant_queue_wait_seconds_count{labels}"))
    );
    assert!(
        sample(
            &text,
            "pgtenant_server_connects_total{cluster=\"main\",tier=\"free\"}"
        )
        .unwrap()
            >= 1.0
    );
    // acme's and umbrella's first transactions each set their context.
    let switches = sample(&text, &format!("pgtenant_context_switches_total{labels}")).unwrap();
    assert!((2.0..=tx).contains(&switches), "{switches} of {tx}");
    assert!(
        sample(
            &text,
            "pgtenant_client_bytes_sent_total{cluster=\"main\",tier=\"free\"}"
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(sample(&text, "pgtenant_logins_total"), Some(4.0));
    // Clients: acme is connected and idle on the free pool.
    assert!(
        sample(
            &text,
            "pgtenant_pool_clients{cluster=\"main\",tier=\"free\",state=\"idle\"}"
        )
        .unwrap()
            >= 1.0
    );
    // Bounded tenant series: acme (busiest) and one other, the rest in `other`.
    let tenant_series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pgtenant_tenant_transactions_total{"))
        .collect();
    assert_eq!(tenant_series.len(), 3, "{tenant_series:?}");
    assert_eq!(
        sample(&text, "pgtenant_tenant_transactions_total{tenant=\"acme\"}"),
        Some(6.0)
    );
    let sum: f64 = tenant_series
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        sum, 9.0,
        "every transaction is counted once: {tenant_series:?}"
    );

    let bad = proxy
        .try_connect("app.acme", "wrong", &db)
        .await
        .unwrap_err();
    assert_eq!(code(&bad), "28P01");
    let (_, text) = http_get(addr, "/metrics").await;
    assert_eq!(sample(&text, "pgtenant_auth_failures_total"), Some(1.0));

    assert_eq!(http_get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    let mut ready = http_get(addr, "/readyz").await;
    for _ in 0..50 {
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = http_get(addr, "/readyz").await;
    }
    assert_eq!(ready, (200, "ready\n".to_owned()));
}

/// Every metric the Grafana dashboard queries exists in a real scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_uses_only_metrics_the_proxy_exports() {
    let db = pg().database("dashboard");
    let proxy = start(&operable(&db, "")).await;
    let acme = proxy.connect("acme", &db).await;
    one(&acme, "SELECT 1").await;
    let _ = acme.simple_query("SELECT 1/0").await;
    settled(&proxy).await;
    let (_, text) = http_get(proxy.metrics.unwrap(), "/metrics").await;
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker/grafana/dashboards/pgtenant.json");
    let dashboard = std::fs::read_to_string(&path).expect("the dashboard JSON");
    let used: std::collections::BTreeSet<String> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("pgtenant_"))
        .map(str::to_owned)
        .collect();
    assert!(
        used.len() >= 5,
        "the dashboard queries pgtenant metrics: {used:?}"
    );
    for name in &used {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard uses {name}, which /metrics does not export"
        );
    }
    // The JSON itself is valid.
    assert!(dashboard.trim_start().starts_with('{') && dashboard.trim_end().ends_with('}'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_a_cluster_is_unreachable() {
    let db = pg().database("readyz");
    let dead = format!(
        "  dead:\n    host: 127.0.0.1\n    port: 1\n    database: {db}\n    user: pgtenant_app\n    max_server_connections: 1\n    connect_timeout: 200ms\n"
    );
    let proxy = start(&operable(&db, &dead)).await;
    let addr = proxy.metrics.unwrap();
    let mut ready = http_get(addr, "/readyz").await;
    for _ in 0..50 {
        if ready.1.contains("dead") && ready.1.contains("unreachable") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = http_get(addr, "/readyz").await;
    }
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert!(ready.1.contains("cluster dead unreachable"), "{}", ready.1);
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_shows_pools_clients_servers_and_more() {
    let db = pg().database("console");
    let proxy = start(&operable(&db, "")).await;
    let acme = proxy.connect("acme", &db).await;
    one(&acme, "SELECT 1").await;
    let admin = console(&proxy, "ops", OPS_PASSWORD).await;

    let pools = show(&admin, "POOLS").await;
    let free = pools
        .iter()
        .find(|r| field(r, "tier") == "free")
        .expect("free pool");
    assert_eq!(field(free, "cluster"), "main");
    assert_eq!(field(free, "pool_size"), "2");
    assert_eq!(field(free, "cl_idle"), "1");
    assert_eq!(field(free, "sv_idle"), "1");
    assert_eq!(field(free, "pool_mode"), "transaction");
    assert_eq!(field(free, "paused"), "no");

    let clients = show(&admin, "CLIENTS").await;
    assert_eq!(
        clients.len(),
        1,
        "the console itself is not a client: {clients:?}"
    );
    assert_eq!(field(&clients[0], "tenant"), "acme");
    assert_eq!(field(&clients[0], "user"), "app.acme");
    assert_eq!(field(&clients[0], "state"), "idle");
    assert!(field(&clients[0], "connect_time").ends_with(" UTC"));

    let servers = show(&admin, "SERVERS").await;
    assert_eq!(servers.len(), 1);
    assert_eq!(field(&servers[0], "state"), "idle");
    assert_eq!(field(&servers[0], "tenant"), "acme");
    assert_eq!(field(&servers[0], "user"), "pgtenant_app");
    let pid = field(&servers[0], "remote_pid").to_owned();
    assert_eq!(one(&acme, "SELECT pg_backend_pid()").await, pid);

    settled(&proxy).await;
    let stats = show(&admin, "STATS").await;
    let free = stats.iter().find(|r| field(r, "tier") == "free").unwrap();
    assert!(field(free, "total_xact_count").parse::<u64>().unwrap() >= 2);

    let tenants = show(&admin, "TENANTS").await;
    let globex = tenants
        .iter()
        .find(|r| field(r, "tenant") == "globex")
        .unwrap();
    assert_eq!(field(globex, "schema"), "globex");
    assert_eq!(field(globex, "pool"), "enterprise");
    let closed = tenants
        .iter()
        .find(|r| field(r, "tenant") == "closed")
        .unwrap();
    assert_eq!(field(closed, "status"), "disabled");
    assert_eq!(show(&admin, "TIERS").await.len(), 3);
    let version = show(&admin, "VERSION").await;
    assert!(field(&version[0], "version").starts_with("pgtenant "));

    // No secret in any SHOW output.
    let mut everything = String::new();
    for what in [
        "POOLS", "CLIENTS", "SERVERS", "STATS", "TENANTS", "TIERS", "CONFIG", "VERSION",
    ] {
        everything.push_str(&format!("{:?}", show(&admin, what).await));
    }
    for secret in [
        BACKEND_PASSWORD,
        APP_PASSWORD,
        OPS_PASSWORD,
        "SCRAM-SHA-256",
    ] {
        assert!(!everything.contains(secret), "SHOW output holds {secret}");
    }

    // Errors: unknown commands, unknown names, the extended protocol.
    let e = admin.simple_query("SHOW PASSWORDS").await.unwrap_err();
    assert_eq!(code(&e), "42601");
    let e = admin.simple_query("PAUSE TENANT nobody").await.unwrap_err();
    assert_eq!(code(&e), "42704");
    let e = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(code(&e), "0A000");
    assert_eq!(
        show(&admin, "VERSION").await.len(),
        1,
        "the console goes on after errors"
    );

    // A stats user may SHOW, not change anything.
    let watcher = console(&proxy, "watcher", WATCHER_PASSWORD).await;
    assert!(!show(&watcher, "POOLS").await.is_empty());
    for command in ["PAUSE", "RESUME", "RELOAD", "KILL acme", "DRAIN acme"] {
        let e = watcher.simple_query(command).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{command}");
    }
    // The database name alone does not make an admin: a tenant user stays a
    // client (and that database does not exist for it); a wrong password fails.
    let e = proxy
        .try_connect("app.acme", APP_PASSWORD, "pgtenant")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "3D000");
    let e = proxy
        .try_connect("ops", "wrong", "pgtenant")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28P01");
    let e = proxy
        .try_connect("ops", OPS_PASSWORD, &db)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28P01", "admin users are not tenant users");

    // psql, as SREs use it.
    let bin = pgtenant::demo::postgres::find_bin().unwrap();
    let out = std::process::Command::new(bin.join("psql"))
        .arg(format!(
            "postgres://ops:{OPS_PASSWORD}@127.0.0.1:{}/pgtenant",
            proxy.port
        ))
        .args(["-c", "SHOW POOLS", "-c", "SHOW CLIENTS"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("cl_active") && stdout.contains("app.acme"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_until_resume() {
    let db = pg().database("pause");
    let proxy = start(&operable(&db, "")).await;
    let acme = std::sync::Arc::new(proxy.connect("acme", &db).await);
    let initech = proxy.connect("initech", &db).await;
    let admin = console(&proxy, "ops", OPS_PASSWORD).await;
    for (pause, resume) in [
        ("PAUSE TENANT acme", "RESUME TENANT acme"),
        ("PAUSE TIER free", "RESUME TIER free"),
        ("PAUSE", "RESUME"),
    ] {
        admin.simple_query(pause).await.unwrap();
        let held = {
            let acme = std::sync::Arc::clone(&acme);
            tokio::spawn(async move { one(&acme, "SELECT 'ran'").await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!held.is_finished(), "{pause}: acme's transaction waits");
        let clients = show(&admin, "CLIENTS").await;
        let row = clients
            .iter()
            .find(|r| field(r, "tenant") == "acme")
            .unwrap();
        assert_eq!(field(row, "state"), "waiting", "{pause}");
        if pause != "PAUSE" {
            // Other tiers run on.
            assert_eq!(one(&initech, "SELECT 'free to run'").await, "free to run");
        }
        admin.simple_query(resume).await.unwrap();
        let ran = tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("resumed")
            .unwrap();
        assert_eq!(ran, "ran");
    }
}

/// A client that goes away while its tenant is paused is let go at once: its
/// session ends, not when the tenant is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_paused_is_let_go() {
    let db = pg().database("pause_gone");
    let proxy = start(&operable(&db, "")).await;
    let admin = console(&proxy, "ops", OPS_PASSWORD).await;
    let (client, conn) = connect_watched(&proxy.client_config("app.acme", APP_PASSWORD, &db)).await;
    admin.simple_query("PAUSE TENANT acme").await.unwrap();
    let held = tokio::spawn(async move { client.simple_query("SELECT 1").await });
    // Polls SHOW CLIENTS (up to 5 s) until acme's client is in `state`
    // (`None`: listed no more).
    let acme_until = |state: Option<&'static str>, why: &'static str| {
        let admin = &admin;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let clients = show(admin, "CLIENTS").await;
                let acme = (clients.iter())
                    .find(|r| field(r, "tenant") == "acme")
                    .map(|r| field(r, "state").to_owned());
                if acme.as_deref() == state {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "{why}: {acme:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    acme_until(Some("waiting"), "acme never waited").await;
    // Gone without a Terminate, as a crashed client goes.
    conn.abort();
    held.abort();
    acme_until(None, "the gone client is still listed while paused").await;
    admin.simple_query("RESUME TENANT acme").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_running_transactions_and_holds_new_ones() {
    let db = pg().database("drain");
    let proxy = start(&operable(&db, "")).await;
    let busy = proxy.connect("acme", &db).await;
    let later = std::sync::Arc::new(proxy.connect("acme", &db).await);
    busy.simple_query("BEGIN; SELECT 1").await.unwrap();
    let admin = std::sync::Arc::new(console(&proxy, "ops", OPS_PASSWORD).await);
    let drain = {
        let admin = std::sync::Arc::clone(&admin);
        tokio::spawn(async move { admin.simple_query("DRAIN acme").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!drain.is_finished(), "DRAIN waits for the open transaction");
    let held = {
        let later = std::sync::Arc::clone(&later);
        tokio::spawn(async move { one(&later, "SELECT 'after'").await })
    };
    // The running transaction goes on and finishes.
    assert_eq!(one(&busy, "SELECT 'still running'").await, "still running");
    busy.simple_query("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("DRAIN returns once the transaction ended")
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "new transactions wait after DRAIN");
    admin.simple_query("RESUME TENANT acme").await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .unwrap()
            .unwrap(),
        "after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_closes_idle_clients_with_57p01_and_cuts_running_ones() {
    let db = pg().database("kill");
    let proxy = start(&operable(&db, "")).await;
    let config = proxy.client_config("app.acme", APP_PASSWORD, &db);
    let (idle, idle_conn) = connect_watched(&config).await;
    let (stuck, stuck_conn) = connect_watched(&config).await;
    let other = proxy.connect("initech", &db).await;
    one(&idle, "SELECT 1").await;
    stuck
        .simple_query("BEGIN; SELECT pg_backend_pid()")
        .await
        .unwrap();
    let superuser = pg().superuser(&db).await;
    let admin = console(&proxy, "ops", OPS_PASSWORD).await;
    admin.simple_query("KILL acme").await.unwrap();

    let ended = tokio::time::timeout(Duration::from_secs(5), idle_conn)
        .await
        .unwrap()
        .unwrap();
    let e = ended.expect_err("the idle client is told why");
    assert_eq!(code(&e), "57P01");
    let message = e.as_db_error().unwrap().message();
    assert!(message.contains("administrator command"), "{message}");
    tokio::time::timeout(Duration::from_secs(5), stuck_conn)
        .await
        .expect("the client in a transaction is cut")
        .unwrap()
        .ok();
    assert!(stuck.simple_query("SELECT 1").await.is_err());
    // Its server was closed, not returned with an open transaction.
    assert_eq!(
        open_transactions(&superuser).await,
        0,
        "no transaction left open on a server"
    );
    assert_eq!(one(&other, "SELECT 'untouched'").await, "untouched");
    let again = proxy.connect("acme", &db).await;
    assert_eq!(
        one(&again, "SELECT current_setting('app.current_tenant')").await,
        "acme",
        "KILL does not ban the tenant"
    );
}

/// Bad HTTP input gets a clear status or a close, and the listener goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_refuses_bad_requests_and_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = pg().database("http");
    let proxy = start(&operable(&db, "")).await;
    let addr = proxy.metrics.unwrap();
    let raw = |request: Vec<u8>| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(&request).await;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        response
    };
    let post = raw(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    let head = raw(b"HEAD /healthz HTTP/1.1\r\n\r\n".to_vec()).await;
    assert!(
        head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"),
        "HEAD has no body: {head:?}"
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    assert_eq!(
        raw(huge).await,
        "",
        "an oversized request is closed unanswered"
    );
    assert_eq!(
        raw(b"\x16\x03\x01garbage\r\n\r\n".to_vec())
            .await
            .split(' ')
            .nth(1),
        Some("405")
    );
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
}

/// KILL of a client queued for a server: it leaves the queue, and the pool's
/// capacity is intact for everyone after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_a_queued_client_leaks_no_pool_capacity() {
    let db = pg().database("kill_queued");
    let proxy = start(&operable(&db, "")).await;
    let holder = proxy.connect("acme", &db).await;
    let queued = std::sync::Arc::new(proxy.connect("acme", &db).await);
    holder.simple_query("BEGIN; SELECT 1").await.unwrap();
    // free: max_tenant_share 1, so acme's second transaction queues.
    let waiting = {
        let queued = std::sync::Arc::clone(&queued);
        tokio::spawn(async move { queued.simple_query("SELECT 1").await })
    };
    let admin = console(&proxy, "ops", OPS_PASSWORD).await;
    for _ in 0..100 {
        let clients = show(&admin, "CLIENTS").await;
        if clients.iter().any(|r| field(r, "state") == "waiting") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin.simple_query("KILL acme").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .is_err()
    );
    let pools = show(&admin, "POOLS").await;
    let free = pools.iter().find(|r| field(r, "tier") == "free").unwrap();
    assert_eq!(
        (field(free, "cl_waiting"), field(free, "sv_active")),
        ("0", "0"),
        "{free:?}"
    );
    // Both servers of the free pool can be used again.
    let (a, u) = (
        proxy.connect("acme", &db).await,
        proxy.connect("umbrella", &db).await,
    );
    a.simple_query("BEGIN; SELECT 1").await.unwrap();
    u.simple_query("BEGIN; SELECT 1").await.unwrap();
    a.simple_query("COMMIT").await.unwrap();
    u.simple_query("COMMIT").await.unwrap();
}
