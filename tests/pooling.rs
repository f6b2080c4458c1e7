//! Transaction pooling against a real PostgreSQL: isolation under sharing,
//! dirty servers, pool limits, fairness, timeouts, cancel.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{
    APP_PASSWORD, Proxy, code, config, demo_config, one, one_server_two_workers, pg, raw_login,
    server_connections, servers_move_between_workers, start, start_tier, tenants,
};

/// A tier `tier` with a pool of one server, which acme holds in an open
/// transaction: the next client's statement queues (until `queue_timeout`).
async fn pool_held(
    prefix: &str,
    tier: &str,
    queue_timeout: &str,
) -> (String, Proxy, tokio_postgres::Client) {
    let db = pg().database(prefix);
    let proxy = start_tier(
        &db,
        tier,
        &format!("{{ pool_size: 1, queue_timeout: {queue_timeout} }}"),
    )
    .await;
    let holder = proxy.connect("acme", &db).await;
    holder.batch_execute("BEGIN").await.unwrap();
    (db, proxy, holder)
}

/// All four tenants share one pool of one server: every statement must still
/// see only its tenant's rows, its own setting, and (for the schema tenant) its
/// own schema through its role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_sharing_one_server_each_see_only_their_own_rows() {
    let db = pg().database("iso");
    let proxy = Arc::new(start_tier(&db, "one", "{ pool_size: 1, queue_timeout: 30s }").await);
    let mut tasks = Vec::new();
    for tenant in ["acme", "umbrella", "initech", "globex"] {
        for _ in 0..4 {
            let (proxy, db) = (Arc::clone(&proxy), db.clone());
            tasks.push(tokio::spawn(async move {
                let client = proxy.connect(tenant, &db).await;
                for _ in 0..10 {
                    let seen = one(
                        &client,
                        "SELECT current_setting('app.current_tenant') || ':' || \
                         (SELECT string_agg(DISTINCT tenant_id, ',') FROM public.products) || ':' || current_user",
                    )
                    .await;
                    let role = if tenant == "globex" { "tenant_globex" } else { "pgtenant_app" };
                    assert_eq!(seen, format!("{tenant}:{tenant}:{role}"));
                    // Interleave explicit transactions with autocommit statements.
                    client.batch_execute("BEGIN").await.unwrap();
                    let in_tx = one(&client, "SELECT count(*) FROM public.offers").await;
                    assert_eq!(in_tx, "2", "{tenant} sees other tenants' offers");
                    client.batch_execute("COMMIT").await.unwrap();
                    if tenant == "globex" {
                        assert_eq!(one(&client, "SELECT string_agg(sku, ',' ORDER BY sku) FROM products").await, "GX-1,GX-2");
                    } else {
                        let err = client.simple_query("SELECT * FROM globex.products").await.unwrap_err();
                        assert_eq!(code(&err), "42501", "{tenant} read another tenant's schema");
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A server opened on one worker serves a session on another: its socket
/// moves between the workers' event loops, over TCP and over PostgreSQL's
/// Unix-domain socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_moves_between_workers_with_its_tenant_context() {
    let db = pg().database("moves");
    let socket_dir = pg().pg.dir().display().to_string();
    for host in ["127.0.0.1", socket_dir.as_str()] {
        let proxy = start(&one_server_two_workers(&db, host, "")).await;
        servers_move_between_workers(&proxy, &db).await;
    }
}

/// A client that disappears inside `BEGIN; UPDATE …` must not hand its open
/// transaction (or its row lock) to the next tenant on that server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_transaction_never_returns_its_server_dirty() {
    let db = pg().database("kill");
    let proxy = start_tier(&db, "one", "{ pool_size: 1, queue_timeout: 10s }").await;
    for drop_kind in ["terminate", "eof"] {
        let (client, conn) = proxy
            .client_config("app.acme", common::APP_PASSWORD, &db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        client
            .batch_execute(
                "BEGIN; UPDATE products SET price = price + 1 WHERE name = 'acme widget'",
            )
            .await
            .unwrap();
        match drop_kind {
            // Dropping the client sends Terminate; aborting the task just closes the socket.
            "terminate" => drop(client),
            _ => {
                conn.abort();
                drop(client);
            }
        }
        next_tenant_finds_the_server_clean(&proxy, &db, drop_kind).await;
    }
}

/// A client whose connection is reset while its result is being written (the
/// proxy's write to it fails with `ECONNRESET`: the first non-blocking `send`
/// took what the socket could hold, the async write after it fails) leaves no
/// open transaction behind: its server is not returned dirty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_while_its_result_is_written_never_returns_its_server_dirty() {
    let db = pg().database("reset");
    let proxy = start_tier(&db, "one", "{ pool_size: 1, queue_timeout: 10s }").await;
    let mut raw = raw_login(proxy.port, "app.acme", APP_PASSWORD, &db).await;
    // Far more than the socket buffers hold: the proxy is still writing when
    // the reset arrives.
    let mut query = BytesMut::new();
    frontend::query(
        "BEGIN; UPDATE products SET price = price + 1 WHERE name = 'acme widget'; \
         SELECT repeat('x', 16000000)",
        &mut query,
    )
    .unwrap();
    raw.write_all(&query).await.unwrap();
    let mut first = [0u8; 64];
    raw.read_exact(&mut first).await.unwrap();
    raw.set_zero_linger().unwrap();
    drop(raw);
    next_tenant_finds_the_server_clean(&proxy, &db, "reset").await;
}

/// The pool's one server, after acme's client vanished inside `BEGIN;
/// UPDATE …`: the next tenant gets its own context outside any transaction,
/// and the update was rolled back, its row lock gone.
async fn next_tenant_finds_the_server_clean(proxy: &common::Proxy, db: &str, how: &str) {
    let next = proxy.connect("umbrella", db).await;
    let state = one(
        &next,
        "SELECT current_setting('app.current_tenant') || ':' || (now() = statement_timestamp())",
    )
    .await;
    assert_eq!(
        state, "umbrella:true",
        "next tenant inherited a transaction ({how})"
    );
    let su = pg().superuser(db).await;
    let row = su
        .query_one(
            "SELECT price::text FROM products WHERE name = 'acme widget' FOR UPDATE NOWAIT",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("row lock survived ({how}): {e}"));
    let price: String = row.get(0);
    assert_eq!(
        price, "10.00",
        "the dead client's update was committed ({how})"
    );
}

/// Twenty clients on a pool of two: PostgreSQL never sees more than two
/// connections from the proxy, and every transaction completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_two_serves_twenty_clients_with_two_connections() {
    let db = pg().database("size");
    let proxy = Arc::new(start_tier(&db, "two", "{ pool_size: 2, queue_timeout: 30s }").await);
    let su = pg().superuser(&db).await;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (proxy, db, done) = (Arc::clone(&proxy), db.clone(), Arc::clone(&done));
        let tenant = ["acme", "umbrella", "initech", "globex"][i % 4];
        tasks.push(tokio::spawn(async move {
            let client = proxy.connect(tenant, &db).await;
            for _ in 0..5 {
                client
                    .batch_execute("BEGIN; SELECT pg_sleep(0.01); COMMIT")
                    .await
                    .unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut most = 0i64;
    while done.load(Ordering::Relaxed) < 100 {
        most = most.max(server_connections(&su).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 100);
    assert!(most <= 2, "saw {most} server connections for a pool of 2");
    assert!(most >= 1, "the monitor never saw a server connection");
}

/// One tenant with fifty queued clients must not hold another tenant's single
/// client back by more than about one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenant_does_not_starve_a_quiet_one() {
    let db = pg().database("fair");
    let proxy = Arc::new(start_tier(&db, "one", "{ pool_size: 1, queue_timeout: 60s }").await);
    let noisy_done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut noisy = Vec::new();
    for _ in 0..50 {
        let (proxy, db, done, stop) = (
            Arc::clone(&proxy),
            db.clone(),
            Arc::clone(&noisy_done),
            Arc::clone(&stop),
        );
        noisy.push(tokio::spawn(async move {
            let client = proxy.connect("acme", &db).await;
            while !stop.load(Ordering::Relaxed) {
                client.batch_execute("SELECT pg_sleep(0.01)").await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let quiet = proxy.connect("umbrella", &db).await;
    // Let the noisy tenant fill the queue.
    while noisy_done.load(Ordering::Relaxed) < 60 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut worst = 0;
    for _ in 0..5 {
        let before = noisy_done.load(Ordering::Relaxed);
        quiet.batch_execute("SELECT 1").await.unwrap();
        worst = worst.max(noisy_done.load(Ordering::Relaxed) - before);
    }
    stop.store(true, Ordering::Relaxed);
    for t in noisy {
        t.await.unwrap();
    }
    // The one running when we queued, plus at most one more taking its turn.
    assert!(
        worst <= 3,
        "quiet tenant waited behind {worst} noisy transactions"
    );
}

/// The tier's statement_timeout is set on the server and cancels long queries;
/// the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_statement_timeout_cancels_and_the_session_survives() {
    let db = pg().database("stmt");
    let proxy = start_tier(&db, "quick", "{ pool_size: 1, statement_timeout: 200ms }").await;
    let client = proxy.connect("acme", &db).await;
    let started = Instant::now();
    let err = client.simple_query("SELECT pg_sleep(1)").await.unwrap_err();
    assert_eq!(code(&err), "57014");
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(one(&client, "SHOW statement_timeout").await, "200ms");
    assert_eq!(one(&client, "SELECT 41 + 1").await, "42");
}

/// A transaction that waits longer than queue_timeout gets 53300 naming the
/// tier, and the session stays usable once the pool frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timeout_fails_the_statement_not_the_session() {
    let (db, proxy, holder) = pool_held("queue", "tiny", "200ms").await;
    let waiter = proxy.connect("umbrella", &db).await;
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), "53300");
    assert!(
        err.as_db_error().unwrap().message().contains("\"tiny\""),
        "{err}"
    );
    // Extended protocol too: the error, then the session resynchronises at Sync.
    let err = waiter
        .query_typed(
            "SELECT $1::int",
            &[(&1i32, tokio_postgres::types::Type::INT4)],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), "53300");
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        one(&waiter, "SELECT current_setting('app.current_tenant')").await,
        "umbrella"
    );
    let stats = proxy
        .deps
        .runtime
        .load()
        .pools
        .iter()
        .map(|(_, p)| p.stats().waiting)
        .sum::<u32>();
    assert_eq!(stats, 0, "timed-out waiters were left in the queue");
}

/// A cancel from the client reaches the server running its query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_running_query() {
    let db = pg().database("cancel");
    let proxy = start(&demo_config(&db)).await;
    let client = proxy.connect("initech", &db).await;
    common::cancel_a_running_query(&client).await;
}

/// Settings a client SETs follow that client and never reach the next client
/// of the same server; state that cannot follow it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_never_leaks_to_the_next_client() {
    let db = pg().database("leak");
    let proxy = start_tier(&db, "one", "{ pool_size: 1, statement_timeout: 3s }").await;
    let a = proxy.connect("acme", &db).await;
    let b = proxy.connect("acme", &db).await;
    // Another tenant of the tier: switching to it sets only the tenant's part
    // of the context, and the tier's settings must still be back in force.
    let c = proxy.connect("umbrella", &db).await;
    let zone = one(&b, "SHOW TimeZone").await;
    a.batch_execute(
        "SET work_mem = '77MB'; SET statement_timeout = 1000; SET TimeZone = 'Asia/Tokyo'; SET app.feature_flag = 'on'",
    )
    .await
    .unwrap();
    let err = a
        .batch_execute("SET statement_timeout = 0")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501");
    let err = a
        .batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "0A000");
    for _ in 0..2 {
        assert_eq!(one(&b, "SHOW work_mem").await, "4MB");
        assert_eq!(one(&b, "SHOW statement_timeout").await, "3s");
        assert_eq!(one(&b, "SHOW TimeZone").await, zone);
        assert_eq!(
            one(
                &b,
                "SELECT coalesce(current_setting('app.feature_flag', true), '')"
            )
            .await,
            ""
        );
        assert_eq!(
            one(&b, "SELECT current_setting('app.current_tenant')").await,
            "acme"
        );
        assert_eq!(one(&a, "SHOW statement_timeout").await, "1s");
        assert_eq!(one(&c, "SHOW statement_timeout").await, "3s");
        assert_eq!(one(&c, "SHOW work_mem").await, "4MB");
        assert_eq!(
            one(&c, "SELECT current_setting('app.current_tenant')").await,
            "umbrella"
        );
        assert_eq!(one(&a, "SHOW work_mem").await, "77MB");
        assert_eq!(one(&a, "SHOW statement_timeout").await, "1s");
        assert_eq!(one(&a, "SHOW TimeZone").await, "Asia/Tokyo");
        assert_eq!(one(&a, "SHOW app.feature_flag").await, "on");
    }
    // RESET goes back to the default for this client only.
    a.batch_execute("RESET work_mem").await.unwrap();
    assert_eq!(one(&a, "SHOW work_mem").await, "4MB");
    // A SET rolled back with its transaction is not kept.
    a.batch_execute("BEGIN; SET TimeZone = 'UTC'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(one(&a, "SHOW TimeZone").await, "Asia/Tokyo");
    assert_eq!(one(&b, "SHOW TimeZone").await, zone);
}

/// An idle server that already carries a tenant's context goes to that
/// tenant's next transaction, sparing PostgreSQL the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_with_the_tenants_context_is_preferred() {
    let db = pg().database("affinity");
    let proxy = start_tier(&db, "two", "{ pool_size: 2 }").await;
    let a = proxy.connect("acme", &db).await;
    let u = proxy.connect("umbrella", &db).await;
    // Both in a transaction at once: each holds one of the two servers.
    a.batch_execute("BEGIN").await.unwrap();
    u.batch_execute("BEGIN").await.unwrap();
    let a_pid = one(&a, "SELECT pg_backend_pid()").await;
    let u_pid = one(&u, "SELECT pg_backend_pid()").await;
    assert_ne!(a_pid, u_pid);
    a.batch_execute("COMMIT").await.unwrap();
    u.batch_execute("COMMIT").await.unwrap();
    // Each time, the other tenant's server went idle last: the most recently
    // used one would be the wrong one.
    for _ in 0..3 {
        assert_eq!(one(&a, "SELECT pg_backend_pid()").await, a_pid);
        assert_eq!(one(&u, "SELECT pg_backend_pid()").await, u_pid);
    }
}

/// An idle server that died (terminated by an admin) is replaced, never handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_idle_server_is_replaced() {
    let db = pg().database("dead");
    let proxy = start_tier(&db, "one", "{ pool_size: 1 }").await;
    let client = proxy.connect("acme", &db).await;
    let first = one(&client, "SELECT pg_backend_pid()").await;
    let su = pg().superuser(&db).await;
    su.execute(&format!("SELECT pg_terminate_backend({first})"), &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = one(&client, "SELECT pg_backend_pid()").await;
    assert_ne!(first, second);
}

/// An idle server that died while registered with another worker's event loop
/// is replaced there too: the session on the other worker gets a new server
/// with its own tenant, and the dead one is not counted as moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_idle_server_of_another_worker_is_replaced() {
    let db = pg().database("dead_moves");
    let proxy = start(&one_server_two_workers(&db, "127.0.0.1", "")).await;
    // Sessions go to the two workers in turn.
    let acme = proxy.connect("acme", &db).await;
    let globex = proxy.connect("globex", &db).await;
    let first = one(&acme, "SELECT pg_backend_pid()").await;
    let su = pg().superuser(&db).await;
    su.execute(&format!("SELECT pg_terminate_backend({first})"), &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sql = "SELECT current_setting('app.current_tenant') || ' ' || pg_backend_pid()";
    let row = one(&globex, sql).await;
    let (tenant, second) = row.split_once(' ').unwrap();
    assert_eq!(tenant, "globex");
    assert_ne!(second, first);
    let moves: u64 = (proxy.deps.runtime.load().pools.iter())
        .map(|(_, pool)| pool.metrics.server_moves.get())
        .sum();
    assert_eq!(moves, 0, "the dead server was moved");
}

/// Replacing dead idle servers must not leak pool capacity: after both servers
/// of a pool of two die, two transactions can still run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_dead_servers_keeps_the_pool_whole() {
    let db = pg().database("whole");
    let proxy = start_tier(
        &db,
        "two",
        "{ pool_size: 2, max_tenant_share: 2, queue_timeout: 2s }",
    )
    .await;
    let (a, b) = (
        proxy.connect("acme", &db).await,
        proxy.connect("acme", &db).await,
    );
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let pids = [
        one(&a, "SELECT pg_backend_pid()").await,
        one(&b, "SELECT pg_backend_pid()").await,
    ];
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    let su = pg().superuser(&db).await;
    for pid in pids {
        su.execute(&format!("SELECT pg_terminate_backend({pid})"), &[])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(one(&a, "SELECT 1").await, "1");
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN")
        .await
        .expect("the pool lost a server's worth of capacity");
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
}

/// A tier's min_pool_size servers are opened in the background and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_servers_are_opened_ahead_of_demand() {
    let db = pg().database("minpool");
    let _proxy = start_tier(&db, "warm", "{ pool_size: 3, min_pool_size: 2 }").await;
    let su = pg().superuser(&db).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = server_connections(&su).await;
        if n == 2 {
            break;
        }
        assert!(n < 2, "opened {n} servers for min_pool_size 2");
        assert!(
            Instant::now() < deadline,
            "min_pool_size servers were not opened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clients queued in any of `proxy`'s pools.
fn waiting(proxy: &Proxy) -> u32 {
    (proxy.deps.runtime.load().pools.iter())
        .map(|(_, p)| p.stats().waiting)
        .sum()
}

/// Waits until the count of queued clients satisfies `wanted`, failing with
/// `why` after `limit`.
async fn until_waiting(proxy: &Proxy, wanted: impl Fn(u32) -> bool, limit: Duration, why: &str) {
    let deadline = Instant::now() + limit;
    while !wanted(waiting(proxy)) {
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that goes away while queued leaves the queue at once, not at its
/// queue timeout: closed (a FIN: its wait's read-ahead ends) or reset (an RST:
/// the read-ahead fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_while_queued_leaves_no_waiter() {
    let (db, proxy, holder) = pool_held("gone", "slow", "60s").await;
    let secs = Duration::from_secs;
    for reset in [false, true] {
        let mut raw = raw_login(proxy.port, "app.umbrella", APP_PASSWORD, &db).await;
        let mut query = BytesMut::new();
        frontend::query("SELECT 1", &mut query).unwrap();
        raw.write_all(&query).await.unwrap();
        until_waiting(&proxy, |n| n > 0, secs(5), "the client never queued").await;
        if reset {
            raw.set_zero_linger().unwrap();
        }
        drop(raw);
        let why = format!("a vanished client is still queued (reset: {reset})");
        until_waiting(&proxy, |n| n == 0, secs(2), &why).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
}

/// A queued client that sends more than the proxy reads ahead while it waits
/// (1 MiB) is served whole once a server frees: the wait stops reading, sits
/// idle (no spinning on a full buffer) and still wakes for the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_client_past_the_read_ahead_limit_is_served_whole() {
    let (db, proxy, holder) = pool_held("aheadlimit", "slow", "60s").await;
    let waiter = proxy.connect("umbrella", &db).await;
    let big = format!("SELECT length('{}')", "x".repeat(3 << 20));
    let query = tokio::spawn(async move { common::one(&waiter, &big).await });
    // Long enough for the client to send its 3 MiB and the wait to stop reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!query.is_finished(), "served while the pool was full");
    // This process (the proxy, the drivers) waits: it must not burn a core.
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let fields: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1]
    };
    let before = cpu();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ticks = cpu() - before;
    assert!(
        ticks < 50,
        "{ticks} clock ticks of CPU in a second of waiting"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let length = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the queued client was never served")
        .unwrap();
    assert_eq!(length, (3 << 20).to_string());
}

/// The tenant context fails at run time (the DBA revoked the role after start):
/// the client gets FATAL 08006 and never runs as anyone else; the server is
/// closed, and other tenants on the same pool carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tenant_context_closes_the_client_and_the_server() {
    let db = pg().database("ctxfail");
    pg().psql(
        "postgres",
        "CREATE ROLE tenant_flaky NOLOGIN; GRANT tenant_flaky TO pgtenant_app",
    );
    let tiers = "\n  one: { pool_size: 1, queue_timeout: 5s }";
    let tenants = tenants("one", "one", "one", "one")
        + "  flaky: { tier: one, cluster: main, role: tenant_flaky }\n";
    let proxy = start(&config(&db, tiers, &tenants)).await;
    let flaky = proxy.connect("flaky", &db).await;
    pg().psql("postgres", "REVOKE tenant_flaky FROM pgtenant_app");
    let err = flaky.simple_query("SELECT current_user").await.unwrap_err();
    assert_eq!(code(&err), "08006", "{err}");
    assert!(flaky.is_closed() || flaky.simple_query("SELECT 1").await.is_err());
    let acme = proxy.connect("acme", &db).await;
    assert_eq!(
        one(
            &acme,
            "SELECT current_setting('app.current_tenant') || ':' || current_user"
        )
        .await,
        "acme:pgtenant_app"
    );
    let again = proxy.connect("flaky", &db).await;
    assert_eq!(
        code(&again.simple_query("SELECT 1").await.unwrap_err()),
        "08006"
    );
}

/// The server dies in the middle of a client's transaction: that client is told
/// and disconnected, and the pool's capacity is intact for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dying_mid_transaction_disconnects_only_its_client() {
    let db = pg().database("srvdie");
    let proxy = start_tier(&db, "one", "{ pool_size: 1, queue_timeout: 3s }").await;
    let victim = proxy.connect("acme", &db).await;
    victim.batch_execute("BEGIN").await.unwrap();
    let pid = one(&victim, "SELECT pg_backend_pid()").await;
    let su = pg().superuser(&db).await;
    su.execute(&format!("SELECT pg_terminate_backend({pid})"), &[])
        .await
        .unwrap();
    let err = victim.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.as_db_error()
            .is_none_or(|d| ["57P01", "08006"].contains(&d.code().code())),
        "{err}"
    );
    let other = proxy.connect("umbrella", &db).await;
    assert_eq!(
        one(&other, "SELECT current_setting('app.current_tenant')").await,
        "umbrella"
    );
}

/// `pool_mode: session` (here on one tenant): the client keeps one server for
/// its connection, so temp tables, LISTEN and session locks work across its
/// transactions; when it leaves, the server is reset before the next tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_server_and_resets_it_after() {
    let db = pg().database("session_mode");
    let tenants = tenants("one", "one", "one", "one").replace(
        "acme:     { tier: one, cluster: main }",
        "acme:     { tier: one, cluster: main, pool_mode: session }",
    );
    let proxy = start(&config(
        &db,
        "\n  one: { pool_size: 1, queue_timeout: 500ms }",
        &tenants,
    ))
    .await;
    let acme = proxy.connect("acme", &db).await;
    acme.batch_execute(
        "CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1); LISTEN jobs; SELECT pg_advisory_lock(42)",
    )
    .await
    .unwrap();
    let pid = one(&acme, "SELECT pg_backend_pid()").await;
    assert_eq!(one(&acme, "SELECT count(*) FROM scratch").await, "1");
    assert_eq!(one(&acme, "SELECT pg_backend_pid()").await, pid);
    // The one server is held: another tenant waits and times out meanwhile.
    let umbrella = proxy.connect("umbrella", &db).await;
    let err = umbrella.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), "53300");
    // A transaction-mode tenant is still refused session-only features.
    drop(acme);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let err = umbrella
        .batch_execute("CREATE TEMP TABLE t (x int)")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "0A000");
    assert_eq!(one(&umbrella, "SELECT pg_backend_pid()").await, pid);
    assert_eq!(
        one(
            &umbrella,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'"
        )
        .await,
        "0"
    );
    assert_eq!(
        one(
            &umbrella,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        )
        .await,
        "0"
    );
    assert_eq!(
        one(&umbrella, "SELECT count(*) FROM pg_listening_channels()").await,
        "0"
    );
    assert_eq!(
        one(&umbrella, "SELECT current_setting('app.current_tenant')").await,
        "umbrella"
    );
}

/// `pool_mode` per user, over the tenant's and the tier's: a tenant's own user
/// and a shared user run in session mode while `app.<tenant>` of the same
/// tenants stays in transaction mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_mode_per_user_overrides_tenant_and_tier() {
    let db = pg().database("user_pool_mode");
    let verifier = postgres_protocol::password::scram_sha_256(APP_PASSWORD.as_bytes());
    let tenants = tenants("one", "one", "one", "one").replace(
        "acme:     { tier: one, cluster: main }",
        &format!(
            "acme:     {{ tier: one, cluster: main, users: {{ acme_worker: {{ password: \"{verifier}\", pool_mode: session }} }} }}"
        ),
    );
    let yaml = config(&db, "\n  one: { pool_size: 3 }", &tenants).replace(
        "    app: {",
        &format!("    worker: {{ password: \"{verifier}\", pool_mode: session }}\n    app: {{"),
    );
    let proxy = start(&yaml).await;
    for (user, tenant) in [("acme_worker", "acme"), ("worker.umbrella", "umbrella")] {
        let client = proxy.try_connect(user, APP_PASSWORD, &db).await.unwrap();
        client
            .batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
            .await
            .unwrap();
        assert_eq!(
            one(&client, "SELECT count(*) FROM scratch").await,
            "1",
            "{user}"
        );
        assert_eq!(
            one(&client, "SELECT current_setting('app.current_tenant')").await,
            tenant
        );
    }
    let app = proxy.connect("acme", &db).await;
    let err = app
        .batch_execute("CREATE TEMP TABLE t (x int)")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "0A000", "app.acme stays in transaction mode");
}
