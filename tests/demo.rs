//! `pgtenant demo` through the real binary: it prints one line per tenant with
//! a working DATABASE_URL, isolates tenants, and cleans up on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_working_urls_and_cleans_up_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting pgtenant demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let header = lines.next().expect("demo output").unwrap();
    let config_path = header.rsplit("config ").next().unwrap().to_owned();
    let mut tenants = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("tenant=") {
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
