//! Escape attempts: a tenant trying to reach another tenant's data by changing
//! or wiping the context the proxy sets. Each attempt must fail with the
//! proxy's 42501 (not merely PostgreSQL's), after which the attacker still sees
//! only its own rows, and a client of another tenant sharing the same (single)
//! server is unaffected.

mod common;

use bytes::BytesMut;
use common::*;
use postgres_protocol::message::frontend;
use tokio_postgres::Client;

/// Statements sent as simple queries by tenant `acme`. The database lets the
/// login role create functions and alter itself, so that what stops these is
/// the proxy's guard.
const ATTEMPTS: &[&str] = &[
    "SET app.current_tenant = 'umbrella'",
    "set APP.CURRENT_TENANT to 'umbrella'",
    "SeT   app.current_tenant\n=\t'umbrella'",
    "SET \"app.current_tenant\" = 'umbrella'",
    "SET app . current_tenant = 'umbrella'",
    "/* harmless */ SET app.current_tenant = 'umbrella'",
    "-- comment\nSET app.current_tenant = 'umbrella'",
    "SET LOCAL app.current_tenant = 'umbrella'",
    "SET SESSION app.current_tenant = 'umbrella'",
    "RESET app.current_tenant",
    "RESET ALL",
    "SELECT 1; SET app.current_tenant = 'umbrella'; SELECT 2",
    "SELECT * FROM products WHERE name = '1'; SET app.current_tenant = 'umbrella'; --'",
    "BEGIN; SET LOCAL app.current_tenant = 'umbrella'; SELECT * FROM products; COMMIT",
    "SELECT set_config('app.current_tenant', 'umbrella', false)",
    "SELECT set_config('app.current_tenant', 'umbrella', true)",
    "SELECT pg_catalog.set_config('App.Current_Tenant', 'umbrella', false)",
    "SELECT \"pg_catalog\".\"set_config\"('app.current_tenant', 'umbrella', false)",
    "SELECT U&\"\\0073et_config\"('app.current_tenant', 'umbrella', false)",
    "SELECT set_config(chr(97) || 'pp.current_tenant', 'umbrella', false)",
    "SELECT * FROM products WHERE set_config('app.current_tenant', 'umbrella', false) IS NOT NULL",
    "SELECT (SELECT set_config('app.current_tenant', 'umbrella', false))",
    "WITH x AS (SELECT set_config('app.current_tenant', 'umbrella', false)) SELECT * FROM x, products",
    "SELECT * FROM set_config('app.current_tenant', 'umbrella', false)",
    "EXPLAIN ANALYZE SELECT set_config('app.current_tenant', 'umbrella', false)",
    "UPDATE pg_settings SET setting = 'umbrella' WHERE name = 'app.current_tenant'",
    "SET search_path = globex, public",
    "SET SCHEMA 'globex'",
    "SELECT set_config('search_path', 'globex', false)",
    "SET ROLE tenant_globex",
    "SET ROLE NONE",
    "RESET ROLE",
    "SET SESSION AUTHORIZATION pgtenant_app",
    "RESET SESSION AUTHORIZATION",
    "SELECT set_config('role', 'tenant_globex', false)",
    "ALTER ROLE CURRENT_USER SET app.current_tenant = 'umbrella'",
    "ALTER ROLE CURRENT_USER RESET ALL",
    "DO $$ BEGIN PERFORM set_config('app.current_tenant', 'umbrella', false); END $$",
    "DO $$ BEGIN SET app.current_tenant = 'umbrella'; END $$",
    "DO $$ BEGIN EXECUTE 'SET app.cur' || 'rent_tenant = ''umbrella'''; END $$",
    "DO $$ DECLARE s text := 'SE' || 'T ROLE tenant_globex'; BEGIN EXECUTE s; END $$",
    "CREATE FUNCTION public.become() RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.current_tenant', 'umbrella', false) $$",
    "CREATE FUNCTION public.become() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('app.current_tenant', 'umbrella', false); END",
    "CREATE FUNCTION public.become() RETURNS int LANGUAGE sql SET app.current_tenant = 'umbrella' AS 'SELECT 1'",
    "CREATE VIEW public.become AS SELECT set_config('app.current_tenant', 'umbrella', false)",
];

/// acme and umbrella share one tier with a single server.
async fn setup(name: &str) -> (Proxy, String) {
    let db = pg().database(name);
    pg().psql(
        &db,
        "GRANT CREATE ON SCHEMA public TO pgtenant_app; \
         CREATE TABLE public.allowed (x int); GRANT ALL ON public.allowed TO PUBLIC",
    );
    let proxy = start(&config(
        &db,
        "\n  one: { pool_size: 1, queue_timeout: 10s }",
        &tenants("one", "one", "one", "one"),
    ))
    .await;
    (proxy, db)
}

/// What a client of `tenant` sees: its setting, role, search_path and the
/// tenants whose rows it can read.
async fn assert_sees_only_itself(client: &Client, tenant: &str, after: &str) {
    let seen = one(
        client,
        "SELECT current_setting('app.current_tenant') || '|' || current_user || '|' || \
         current_setting('search_path') || '|' || \
         (SELECT string_agg(DISTINCT tenant_id, ',') FROM public.products)",
    )
    .await;
    assert_eq!(
        seen,
        format!("{tenant}|pgtenant_app|\"$user\", public|{tenant}"),
        "{tenant} after {after:?}"
    );
}

fn assert_guard_refused(err: &tokio_postgres::Error, attempt: &str) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{attempt:?}: {err}"));
    assert_eq!(db.code().code(), "42501", "{attempt:?}: {}", db.message());
    assert!(
        db.message().contains("pgtenant"),
        "{attempt:?} was refused by PostgreSQL, not by the guard: {}",
        db.message()
    );
    assert!(
        !db.message().contains("umbrella") && !db.message().contains("globex"),
        "the error names another tenant: {}",
        db.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_attempt_fails_and_changes_nothing() {
    assert!(ATTEMPTS.len() >= 40);
    let (proxy, db) = setup("escape_sql").await;
    let acme = proxy.connect("acme", &db).await;
    let umbrella = proxy.connect("umbrella", &db).await;
    for attempt in ATTEMPTS {
        let err = acme.batch_execute(attempt).await.unwrap_err();
        assert_guard_refused(&err, attempt);
        assert_sees_only_itself(&acme, "acme", attempt).await;
        assert_sees_only_itself(&umbrella, "umbrella", attempt).await;
    }
    // Nothing was created or altered by the refused statements.
    let su = pg().superuser(&db).await;
    let leftovers = su
        .query_one(
            "SELECT (SELECT count(*) FROM pg_proc WHERE proname = 'become') + \
                    (SELECT count(*) FROM pg_class WHERE relname = 'become') + \
                    (SELECT count(*) FROM pg_db_role_setting)",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(leftovers, 0);
    // Ordinary work, a harmless function and harmless settings still run.
    acme.batch_execute(
        "CREATE FUNCTION public.add1(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1'; \
         SET TimeZone = 'UTC'; SELECT set_config('app.feature_flag', 'on', false); \
         INSERT INTO public.allowed VALUES (1)",
    )
    .await
    .unwrap();
    assert_eq!(one(&acme, "SELECT public.add1(41)").await, "42");
}

/// The same attempts through the extended protocol (as a driver's prepared
/// statement), and a `set_config` whose name arrives as a parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_attempts_fail_as_prepared_statements_too() {
    let (proxy, db) = setup("escape_prepared").await;
    let acme = proxy.connect("acme", &db).await;
    let umbrella = proxy.connect("umbrella", &db).await;
    for attempt in ATTEMPTS.iter().filter(|a| !a.contains(';')) {
        let err = acme.prepare(attempt).await.unwrap_err();
        assert_guard_refused(&err, attempt);
        assert_sees_only_itself(&acme, "acme", attempt).await;
    }
    let err = acme
        .query(
            "SELECT set_config($1, $2, false)",
            &[&"app.current_tenant", &"umbrella"],
        )
        .await
        .unwrap_err();
    assert_guard_refused(&err, "set_config($1, $2)");
    assert_sees_only_itself(&acme, "acme", "set_config($1, $2)").await;
    assert_sees_only_itself(&umbrella, "umbrella", "set_config($1, $2)").await;
}

/// A statement prepared by one tenant cannot be executed by another: names are
/// per client, and the server statement is keyed by the tenant's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_by_one_tenant_is_not_executable_by_another() {
    let (proxy, db) = setup("escape_statement").await;
    let umbrella = proxy.connect("umbrella", &db).await;
    let theirs = umbrella
        .prepare("SELECT string_agg(name, ',') FROM products")
        .await
        .unwrap();
    assert!(
        !umbrella
            .query_one(&theirs, &[])
            .await
            .unwrap()
            .get::<_, String>(0)
            .contains("acme"),
    );
    let mut acme = raw_login(proxy.port, "app.acme", APP_PASSWORD, &db).await;
    // tokio-postgres names its first statement "s0"; so might an attacker.
    for name in ["s0", "s1", "pgtenant_0", ""] {
        let out = bind_execute_sync(name);
        assert_eq!(
            exchange(&mut acme, &out, 1).await,
            ["E26000", "ZI"],
            "{name}"
        );
    }
    // Nor does the server-side name of umbrella's statement, read on the one
    // server they share.
    let server_name = one(
        &umbrella,
        "SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgtenant_%' LIMIT 1",
    )
    .await;
    let out = bind_execute_sync(&server_name);
    assert_eq!(exchange(&mut acme, &out, 1).await, ["E26000", "ZI"]);
}

/// Drivers that do not prepare send the same unnamed `Parse` with every
/// execution, and the proxy lets a clean text stand without judging it
/// again: an escape attempt sent the same way is refused every time, and
/// the clean text after it still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_unnamed_parse_is_refused_every_time_it_escapes() {
    let (proxy, db) = setup("escape_unnamed").await;
    let mut acme = raw_login(proxy.port, "app.acme", APP_PASSWORD, &db).await;
    let parse_bind_execute = |sql: &str| {
        let mut out = BytesMut::new();
        frontend::parse("", sql, [], &mut out).unwrap();
        out.extend_from_slice(&bind_execute_sync(""));
        out
    };
    let tenant = parse_bind_execute("SELECT current_setting('app.current_tenant')");
    let escape = parse_bind_execute("SELECT set_config('app.current_tenant', 'umbrella', false)");
    for _ in 0..3 {
        assert_eq!(
            exchange(&mut acme, &tenant, 1).await,
            ["1", "2", "Dacme", "CSELECT 1", "ZI"]
        );
        assert_eq!(exchange(&mut acme, &escape, 1).await, ["E42501", "ZI"]);
    }
    assert_eq!(
        exchange(&mut acme, &tenant, 1).await,
        ["1", "2", "Dacme", "CSELECT 1", "ZI"]
    );
}

/// `Bind` of statement `name`, `Execute`, `Sync`.
fn bind_execute_sync(name: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let no_params = |_: (), _: &mut BytesMut| Ok(postgres_protocol::IsNull::No);
    frontend::bind("", name, [], [], no_params, [], &mut out)
        .map_err(|_| ())
        .unwrap();
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    out
}

/// A cancel key guessed by another client never cancels someone else's query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guessed_cancel_key_cancels_nothing() {
    use tokio::io::AsyncWriteExt;
    let (proxy, db) = setup("escape_cancel").await;
    let victim = proxy.connect("umbrella", &db).await;
    let sleeping = tokio::spawn(async move {
        victim
            .simple_query("SELECT pg_sleep(1.5)")
            .await
            .map(|_| ())
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for guess in 0..200i32 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .unwrap();
        let mut out = BytesMut::new();
        frontend::cancel_request(guess, guess.wrapping_mul(7919), &mut out);
        s.write_all(&out).await.unwrap();
    }
    assert!(
        sleeping.await.unwrap().is_ok(),
        "a guessed key cancelled another client's query"
    );
}

/// SQL in startup parameters: the tenant setting, role or search_path are
/// refused at login, and an injection-shaped `application_name` is a value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_in_startup_parameters_changes_nothing() {
    let (proxy, db) = setup("escape_startup").await;
    for options in [
        "-c app.current_tenant=umbrella",
        "--app.current_tenant=umbrella",
        "-c role=tenant_globex",
        "-c search_path=globex",
        "-c session_authorization=postgres",
    ] {
        let mut config = proxy.client_config("app.acme", APP_PASSWORD, &db);
        config.options(options);
        let err = config.connect(tokio_postgres::NoTls).await.err().unwrap();
        assert_eq!(code(&err), "22023", "{options}");
    }
    let mut config = proxy.client_config("app.acme", APP_PASSWORD, &db);
    config.application_name("x'; SET app.current_tenant = 'umbrella'; --");
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    assert_sees_only_itself(&client, "acme", "application_name").await;
    assert_eq!(
        one(&client, "SELECT current_setting('application_name')").await,
        "x'; SET app.current_tenant = 'umbrella'; --"
    );
}
