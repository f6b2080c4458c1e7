//! Protocol coverage through the proxy: extended protocol, pipelines with an
//! error, COPY both ways, multi-statement queries, negotiation, garbage input.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::{code, demo_config, one, pg, start};
use futures_util::{SinkExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::types::Type;

async fn proxy_and_db(prefix: &str) -> (common::Proxy, String) {
    let db = pg().database(prefix);
    let proxy = start(&demo_config(&db)).await;
    (proxy, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_with_parameters() {
    let (proxy, db) = proxy_and_db("ext").await;
    let client = proxy.connect("acme", &db).await;
    let rows = client
        .query_typed(
            "SELECT name, price::text FROM products WHERE price > $1 AND name LIKE $2 ORDER BY name",
            &[(&5.0f64, Type::FLOAT8), (&"acme%", Type::TEXT)],
        )
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["acme gadget", "acme widget"]);
    let inserted = client
        .query_typed(
            "INSERT INTO products (name, price) VALUES ($1, $2::numeric) RETURNING tenant_id",
            &[(&"acme extra", Type::TEXT), (&"1.50", Type::TEXT)],
        )
        .await
        .unwrap();
    let tenant: String = inserted[0].get(0);
    assert_eq!(
        tenant, "acme",
        "the row was written with the tenant's context"
    );
}

/// Pipelined statements, one failing in the middle: each gets its own answer and
/// the ones after the error still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_in_the_middle_of_a_pipeline() {
    let (proxy, db) = proxy_and_db("pipe").await;
    let client = proxy.connect("initech", &db).await;
    let q = |n: i32| divide(&client, n);
    let (a, b, c) = tokio::join!(q(2), q(0), q(5));
    assert_eq!(a.unwrap()[0].get::<_, i32>(0), 5);
    assert_eq!(code(&b.unwrap_err()), "22012");
    assert_eq!(c.unwrap()[0].get::<_, i32>(0), 2);
    // Inside an explicit transaction the error aborts it, and ROLLBACK recovers.
    client.batch_execute("BEGIN").await.unwrap();
    let (a, b) = tokio::join!(q(0), q(1));
    assert_eq!(code(&a.unwrap_err()), "22012");
    assert_eq!(code(&b.unwrap_err()), "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        one(&client, "SELECT current_setting('app.current_tenant')").await,
        "initech"
    );
}

async fn divide(
    client: &tokio_postgres::Client,
    n: i32,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    client
        .query_typed("SELECT 10 / $1::int", &[(&n, Type::INT4)])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_simple_query() {
    let (proxy, db) = proxy_and_db("multi").await;
    let client = proxy.connect("acme", &db).await;
    let msgs = client
        .simple_query("SELECT 1; SELECT 2; SELECT current_setting('app.current_tenant')")
        .await
        .unwrap();
    let rows: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec!["1", "2", "acme"]);
    // An error in the middle of a multi-statement query rolls back the whole of it.
    let err = client
        .batch_execute("INSERT INTO products (name, price) VALUES ('x', 1); SELECT 1/0; SELECT 3")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "22012");
    assert_eq!(
        one(&client, "SELECT count(*) FROM products WHERE name = 'x'").await,
        "0"
    );
}

/// A query and a result many times a socket buffer's size: both are read and
/// written in many pieces (the first ones past the reactor, the rest through
/// it), and arrive whole and in order; the session goes on after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_socket_buffers_arrive_whole() {
    let (proxy, db) = proxy_and_db("big").await;
    let client = proxy.connect("acme", &db).await;
    let pattern = "0123456789";
    let times = 600_000;
    let literal = pattern.repeat(times);
    let checked = client
        .simple_query(&format!(
            "SELECT length(s), s = repeat('{pattern}', {times}) FROM (SELECT '{literal}'::text AS s) t"
        ))
        .await
        .unwrap();
    let row = checked
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    assert_eq!(
        row.get(0),
        Some((pattern.len() * times).to_string().as_str())
    );
    assert_eq!(row.get(1), Some("t"), "the query text arrived unchanged");
    let value = one(&client, &format!("SELECT repeat('{pattern}', {times})")).await;
    assert!(value == literal, "the result arrived unchanged");
    assert_eq!(
        one(&client, "SELECT current_setting('app.current_tenant')").await,
        "acme"
    );
}

/// COPY FROM is refused by PostgreSQL on RLS tables, so COPY IN goes into the
/// schema-per-tenant tenant's table; COPY OUT also reads through RLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_of_ten_thousand_rows() {
    let (proxy, db) = proxy_and_db("copy").await;
    let client = proxy.connect("globex", &db).await;
    let sink = client
        .copy_in("COPY products (sku, name, price) FROM STDIN")
        .await
        .unwrap();
    let mut data = BytesMut::new();
    for i in 0..10_000 {
        data.put_slice(format!("BULK-{i}\tbulk {i}\t{}.25\n", i % 100).as_bytes());
    }
    futures_util::pin_mut!(sink);
    sink.send(data.freeze()).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 10_000);
    let stream = client
        .copy_out("COPY (SELECT sku FROM products WHERE sku LIKE 'BULK-%') TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: Vec<u8> = chunks.concat();
    assert_eq!(
        text.split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"BULK-"))
            .count(),
        10_000
    );
    // COPY OUT through RLS: acme gets only its own rows.
    let acme = proxy.connect("acme", &db).await;
    let stream = acme
        .copy_out("COPY products (tenant_id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), b"acme\nacme\n");
    // A failed COPY leaves the session usable.
    let sink = client
        .copy_in::<_, bytes::Bytes>("COPY products (sku, name, price) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"bad row without tabs\n"))
        .await
        .unwrap();
    assert_eq!(code(&sink.finish().await.unwrap_err()), "22P04");
    assert_eq!(
        one(
            &client,
            "SELECT count(*) FROM products WHERE sku LIKE 'BULK-%'"
        )
        .await,
        "10000"
    );
}

fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// A client asking for a future protocol 3.3 and `_pq_.` options must get
/// NegotiateProtocolVersion (3.2, the options listed) and then authentication.
/// (3.2 itself is spoken natively: the psycopg driver check connects with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_protocol_minor_is_negotiated_down() {
    let (proxy, db) = proxy_and_db("nego").await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let packet = startup_packet(
        (3 << 16) | 3,
        &[
            ("user", "app.acme"),
            ("database", &db),
            ("_pq_.test_option", "1"),
        ],
    );
    s.write_all(&packet).await.unwrap();
    let mut tag = [0u8; 1];
    s.read_exact(&mut tag).await.unwrap();
    assert_eq!(&tag, b"v");
    let len = s.read_i32().await.unwrap();
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(&body[..4], &((3i32 << 16) | 2).to_be_bytes());
    assert_eq!(&body[4..8], &1i32.to_be_bytes());
    assert_eq!(&body[8..], b"_pq_.test_option\0");
    s.read_exact(&mut tag).await.unwrap();
    assert_eq!(&tag, b"R", "authentication follows the negotiation");
}

/// Garbage instead of a startup packet closes that connection and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_startup_closes_only_that_connection() {
    let (proxy, db) = proxy_and_db("garbage").await;
    let survivor = proxy.connect("acme", &db).await;
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],
        vec![0, 0, 0, 8, 0, 2, 0, 0],
        vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        startup_packet(3 << 16, &[("database", "x")]),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        s.write_all(&garbage).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "connection left open after {garbage:?}");
        assert!(
            rest.is_empty() || rest[0] == b'E',
            "unexpected reply {rest:?}"
        );
    }
    assert_eq!(one(&survivor, "SELECT 1").await, "1");
    let fresh = proxy.connect("umbrella", &db).await;
    assert_eq!(
        one(&fresh, "SELECT current_setting('app.current_tenant')").await,
        "umbrella"
    );
}

/// A client that never finishes its login is cut off by the login timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_login_times_out() {
    let db = pg().database("login_to");
    let yaml = demo_config(&db).replace(
        "listen: 127.0.0.1:0",
        "listen: 127.0.0.1:0\nlimits: { login_timeout: 300ms }",
    );
    let proxy = start(&yaml).await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(&[0, 0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "half-open connection was not closed");
}

/// Startup parameters cannot choose or change the tenant context: protected
/// settings in `options` are refused at login, and other values are applied as
/// literals, never as SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_do_not_change_the_tenant() {
    let (proxy, db) = proxy_and_db("opts").await;
    for options in [
        "-c app.current_tenant=umbrella",
        "-c search_path=globex",
        "-c role=postgres",
    ] {
        let err = proxy
            .client_config("app.acme", common::APP_PASSWORD, &db)
            .options(options)
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{options} was accepted"));
        assert_eq!(code(&err), "22023", "{options}");
    }
    let sneaky = "'; SET app.current_tenant = 'umbrella";
    let (client, conn) = proxy
        .client_config("app.acme", common::APP_PASSWORD, &db)
        .options("-c DateStyle=SQL,DMY")
        .application_name(sneaky)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        one(&client, "SELECT current_setting('app.current_tenant')").await,
        "acme"
    );
    assert_eq!(one(&client, "SHOW application_name").await, sneaky);
    assert_eq!(one(&client, "SHOW DateStyle").await, "SQL, DMY");
    assert_eq!(
        one(&client, "SELECT count(DISTINCT tenant_id) FROM products").await,
        "1"
    );
    assert_eq!(one(&client, "SHOW search_path").await, "\"$user\", public");
}

/// After login, an unknown message type or a length over max_message_size ends
/// that connection with FATAL 08P01 (checked before the body is allocated), and
/// nobody else notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_after_login_close_only_that_client() {
    let db = pg().database("badmsg");
    let yaml = demo_config(&db).replace(
        "listen: 127.0.0.1:0",
        "listen: 127.0.0.1:0\nlimits: { max_message_size: 65536 }",
    );
    let proxy = start(&yaml).await;
    let survivor = proxy.connect("acme", &db).await;
    let huge_query = {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&(1_000_000i32).to_be_bytes());
        m
    };
    for (what, bytes) in [
        ("unknown type", vec![b'Y', 0, 0, 0, 4]),
        ("oversized", huge_query),
    ] {
        let mut s = common::raw_login(proxy.port, "app.acme", common::APP_PASSWORD, &db).await;
        s.write_all(&bytes).await.unwrap();
        let codes = common::error_codes_until_close(&mut s).await;
        assert_eq!(codes, vec!["08P01".to_owned()], "{what}");
    }
    assert_eq!(one(&survivor, "SELECT 1").await, "1");
}
