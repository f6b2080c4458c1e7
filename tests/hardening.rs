//! Hostile clients: idle half-open connections, the proxy-wide connection cap,
//! password guessing from one address, and malformed or oversized SCRAM messages.
//! After each, a real client still gets in.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::*;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_limits(db: &str, limits: &str) -> String {
    format!(
        "limits: {{ {limits} }}\n{}",
        config(
            db,
            TIERS,
            &tenants("free", "growth", "growth", "enterprise")
        )
    )
}

/// Whether the proxy closes `stream` within `within` (EOF or reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 256];
    let read = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_connections_do_not_block_a_real_client() {
    let db = pg().database("hard");
    let proxy = start(&with_limits(&db, "login_timeout: 2s")).await;
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        // Nothing at all, a length word only, or an SSLRequest and silence.
        match i % 3 {
            0 => {}
            1 => s.write_all(&[0, 0, 0, 40]).await.unwrap(),
            _ => s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap(),
        }
        idle.push(s);
    }
    let started = std::time::Instant::now();
    let client = proxy.connect("acme", &db).await;
    assert_eq!(one(&client, "SELECT count(*) FROM products").await, "2");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "login took {:?} beside 1000 idle connections",
        started.elapsed()
    );
    // login_timeout closes every one of them.
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "half-open connection {i} still open"
        );
    }
    assert_eq!(one(&client, "SELECT 1").await, "1");
    assert_eq!(proxy.deps.connections.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_wide_connection_cap_refuses_with_53300_and_frees_places() {
    let db = pg().database("hard");
    let proxy = start(&with_limits(&db, "max_client_connections: 3")).await;
    let a = proxy.connect("acme", &db).await;
    let b = proxy.connect("umbrella", &db).await;
    // A login in progress takes a place too.
    let mut pending = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = proxy
        .try_connect("app.initech", APP_PASSWORD, &db)
        .await
        .expect_err("a fourth connection is refused");
    assert_eq!(code(&refused), "53300");
    let message = refused.as_db_error().unwrap().message();
    assert!(message.contains("pgtenant (limit 3)"), "{message}");
    assert_eq!(one(&a, "SELECT 1").await, "1");

    drop(b);
    pending.shutdown().await.unwrap();
    drop(pending);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = proxy.connect("initech", &db).await;
    assert_eq!(
        one(&c, "SELECT current_setting('app.current_tenant')").await,
        "initech"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_throttle_their_address_until_the_window_ends() {
    let db = pg().database("hard");
    let proxy = start(&with_limits(
        &db,
        "max_auth_failures: 3, auth_failure_window: 2s",
    ))
    .await;
    for guess in ["a", "b", "c"] {
        let e = proxy
            .try_connect("app.acme", guess, &db)
            .await
            .expect_err("wrong password");
        assert_eq!(code(&e), "28P01");
    }
    // Even the right password is not checked now.
    let e = proxy
        .try_connect("app.acme", APP_PASSWORD, &db)
        .await
        .expect_err("throttled");
    assert_eq!(code(&e), "28000");
    let message = e.as_db_error().unwrap().message();
    assert!(message.contains("too many failed logins"), "{message}");
    // Unknown users count the same (they fail like wrong passwords).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let client = proxy.connect("acme", &db).await;
    assert_eq!(one(&client, "SELECT 1").await, "1");
    for _ in 0..3 {
        let _ = proxy.try_connect("app.nobody", "x", &db).await;
    }
    let e = proxy
        .try_connect("app.acme", APP_PASSWORD, &db)
        .await
        .expect_err("throttled again");
    assert_eq!(code(&e), "28000");
    // A session that is already in goes on.
    assert_eq!(one(&client, "SELECT 1").await, "1");
}

/// Starts a login as `user` and reads up to the SASL offer.
async fn until_sasl(port: u16, user: &str, db: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", db)], &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R', "expected an authentication request");
    let mut body = vec![0u8; i32::from_be_bytes(head[1..].try_into().unwrap()) as usize - 4];
    s.read_exact(&mut body).await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("SCRAM-SHA-256"),
        "{body:?}"
    );
    s
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_slice(mechanism.as_bytes());
    body.put_u8(0);
    body.put_i32(data.len() as i32);
    body.put_slice(data);
    message(b'p', &body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_scram_messages_fail_the_login_and_nothing_else() {
    let db = pg().database("hard");
    let proxy = start(&with_limits(&db, "max_auth_failures: 0")).await;
    let mut huge_length = vec![b'p'];
    huge_length.extend_from_slice(&0x7fff_fff0_i32.to_be_bytes());
    let mut wrong_length = sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc");
    let at = wrong_length.len() - 15;
    wrong_length[at..at + 4].copy_from_slice(&1000_i32.to_be_bytes());
    let attempts: Vec<(&str, Vec<u8>)> = vec![
        ("declared length of 2 GB", huge_length),
        (
            "8 KB of SASL data",
            sasl_initial("SCRAM-SHA-256", &vec![b'a'; 9000]),
        ),
        (
            "a query instead of a password",
            message(b'Q', b"SELECT 1\0"),
        ),
        (
            "another mechanism",
            sasl_initial("SCRAM-SHA-1", b"n,,n=,r=abc"),
        ),
        (
            "-PLUS without TLS",
            sasl_initial("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=a"),
        ),
        (
            "client-final first",
            sasl_initial("SCRAM-SHA-256", b"c=biws,r=abc,p=AAAA"),
        ),
        ("empty nonce", sasl_initial("SCRAM-SHA-256", b"n,,n=,r=")),
        (
            "not UTF-8",
            sasl_initial("SCRAM-SHA-256", b"n,,n=\xff\xfe,r=a"),
        ),
        ("length word lies", wrong_length),
        ("no mechanism terminator", message(b'p', b"SCRAM-SHA-256")),
    ];
    for (what, bytes) in attempts {
        let mut s = until_sasl(proxy.port, "app.acme", &db).await;
        s.write_all(&bytes).await.unwrap();
        let codes = error_codes_until_close(&mut s).await;
        assert_eq!(codes, ["28P01"], "{what}");
    }

    // A well-formed first message, then a client-final with a wrong nonce, and
    // one with a proof of the wrong size.
    for last in [
        &b"c=biws,r=not-the-nonce,p=AAAA"[..],
        b"c=biws,r=NONCE,p=AAAA",
    ] {
        let mut s = until_sasl(proxy.port, "app.acme", &db).await;
        s.write_all(&sasl_initial("SCRAM-SHA-256", b"n,,n=,r=clientnonce"))
            .await
            .unwrap();
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(head[1..].try_into().unwrap()) as usize - 4];
        s.read_exact(&mut body).await.unwrap();
        let server_first = String::from_utf8_lossy(&body[4..]).into_owned();
        let nonce = server_first
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .unwrap()
            .to_owned();
        let last = String::from_utf8_lossy(last).replace("NONCE", &nonce);
        s.write_all(&message(b'p', last.as_bytes())).await.unwrap();
        assert_eq!(error_codes_until_close(&mut s).await, ["28P01"], "{last}");
    }
    let client = proxy.connect("acme", &db).await;
    assert_eq!(one(&client, "SELECT 1").await, "1");
}
