//! TLS on both sides, with certificates made in the test (rcgen): clients through
//! tokio-postgres + rustls (SCRAM-SHA-256-PLUS) and psql 18 (direct TLS), and the
//! proxy's own connections to a PostgreSQL started with `ssl = on`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path, name: &str) -> Certs {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let certs = Certs {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&certs.ca, ca.pem()).unwrap();
    std::fs::write(&certs.cert, cert.pem()).unwrap();
    std::fs::write(&certs.key, key.serialize_pem()).unwrap();
    certs
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pgtenant-tls-")
        .tempdir()
        .unwrap()
}

/// Turns on `ssl` in the binary's PostgreSQL (once), its certificate signed by
/// the `pg` CA; returns those files.
fn pg_tls() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let pg = pg();
        let certs = make_certs(pg.pg.dir(), "pg");
        // PostgreSQL insists on owning a private key nobody else can read.
        std::fs::set_permissions(
            &certs.key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let _ = std::process::Command::new("chown")
            .arg("postgres:")
            .args([&certs.ca, &certs.cert, &certs.key])
            .output();
        pg.psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET ssl_cert_file = '{}';
                 ALTER SYSTEM SET ssl_key_file = '{}';
                 ALTER SYSTEM SET ssl = on;
                 SELECT pg_reload_conf();",
                certs.cert.display(),
                certs.key.display()
            ),
        );
        // The reload is asynchronous; wait until new connections see it.
        for _ in 0..50 {
            if pg.psql("postgres", "SHOW ssl") == "on" {
                return certs;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("PostgreSQL did not turn ssl on:\n{}", pg.pg.log());
    })
}

/// A client TLS connector trusting `ca` only, offering ALPN `postgresql` or not.
fn connector_alpn(ca: &Path, alpn: bool) -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    MakeRustlsConnect::new(config)
}

/// The usual test config plus `tls: { client }` and the cluster's `tls: { cluster }`.
fn tls_config(db: &str, client: &str, cluster: &str) -> String {
    let mut yaml = demo_config(db);
    if !client.is_empty() {
        yaml = format!("tls: {{ {client} }}\n{yaml}");
    }
    if !cluster.is_empty() {
        yaml = yaml.replace(
            "    max_server_connections: 50\n",
            &format!("    max_server_connections: 50\n    tls: {{ {cluster} }}\n"),
        );
    }
    yaml
}

fn listener_tls(mode: &str, certs: &Certs) -> String {
    format!(
        "mode: {mode}, cert_file: \"{}\", key_file: \"{}\"",
        certs.cert.display(),
        certs.key.display()
    )
}

/// Logs in as `user` over TLS verified against `ca`.
async fn tls_connect(
    proxy: &Proxy,
    ca: &Path,
    user: &str,
    password: &str,
    db: &str,
    binding: ChannelBinding,
    direct: bool,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = proxy.client_config(user, password, db);
    config.ssl_mode(SslMode::Require).channel_binding(binding);
    if direct {
        config.ssl_negotiation(tokio_postgres::config::SslNegotiation::Direct);
    }
    let (client, conn) = config.connect(connector_alpn(ca, true)).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_plain_clients_and_binds_scram_to_the_certificate() {
    let dir = scratch();
    let certs = make_certs(dir.path(), "proxy");
    let db = pg().database("tls");
    let proxy = start(&tls_config(&db, &listener_tls("require", &certs), "")).await;

    let plain = proxy
        .try_connect("app.acme", APP_PASSWORD, &db)
        .await
        .expect_err("a plain client is refused");
    assert_eq!(code(&plain), "28000");
    let message = plain.as_db_error().unwrap().message();
    assert!(message.contains("only TLS"), "{message}");

    // SCRAM-SHA-256-PLUS: channel_binding=require fails unless it was offered and checked.
    for direct in [false, true] {
        let client = tls_connect(
            &proxy,
            &certs.ca,
            "app.acme",
            APP_PASSWORD,
            &db,
            ChannelBinding::Require,
            direct,
        )
        .await
        .unwrap_or_else(|e| panic!("TLS login (direct: {direct}): {e}"));
        assert_eq!(
            one(&client, "SELECT current_setting('app.current_tenant')").await,
            "acme"
        );
        assert_eq!(one(&client, "SELECT count(*) FROM products").await, "2");
    }
    let wrong = tls_connect(
        &proxy,
        &certs.ca,
        "app.acme",
        "wrong",
        &db,
        ChannelBinding::Require,
        false,
    )
    .await
    .expect_err("a wrong password fails over TLS too");
    assert_eq!(code(&wrong), "28P01");

    // Another CA: the client refuses the proxy's certificate.
    let other = make_certs(dir.path(), "other");
    assert!(
        tls_connect(
            &proxy,
            &other.ca,
            "app.acme",
            APP_PASSWORD,
            &db,
            ChannelBinding::Prefer,
            false
        )
        .await
        .is_err()
    );

    // Direct TLS without ALPN is not a PostgreSQL connection.
    let mut config = proxy.client_config("app.acme", APP_PASSWORD, &db);
    config
        .ssl_mode(SslMode::Require)
        .ssl_negotiation(tokio_postgres::config::SslNegotiation::Direct);
    assert!(
        config
            .connect(connector_alpn(&certs.ca, false))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_serves_both_and_disable_declines_tls() {
    let dir = scratch();
    let certs = make_certs(dir.path(), "proxy");
    let db = pg().database("tls");
    let allow = start(&tls_config(&db, &listener_tls("allow", &certs), "")).await;
    let plain = allow.connect("umbrella", &db).await;
    let rows = "SELECT current_setting('app.current_tenant'), count(*) FROM products GROUP BY 1";
    assert_eq!(one(&plain, rows).await, "umbrella");
    let tls = tls_connect(
        &allow,
        &certs.ca,
        "app.umbrella",
        APP_PASSWORD,
        &db,
        ChannelBinding::Require,
        false,
    )
    .await
    .unwrap();
    assert_eq!(one(&tls, rows).await, "umbrella");

    let off = start(&tls_config(&db, "mode: disable", "")).await;
    for direct in [false, true] {
        assert!(
            tls_connect(
                &off,
                &certs.ca,
                "app.acme",
                APP_PASSWORD,
                &db,
                ChannelBinding::Disable,
                direct
            )
            .await
            .is_err(),
            "TLS against a proxy without a certificate (direct: {direct})"
        );
    }
    // Channel binding cannot be had without TLS.
    let mut config = off.client_config("app.acme", APP_PASSWORD, &db);
    config.channel_binding(ChannelBinding::Require);
    assert!(config.connect(tokio_postgres::NoTls).await.is_err());
    let plain = off.connect("acme", &db).await;
    assert_eq!(one(&plain, "SELECT 1").await, "1");
}

/// Bytes sent in the clear right after an SSLRequest (a startup packet, as
/// in CVE-2021-23214) are taken for the TLS handshake, which fails: they never
/// start a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_after_ssl_request_never_reaches_the_session() {
    use postgres_protocol::message::frontend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = scratch();
    let certs = make_certs(dir.path(), "proxy");
    let db = pg().database("tls");
    let proxy = start(&tls_config(&db, &listener_tls("allow", &certs), "")).await;
    let mut bytes = bytes::BytesMut::new();
    bytes.extend_from_slice(&[0, 0, 0, 8, 4, 210, 22, 47]);
    frontend::startup_message(
        [("user", "app.acme"), ("database", db.as_str())],
        &mut bytes,
    )
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut chunk = [0u8; 1024];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the proxy closes the connection");
    assert_eq!(got.first(), Some(&b'S'));
    // At most a TLS alert record follows, never an authentication request.
    assert!(got.len() == 1 || got[1] == 0x15, "after S: {:?}", &got[1..]);
}

/// psql 18 (libpq 18): direct TLS, full verification and channel binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_direct_tls_with_channel_binding() {
    let psql = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/drivers/pg18/bin/psql");
    assert!(psql.exists(), "psql 18 is missing: run `scripts/dev setup`");
    let dir = scratch();
    let certs = make_certs(dir.path(), "proxy");
    let db = pg().database("tls");
    let proxy = start(&tls_config(&db, &listener_tls("require", &certs), "")).await;
    for negotiation in ["postgres", "direct"] {
        let conn = format!(
            "host=localhost hostaddr=127.0.0.1 port={} dbname={db} user=app.acme password={APP_PASSWORD} \
             sslmode=verify-full sslrootcert={} channel_binding=require sslnegotiation={negotiation}",
            proxy.port,
            certs.ca.display()
        );
        let out = tokio::process::Command::new(&psql)
            .args(["-X", "-A", "-t", "-c"])
            .arg("SELECT current_setting('app.current_tenant'), count(*) FROM products")
            .arg(&conn)
            .output()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "acme|2",
            "{negotiation}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_reread_on_sighup_and_open_clients_stay() {
    let dir = scratch();
    let first = make_certs(dir.path(), "first");
    let db = pg().database("tls");
    let yaml = with_literal_secrets(&tls_config(&db, &listener_tls("require", &first), ""));
    let (proxy, _config_dir) = start_file(&yaml).await;
    let connect = |ca: PathBuf| {
        let proxy = &proxy;
        let db = db.clone();
        async move {
            tls_connect(
                proxy,
                &ca,
                "app.acme",
                APP_PASSWORD,
                &db,
                ChannelBinding::Require,
                false,
            )
            .await
        }
    };
    let open = connect(first.ca.clone()).await.unwrap();

    // New files at the same paths, from another CA.
    let second = make_certs(dir.path(), "second");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    hangup().await;
    assert_eq!(one(&open, "SELECT count(*) FROM products").await, "2");
    assert!(
        connect(first.ca.clone()).await.is_err(),
        "old CA after reload"
    );
    // Channel binding must use the new certificate's hash.
    let fresh = connect(second.ca.clone()).await.unwrap();
    assert_eq!(one(&fresh, "SELECT 1").await, "1");

    // A broken file is refused and the certificate in use stays.
    std::fs::write(&first.key, "not a key").unwrap();
    hangup().await;
    connect(second.ca.clone()).await.unwrap();
    assert_eq!(one(&open, "SELECT 1").await, "1");
}

/// Sends SIGHUP to this process (every proxy in it started from a file
/// reloads it) and gives the handlers a moment.
async fn hangup() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
}

/// What PostgreSQL says about the encryption of the connection a tenant's
/// transaction runs on.
async fn server_ssl(proxy: &Proxy, db: &str) -> Result<String, tokio_postgres::Error> {
    let client = proxy.try_connect("app.acme", APP_PASSWORD, db).await?;
    Ok(one(
        &client,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_follow_the_cluster_tls_mode() {
    let certs = pg_tls();
    let dir = scratch();
    let stranger = make_certs(dir.path(), "stranger");
    let db = pg().database("tls");
    let ca = certs.ca.display();
    let cases = [
        ("mode: disable".to_owned(), Some("f")),
        ("mode: prefer".to_owned(), Some("t")),
        ("mode: require".to_owned(), Some("t")),
        (format!("mode: verify-ca, ca_file: \"{ca}\""), Some("t")),
        (
            format!("mode: verify-ca, ca_file: \"{ca}\", server_name: elsewhere.example"),
            Some("t"),
        ),
        (format!("mode: verify-full, ca_file: \"{ca}\""), Some("t")),
        (
            format!("mode: verify-full, ca_file: \"{ca}\", server_name: elsewhere.example"),
            None,
        ),
        (
            format!("mode: verify-ca, ca_file: \"{}\"", stranger.ca.display()),
            None,
        ),
    ];
    for (tls, expected) in cases {
        let proxy = start(&tls_config(&db, "", &tls)).await;
        match (server_ssl(&proxy, &db).await, expected) {
            (Ok(ssl), Some(want)) => assert_eq!(ssl, want, "{tls}"),
            (Err(e), None) => assert_eq!(code(&e), "08001", "{tls}: {e}"),
            (got, _) => panic!("{tls}: {got:?}"),
        }
    }
}

/// A TLS server connection moves between workers without losing its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_moves_between_workers() {
    let _certs = pg_tls();
    let db = pg().database("tls_moves");
    let yaml = one_server_two_workers(&db, "127.0.0.1", "    tls: { mode: require }\n");
    let proxy = start(&yaml).await;
    servers_move_between_workers(&proxy, &db).await;
    let ssl = proxy.connect("acme", &db).await;
    assert_eq!(
        one(
            &ssl,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .await,
        "t"
    );
}

#[test]
fn bad_tls_settings_are_refused_with_their_line() {
    let dir = scratch();
    let certs = make_certs(dir.path(), "proxy");
    let db = "unused";
    let errors = |yaml: &str| match pgtenant::config::parse(yaml, &env) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    };
    let missing = errors(&tls_config(
        db,
        "mode: require, cert_file: /nonexistent.pem, key_file: /nonexistent.key",
        "",
    ));
    assert!(
        missing.starts_with("tls.cert_file (line 1, column")
            && missing.contains("/nonexistent.pem"),
        "{missing}"
    );
    let no_key = errors(&tls_config(
        db,
        &format!("mode: allow, cert_file: \"{}\"", certs.cert.display()),
        "",
    ));
    assert!(no_key.contains("key_file"), "{no_key}");
    let mismatched = errors(&tls_config(
        db,
        &format!(
            "mode: allow, cert_file: \"{}\", key_file: \"{}\"",
            certs.cert.display(),
            make_certs(dir.path(), "other").key.display()
        ),
        "",
    ));
    assert!(
        mismatched.contains("do not make a usable certificate"),
        "{mismatched}"
    );
    let no_ca = errors(&tls_config(db, "", "mode: verify-full"));
    assert!(
        no_ca.contains("clusters.main.tls.mode") && no_ca.contains("ca_file"),
        "{no_ca}"
    );
    let bad_mode = errors(&tls_config(db, "", "mode: sometimes"));
    assert!(bad_mode.contains("sometimes"), "{bad_mode}");
}
