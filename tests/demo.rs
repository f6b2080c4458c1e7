//! `pgtenant demo` through the real binary: it prints one line per tenant with
//! a working DATABASE_URL, isolates tenants, serves `/metrics` and the admin
//! console at the URLs it prints, and cleans up on Ctrl-C. Also: the compose
//! demo's files agree with the built-in demo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_working_urls_and_cleans_up_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting pgtenant demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let header = lines.next().expect("demo output").unwrap();
    let config_path = header.rsplit("config ").next().unwrap().to_owned();
    let mut tenants = Vec::new();
    let (mut metrics, mut admin) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("metrics=") {
            metrics = Some(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("admin=") {
            admin = Some(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("tenant=") {
            let mut fields = rest.split(' ');
            let id = fields.next().unwrap().to_owned();
            let tier = fields
                .next()
                .unwrap()
                .strip_prefix("tier=")
                .unwrap()
                .to_owned();
            let url = fields
                .next()
                .unwrap()
                .strip_prefix("url=")
                .unwrap()
                .to_owned();
            tenants.push((id, tier, url));
        } else if line.starts_with("Ctrl-C") {
            break;
        }
    }
    assert_eq!(tenants.len(), 4, "{tenants:?}");
    for (id, _tier, url) in &tenants {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect(url);
        tokio::spawn(conn);
        let row = client
            .query_one("SELECT current_setting('app.current_tenant'), (SELECT count(DISTINCT tenant_id) FROM public.products)", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), *id);
        assert_eq!(row.get::<_, i64>(1), 1, "{id} sees other tenants' products");
        let other_schema = client.simple_query("SELECT * FROM globex.products").await;
        assert_eq!(
            other_schema.is_ok(),
            id == "globex",
            "{id} and the globex schema"
        );
    }
    assert!(tenants.iter().any(|(_, tier, _)| tier == "enterprise"));
    let metrics = metrics.expect("the demo prints its /metrics URL");
    let out = Command::new("curl")
        .args(["-sf", &metrics])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("pgtenant_pool_clients{cluster=\"main\",tier=\"free\""),
        "{text}"
    );
    let admin = admin.expect("the demo prints its admin console URL");
    let (console, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect(&admin);
    tokio::spawn(conn);
    let pools = console.simple_query("SHOW POOLS").await.unwrap();
    assert!(pools.len() >= 3, "{} rows", pools.len());
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "demo exited with {status}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !std::path::Path::new(&config_path).exists(),
        "demo left {config_path} behind"
    );
}

/// `docker/`: the compose demo's schema is the built-in demo's, and its
/// `proxy.yaml` is valid. (Docker itself does not run on the CI machines.)
#[test]
fn docker_files_agree_with_the_demo() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker");
    let schema = std::fs::read_to_string(root.join("initdb/demo-schema.psql")).unwrap();
    assert_eq!(
        schema,
        pgtenant::demo::schema_sql(),
        "docker/initdb/demo-schema.psql is out of date with demo::schema_sql()"
    );
    let yaml = std::fs::read_to_string(root.join("proxy.yaml")).unwrap();
    let config = pgtenant::config::parse(&yaml, &|name| {
        (name == "PGTENANT_BACKEND_PASSWORD").then(|| "x".to_owned())
    })
    .unwrap_or_else(|e| panic!("docker/proxy.yaml: {e}"));
    let demo_tenants: Vec<&str> = pgtenant::demo::TENANTS.iter().map(|t| t.0).collect();
    let tenants: Vec<&str> = config.tenants.keys().map(String::as_str).collect();
    assert_eq!(tenants.len(), demo_tenants.len());
    assert!(demo_tenants.iter().all(|t| tenants.contains(t)));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("USER 10001"),
        "the runtime image runs as non-root"
    );
}
