//! Named prepared statements under transaction pooling: drivers keep using them
//! while their transactions move between shared servers.

mod common;

use bytes::BytesMut;
use common::*;
use postgres_protocol::message::frontend;

/// One tier with a single server, so every client shares it.
fn one_server_config(db: &str, extra_limits: &str) -> String {
    config(
        db,
        "\n  shared: { pool_size: 1 }",
        &tenants("shared", "shared", "shared", "shared"),
    )
    .replacen(
        "listen: 127.0.0.1:0\n",
        &format!("listen: 127.0.0.1:0\n{extra_limits}"),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_follow_clients_across_a_shared_server() {
    let db = pg().database("prep_shared");
    let proxy = start(&one_server_config(&db, "")).await;
    let acme = proxy.connect("acme", &db).await;
    let umbrella = proxy.connect("umbrella", &db).await;
    // tokio-postgres prepares every statement under a name of its own ("s0", "s1"…),
    // so the two clients use the same client names for different SQL.
    let a_org = acme
        .prepare("SELECT name FROM organizations")
        .await
        .unwrap();
    let u_cnt = umbrella
        .prepare("SELECT count(*) FROM products WHERE price::float8 > $1")
        .await
        .unwrap();
    let a_cnt = acme
        .prepare("SELECT count(*) FROM products WHERE price::float8 > $1")
        .await
        .unwrap();
    for i in 0..10 {
        let name: String = acme.query_one(&a_org, &[]).await.unwrap().get(0);
        assert_eq!(name, "Acme Inc.");
        let n: i64 = umbrella
            .query_one(&u_cnt, &[&15.0f64])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "umbrella has one product above 15 (round {i})");
        let n: i64 = acme.query_one(&a_cnt, &[&0.0f64]).await.unwrap().get(0);
        assert_eq!(n, 2);
        // A statement prepared and used inside one explicit transaction too.
        let tx = umbrella.simple_query("BEGIN").await.unwrap();
        drop(tx);
        let rows = umbrella
            .query("SELECT name FROM products ORDER BY name", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        umbrella.simple_query("COMMIT").await.unwrap();
    }
    // Both statements with the same SQL share one server statement: the server
    // has at most the three distinct ones plus what the loop's query() made.
    let on_server = one(&acme, "SELECT count(*) FROM pg_prepared_statements").await;
    assert!(
        on_server.parse::<i64>().unwrap() <= 5,
        "server has {on_server}"
    );
}

/// Two schema-per-tenant tenants whose `products` tables differ in column types:
/// the same SQL text must never run one tenant's statement under the other's
/// `search_path`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_sql_in_two_schemas_never_shares_a_statement() {
    let db = pg().database("prep_schemas");
    pg().psql(
        &db,
        "DO $$ BEGIN CREATE ROLE tenant_hooli NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT tenant_hooli TO pgtenant_app;
         CREATE SCHEMA hooli AUTHORIZATION saas_owner;
         GRANT USAGE ON SCHEMA hooli TO tenant_hooli;
         CREATE TABLE hooli.products (sku integer PRIMARY KEY, name text, price text);
         ALTER TABLE hooli.products OWNER TO saas_owner;
         GRANT SELECT ON hooli.products TO tenant_hooli;
         INSERT INTO hooli.products VALUES (7, 'middle-out', 'priceless');",
    );
    let tenants = "
  globex: { tier: shared, cluster: main, schema: globex, role: tenant_globex }
  hooli:  { tier: shared, cluster: main, schema: hooli, role: tenant_hooli }
";
    let proxy = start(&config(&db, "\n  shared: { pool_size: 1 }", tenants)).await;
    let globex = proxy.connect("globex", &db).await;
    let hooli = proxy.connect("hooli", &db).await;
    let sql = "SELECT sku, price FROM products ORDER BY sku LIMIT 1";
    let g = globex.prepare(sql).await.unwrap();
    let h = hooli.prepare(sql).await.unwrap();
    assert_eq!(g.columns()[0].type_(), &tokio_postgres::types::Type::TEXT);
    assert_eq!(h.columns()[0].type_(), &tokio_postgres::types::Type::INT4);
    for _ in 0..5 {
        let row = globex.query_one(&g, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "GX-1");
        let row = hooli.query_one(&h, &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 7);
        assert_eq!(row.get::<_, String>(1), "priceless");
        // And statements prepared on the fly, as query() does.
        let row = hooli.query_one(sql, &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 7);
        let row = globex.query_one(sql, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "GX-1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_statement_does_not_break_another_client_using_it() {
    let db = pg().database("prep_close");
    let proxy = start(&one_server_config(&db, "")).await;
    let first = proxy.connect("acme", &db).await;
    let second = proxy.connect("acme", &db).await;
    let sql = "SELECT count(*) FROM products";
    let a = first.prepare(sql).await.unwrap();
    let b = second.prepare(sql).await.unwrap();
    assert_eq!(first.query_one(&a, &[]).await.unwrap().get::<_, i64>(0), 2);
    drop(a); // tokio-postgres sends Close for it
    assert_eq!(
        first
            .query_one("SELECT 1::int8", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    for _ in 0..3 {
        assert_eq!(second.query_one(&b, &[]).await.unwrap().get::<_, i64>(0), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_keep_a_bounded_set_and_prepare_again_when_needed() {
    let db = pg().database("prep_lru");
    let limits = "limits: { max_prepared_statements: 2, max_client_prepared_statements: 6 }\n";
    let proxy = start(&one_server_config(&db, limits)).await;
    let client = proxy.connect("acme", &db).await;
    let mut statements = Vec::new();
    for i in 0..5 {
        statements.push(
            client
                .prepare(&format!("SELECT {i}::int4 + $1"))
                .await
                .unwrap(),
        );
    }
    for round in 0..3 {
        for (i, s) in statements.iter().enumerate() {
            let v: i32 = client.query_one(s, &[&round]).await.unwrap().get(0);
            assert_eq!(v, i as i32 + round);
        }
        let on_server = one(&client, "SELECT count(*) FROM pg_prepared_statements").await;
        assert_eq!(
            on_server, "2",
            "the server keeps at most max_prepared_statements"
        );
    }
    // One more than the client limit is refused like PostgreSQL refuses, and
    // the session goes on.
    let _sixth = client.prepare("SELECT 5").await.unwrap();
    let err = client.prepare("SELECT 6").await.unwrap_err();
    assert_eq!(code(&err), "53400");
    assert_eq!(one(&client, "SELECT 'still here'").await, "still here");
}

/// Misuse gets the errors PostgreSQL gives, in their place in a pipeline, and
/// fails an open transaction block as PostgreSQL would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_statement_names_get_postgres_errors() {
    let db = pg().database("prep_errors");
    let proxy = start(&one_server_config(&db, "")).await;
    let mut s = raw_login(proxy.port, "app.acme", APP_PASSWORD, &db).await;
    let mut out = BytesMut::new();
    frontend::parse("s1", "SELECT 41 + $1::int4", [], &mut out).unwrap();
    frontend::sync(&mut out);
    assert_eq!(exchange(&mut s, &out, 1).await, ["1", "ZI"]);

    // A duplicate name, then an unknown one: each fails up to its Sync.
    out.clear();
    frontend::parse("s1", "SELECT 2", [], &mut out).unwrap();
    bind_execute(&mut out, "s1", Some("1"));
    frontend::sync(&mut out);
    bind_execute(&mut out, "nope", None);
    frontend::sync(&mut out);
    bind_execute(&mut out, "s1", Some("1"));
    frontend::sync(&mut out);
    assert_eq!(
        exchange(&mut s, &out, 3).await,
        [
            "E42P05",
            "ZI",
            "E26000",
            "ZI",
            "2",
            "D42",
            "CSELECT 1",
            "ZI"
        ]
    );

    // Inside a transaction block the error fails the block, as in PostgreSQL.
    out.clear();
    frontend::query("BEGIN", &mut out).unwrap();
    bind_execute(&mut out, "nope", None);
    frontend::sync(&mut out);
    frontend::query("SELECT 1", &mut out).unwrap();
    frontend::query("ROLLBACK", &mut out).unwrap();
    assert_eq!(
        exchange(&mut s, &out, 4).await,
        [
            "CBEGIN",
            "ZT",
            "E26000",
            "ZE",
            "E25P02",
            "ZE",
            "CROLLBACK",
            "ZI"
        ]
    );

    // The unnamed statement follows the client to its next transaction, and a
    // Bind of it with none gets PostgreSQL's error.
    out.clear();
    frontend::parse("", "SELECT 'unnamed'", [], &mut out).unwrap();
    frontend::sync(&mut out);
    bind_execute(&mut out, "", None);
    frontend::sync(&mut out);
    assert_eq!(
        exchange(&mut s, &out, 2).await,
        ["1", "ZI", "2", "Dunnamed", "CSELECT 1", "ZI"]
    );
    out.clear();
    frontend::close(b'S', "", &mut out).unwrap();
    bind_execute(&mut out, "", None);
    frontend::sync(&mut out);
    assert_eq!(exchange(&mut s, &out, 1).await, ["3", "E26000", "ZI"]);

    // Close of a name the client does not have is not an error, as in PostgreSQL.
    out.clear();
    frontend::close(b'S', "never", &mut out).unwrap();
    frontend::close(b'S', "s1", &mut out).unwrap();
    bind_execute(&mut out, "s1", None);
    frontend::sync(&mut out);
    assert_eq!(exchange(&mut s, &out, 1).await, ["3", "3", "E26000", "ZI"]);
}

fn bind_execute(out: &mut BytesMut, statement: &str, param: Option<&str>) {
    let params: Vec<Option<&str>> = param.into_iter().map(Some).collect();
    frontend::bind(
        "",
        statement,
        [],
        params,
        |p: Option<&str>, buf: &mut BytesMut| match p {
            Some(v) => {
                buf.extend_from_slice(v.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            }
            None => Ok(postgres_protocol::IsNull::Yes),
        },
        [],
        out,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, out).unwrap();
}

/// The parse error of a client's own statement is the client's, and the name
/// stays free for a corrected statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_parse_leaves_the_name_free() {
    let db = pg().database("prep_parse_error");
    let proxy = start(&one_server_config(&db, "")).await;
    let mut s = raw_login(proxy.port, "app.acme", APP_PASSWORD, &db).await;
    let mut out = BytesMut::new();
    frontend::parse("q", "SELEC 1", [], &mut out).unwrap();
    frontend::sync(&mut out);
    assert_eq!(exchange(&mut s, &out, 1).await, ["E42601", "ZI"]);
    out.clear();
    frontend::parse("q", "SELECT 'fixed'", [], &mut out).unwrap();
    bind_execute(&mut out, "q", None);
    frontend::sync(&mut out);
    assert_eq!(
        exchange(&mut s, &out, 1).await,
        ["1", "2", "Dfixed", "CSELECT 1", "ZI"]
    );
}

/// DEALLOCATE and DISCARD ALL act on the client's own statements and settings;
/// the server's statements (other clients') and the tenant context stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_all_clear_only_the_clients_own() {
    let db = pg().database("prep_dealloc");
    let proxy = start(&one_server_config(&db, "")).await;
    let other = proxy.connect("acme", &db).await;
    let kept = other.prepare("SELECT 'kept'").await.unwrap();
    let mut s = raw_login(proxy.port, "app.umbrella", APP_PASSWORD, &db).await;
    let mut out = BytesMut::new();
    frontend::parse("s1", "SELECT 'kept'", [], &mut out).unwrap();
    frontend::sync(&mut out);
    frontend::query("DEALLOCATE s1", &mut out).unwrap();
    bind_execute(&mut out, "s1", None);
    frontend::sync(&mut out);
    frontend::query("deallocate prepare s1", &mut out).unwrap();
    assert_eq!(
        exchange(&mut s, &out, 4).await,
        [
            "1",
            "ZI",
            "CDEALLOCATE",
            "ZI",
            "E26000",
            "ZI",
            "E26000",
            "ZI"
        ]
    );
    assert_eq!(
        other.query_one(&kept, &[]).await.unwrap().get::<_, &str>(0),
        "kept"
    );

    out.clear();
    frontend::parse("s1", "SELECT 1", [], &mut out).unwrap();
    frontend::sync(&mut out);
    frontend::query("SET TimeZone = 'Asia/Tokyo'", &mut out).unwrap();
    frontend::query("DEALLOCATE ALL", &mut out).unwrap();
    bind_execute(&mut out, "s1", None);
    frontend::sync(&mut out);
    assert_eq!(
        exchange(&mut s, &out, 4).await,
        [
            "1",
            "ZI",
            "CSET",
            "ZI",
            "CDEALLOCATE ALL",
            "ZI",
            "E26000",
            "ZI"
        ]
    );

    out.clear();
    frontend::query("DISCARD ALL", &mut out).unwrap();
    assert_eq!(exchange(&mut s, &out, 1).await, ["CDISCARD ALL", "ZI"]);
    out.clear();
    frontend::query("SELECT current_setting('app.current_tenant')", &mut out).unwrap();
    frontend::query(
        "SELECT current_setting('TimeZone') <> 'Asia/Tokyo'",
        &mut out,
    )
    .unwrap();
    assert_eq!(
        exchange(&mut s, &out, 2).await,
        [
            "T",
            "Dumbrella",
            "CSELECT 1",
            "ZI",
            "T",
            "Dt",
            "CSELECT 1",
            "ZI"
        ]
    );

    // Inside a transaction, or with other statements, it is refused.
    out.clear();
    frontend::query("BEGIN", &mut out).unwrap();
    frontend::query("DISCARD ALL", &mut out).unwrap();
    frontend::query("ROLLBACK", &mut out).unwrap();
    frontend::query("SELECT 1; DISCARD ALL", &mut out).unwrap();
    assert_eq!(
        exchange(&mut s, &out, 4).await,
        [
            "CBEGIN",
            "ZT",
            "E25001",
            "ZE",
            "CROLLBACK",
            "ZI",
            "E0A000",
            "ZI"
        ]
    );
    assert_eq!(
        other.query_one(&kept, &[]).await.unwrap().get::<_, &str>(0),
        "kept"
    );
}

/// A client that vanishes inside a transaction after using a statement takes
/// its server with it; the next client of the same statement gets it prepared
/// on the replacement server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_transaction_leaves_no_stale_statement_record() {
    let db = pg().database("prep_gone");
    let proxy = start(&one_server_config(&db, "")).await;
    let mut s = raw_login(proxy.port, "app.acme", APP_PASSWORD, &db).await;
    let mut out = BytesMut::new();
    frontend::query("BEGIN", &mut out).unwrap();
    frontend::parse("s1", "SELECT 'again'", [], &mut out).unwrap();
    bind_execute(&mut out, "s1", None);
    frontend::sync(&mut out);
    assert_eq!(
        exchange(&mut s, &out, 2).await,
        ["CBEGIN", "ZT", "1", "2", "Dagain", "CSELECT 1", "ZT"]
    );
    let first = pg().superuser(&db).await;
    drop(s);
    assert_eq!(open_transactions(&first).await, 0);
    let next = proxy.connect("acme", &db).await;
    let statement = next.prepare("SELECT 'again'").await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            next.query_one(&statement, &[])
                .await
                .unwrap()
                .get::<_, &str>(0),
            "again"
        );
    }
}

fn bind_describe_execute(out: &mut BytesMut, statement: &str) {
    frontend::bind(
        "",
        statement,
        [],
        [],
        |_: (), _| Ok(postgres_protocol::IsNull::No),
        [],
        out,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::describe(b'P', "", out).unwrap();
    frontend::execute("", 0, out).unwrap();
    frontend::sync(out);
}

fn query(out: &mut BytesMut, sql: &str) -> BytesMut {
    out.clear();
    frontend::query(sql, out).unwrap();
    out.split()
}

/// DDL that changes a statement's result type ("cached plan must not change
/// result type", 0A000): outside a transaction block the proxy prepares the
/// statement again and runs it once more, and every other server of the pool
/// prepares it afresh at its next use; a server that meets it inside a
/// transaction block first gives the client PostgreSQL's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_result_type_is_prepared_again_outside_transactions() {
    let db = pg().database("prep_ddl");
    let su = pg().superuser(&db).await;
    su.batch_execute(
        "CREATE TABLE shapes (a int); INSERT INTO shapes VALUES (1);
         GRANT SELECT ON shapes TO PUBLIC",
    )
    .await
    .unwrap();
    let yaml = config(
        &db,
        "\n  shared: { pool_size: 2, max_tenant_share: 2 }",
        &tenants("shared", "shared", "shared", "shared"),
    );
    let proxy = start(&yaml).await;
    let mut holder = raw_login(proxy.port, "app.acme", APP_PASSWORD, &db).await;
    let mut other = raw_login(proxy.port, "app.acme", APP_PASSWORD, &db).await;
    let mut out = BytesMut::new();
    let prepare_and_run = |out: &mut BytesMut| {
        out.clear();
        frontend::parse("s", "SELECT * FROM shapes", [], out).unwrap();
        bind_describe_execute(out, "s");
        out.split()
    };
    // The holder keeps one server in a transaction, so the other client
    // prepares the statement on the second one.
    assert_eq!(
        exchange(&mut holder, &query(&mut out, "BEGIN"), 1).await,
        ["CBEGIN", "ZT"]
    );
    let first = ["1", "2", "T", "D1", "CSELECT 1"];
    assert_eq!(
        exchange(&mut holder, &prepare_and_run(&mut out), 1).await,
        [&first[..], &["ZT"]].concat()
    );
    assert_eq!(
        exchange(&mut other, &prepare_and_run(&mut out), 1).await,
        [&first[..], &["ZI"]].concat()
    );
    assert_eq!(
        exchange(&mut holder, &query(&mut out, "COMMIT"), 1).await,
        ["CCOMMIT", "ZI"]
    );

    su.batch_execute("ALTER TABLE shapes ALTER COLUMN a TYPE text USING 'changed'")
        .await
        .unwrap();
    assert_eq!(
        exchange(&mut holder, &query(&mut out, "BEGIN"), 1).await,
        ["CBEGIN", "ZT"]
    );
    out.clear();
    bind_describe_execute(&mut out, "s");
    let run = out.split();
    // Outside a transaction: the server's error is met, and the client sees
    // only the new rows.
    assert_eq!(
        exchange(&mut other, &run, 1).await,
        ["2", "T", "Dchanged", "CSELECT 1", "ZI"]
    );
    // Inside one, on the other server: prepared afresh before the error is met.
    assert_eq!(
        exchange(&mut holder, &run, 1).await,
        ["2", "T", "Dchanged", "CSELECT 1", "ZT"]
    );
    assert_eq!(
        exchange(&mut holder, &query(&mut out, "COMMIT"), 1).await,
        ["CCOMMIT", "ZI"]
    );

    // A change first met inside a transaction block fails it, as on PostgreSQL;
    // the statement works again after it.
    su.batch_execute("ALTER TABLE shapes ADD COLUMN b int")
        .await
        .unwrap();
    assert_eq!(
        exchange(&mut holder, &query(&mut out, "BEGIN"), 1).await,
        ["CBEGIN", "ZT"]
    );
    assert_eq!(exchange(&mut holder, &run, 1).await, ["E0A000", "ZE"]);
    assert_eq!(
        exchange(&mut holder, &query(&mut out, "ROLLBACK"), 1).await,
        ["CROLLBACK", "ZI"]
    );
    for client in [&mut holder, &mut other] {
        assert_eq!(
            exchange(client, &run, 1).await,
            ["2", "T", "Dchanged", "CSELECT 1", "ZI"]
        );
    }
}

/// tokio-postgres decodes rows by the description it got at prepare time, so
/// running its statement again would hand it rows it misreads: it gets
/// PostgreSQL's error instead, and preparing again gives the new shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cached_the_row_shape_gets_the_error_and_can_prepare_again() {
    let db = pg().database("prep_ddl_tp");
    let su = pg().superuser(&db).await;
    su.batch_execute(
        "CREATE TABLE shapes (a int, b text); INSERT INTO shapes VALUES (1, 'one');
         GRANT SELECT ON shapes TO PUBLIC",
    )
    .await
    .unwrap();
    let proxy = start(&one_server_config(&db, "")).await;
    let client = proxy.connect("acme", &db).await;
    let statement = client.prepare("SELECT * FROM shapes").await.unwrap();
    let row = client.query_one(&statement, &[]).await.unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, &str>(1)), (1, "one"));
    su.batch_execute("ALTER TABLE shapes ADD COLUMN c int DEFAULT 3")
        .await
        .unwrap();
    let err = client.query_one(&statement, &[]).await.unwrap_err();
    assert_eq!(code(&err), "0A000");
    let statement = client.prepare("SELECT * FROM shapes").await.unwrap();
    let row = client.query_one(&statement, &[]).await.unwrap();
    assert_eq!((row.get::<_, &str>(1), row.get::<_, i32>(2)), ("one", 3));
}
