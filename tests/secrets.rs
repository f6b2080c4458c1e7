//! No secret in logs or errors: the real binary runs at `RUST_LOG=trace` while
//! clients fail logins, a cluster refuses the proxy's password and a client tries
//! to escape; then neither the log nor any client error holds a password, a
//! verifier's keys, or another tenant's name.

mod common;

use std::process::Command;

use common::*;

const CLUSTER_CANARY: &str = "canary-backend-pw-7f3a";
const CLIENT_CANARY: &str = "canary-client-pw-91c2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_or_a_client() {
    let db = pg().database("secrets");
    let yaml = config(
        &db,
        TIERS,
        &format!(
            "{}  lost: {{ tier: free, cluster: broken }}\n",
            tenants("free", "growth", "growth", "enterprise")
        ),
    )
    .replace(
        "tiers:",
        &format!(
            "  broken:\n    host: 127.0.0.1\n    port: {}\n    database: {db}\n    user: pgtenant_app\n    password: {CLUSTER_CANARY}\n    max_server_connections: 5\ntiers:",
            pg().pg.port()
        ),
    );
    let verifier = yaml
        .split("password: \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let (stored_key, server_key) = verifier
        .rsplit_once('$')
        .unwrap()
        .1
        .split_once(':')
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, &yaml).unwrap();

    let mut binary = Binary::start(&path, "trace");
    let proxy = |user: &str, password: &str| {
        let config = binary.client_config(user, password, &db);
        async move {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(client)
        }
    };
    let mut errors = Vec::new();
    for (user, password) in [
        ("app.acme", CLIENT_CANARY),
        ("nobody", CLIENT_CANARY),
        ("app.lost", APP_PASSWORD),
        ("app.nosuch", APP_PASSWORD),
    ] {
        let e = proxy(user, password)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} logged in"));
        errors.push(e.as_db_error().map(|d| d.message().to_owned()).unwrap());
    }
    let acme = proxy("app.acme", APP_PASSWORD).await.unwrap();
    for sql in [
        "SET app.current_tenant = 'umbrella'",
        "SELECT set_config('app.current_tenant', 'umbrella', false)",
        "RESET ALL",
    ] {
        let e = acme.simple_query(sql).await.expect_err(sql);
        errors.push(e.as_db_error().unwrap().message().to_owned());
    }
    drop(acme);

    let log = binary.stop("INT");
    assert!(
        log.contains("authentication failed"),
        "the log is live:\n{log}"
    );
    assert!(
        log.contains("broken"),
        "the refused cluster is logged:\n{log}"
    );
    for secret in [
        CLUSTER_CANARY,
        CLIENT_CANARY,
        BACKEND_PASSWORD,
        APP_PASSWORD,
        stored_key,
        server_key,
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        for e in &errors {
            assert!(!e.contains(secret), "{secret} in an error: {e}");
        }
    }
    for e in &errors {
        for other in ["umbrella\"", "globex", "initech"] {
            assert!(!e.contains(other), "another tenant named: {e}");
        }
    }
}

#[test]
fn a_clear_text_password_in_the_config_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let yaml = config("db", TIERS, &tenants("free", "free", "free", "free")).replace(
        "app: {",
        &format!("app: {{ password: \"{CLIENT_CANARY}\" }}\n    unused: {{"),
    );
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .arg("check")
        .arg(&path)
        .env("TEST_BACKEND_PASSWORD", BACKEND_PASSWORD)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("resolution.shared_users.app.password"),
        "{stderr}"
    );
    assert!(!stderr.contains(CLIENT_CANARY), "{stderr}");
}
