//! Test harness: one real PostgreSQL per test binary (initdb in a temp dir, the
//! demo's multi-tenant schema, extra roles for server-auth tests), a fresh
//! database per test cloned from a template, and a proxy per test started
//! in-process on port 0 with its own config. No mocks.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use pgtenant::demo::{self, TempPostgres};
use tokio::sync::oneshot;
use tokio_postgres::{Client, NoTls};

pub const BACKEND_PASSWORD: &str = "backend-pw";
pub const MD5_BACKEND_PASSWORD: &str = "md5-backend-pw";
pub const APP_PASSWORD: &str = demo::APP_PASSWORD;
const TEMPLATE: &str = "saas_template";

pub struct Pg {
    pub pg: TempPostgres,
}

/// The binary's PostgreSQL, started on first use. A missing PostgreSQL is a
/// failure that says how to install it, never a skip.
pub fn pg() -> &'static Pg {
    static PG: OnceLock<Pg> = OnceLock::new();
    PG.get_or_init(|| {
        let pg = TempPostgres::start(&[
            "host all pgtenant_md5 127.0.0.1/32 md5",
            "host all pgtenant_trust 127.0.0.1/32 trust",
        ])
        .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e:#}"));
        demo::seed(&pg, BACKEND_PASSWORD).expect("seeding the demo schema");
        pg.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'md5';
                 CREATE ROLE pgtenant_md5 LOGIN NOINHERIT PASSWORD '{MD5_BACKEND_PASSWORD}';
                 RESET password_encryption;
                 CREATE ROLE pgtenant_trust LOGIN NOINHERIT;
                 CREATE ROLE pgtenant_bypass LOGIN BYPASSRLS PASSWORD '{BACKEND_PASSWORD}';
                 GRANT tenant_globex TO pgtenant_md5, pgtenant_trust, pgtenant_bypass;
                 ALTER DATABASE {db} RENAME TO {TEMPLATE};",
                db = demo::DATABASE
            ),
        )
        .expect("creating test roles");
        Pg { pg }
    })
}

impl Pg {
    /// A fresh copy of the seeded database, so tests can count connections and
    /// take locks without seeing each other.
    pub fn database(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}_{}", N.fetch_add(1, Ordering::Relaxed));
        self.pg
            .psql(
                "postgres",
                &format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE} OWNER saas_owner"),
            )
            .expect("cloning the template database");
        name
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.pg.psql(db, sql).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A superuser connection straight to PostgreSQL, over its Unix socket.
    pub async fn superuser(&self, db: &str) -> Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(self.pg.dir())
            .port(self.pg.port())
            .user("postgres")
            .dbname(db)
            .connect(NoTls)
            .await
            .expect("superuser connection");
        tokio::spawn(conn);
        client
    }
}

/// Tiers used unless a test brings its own.
pub const TIERS: &str = "
  free:       { pool_size: 2, max_tenant_share: 1, statement_timeout: 5s, queue_timeout: 2s }
  growth:     { pool_size: 3, max_tenant_share: 2, settings: { work_mem: 8MB } }
  enterprise: { pool_size: 2 }
";

/// The usual test setup: [`TIERS`], acme and umbrella on free, initech on
/// growth, globex on enterprise.
pub fn demo_config(db: &str) -> String {
    config(db, TIERS, &tenants("free", "free", "growth", "enterprise"))
}

/// The demo tenants, all on cluster `main`, with the given tiers.
pub fn tenants(acme: &str, umbrella: &str, initech: &str, globex: &str) -> String {
    format!(
        "
  acme:     {{ tier: {acme}, cluster: main }}
  umbrella: {{ tier: {umbrella}, cluster: main }}
  initech:  {{ tier: {initech}, cluster: main }}
  globex:   {{ tier: {globex}, cluster: main, schema: globex, role: tenant_globex }}
  closed:   {{ tier: {acme}, cluster: main, status: disabled }}
"
    )
}

/// A whole config: cluster `main` on `db`, the shared user `app`, and the given
/// tiers and tenants (YAML mapping bodies).
pub fn config(db: &str, tiers: &str, tenants: &str) -> String {
    let pg = pg();
    let app = postgres_protocol::password::scram_sha_256(APP_PASSWORD.as_bytes());
    format!(
        "listen: 127.0.0.1:0
resolution:
  username_separator: \".\"
  shared_users:
    app: {{ password: \"{app}\" }}
clusters:
  main:
    host: 127.0.0.1
    port: {port}
    database: {db}
    user: pgtenant_app
    password: ${{TEST_BACKEND_PASSWORD}}
    max_server_connections: 50
tiers:{tiers}
tenants:{tenants}",
        port = pg.pg.port()
    )
}

/// A proxy whose tenants all share one tier, `name: { body }`.
pub async fn start_tier(db: &str, name: &str, body: &str) -> Proxy {
    start(&config(
        db,
        &format!("\n  {name}: {body}"),
        &tenants(name, name, name, name),
    ))
    .await
}

/// Server connections the proxy holds to `db`, as PostgreSQL sees them.
pub async fn server_connections(superuser: &Client) -> i64 {
    superuser
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = 'pgtenant_app'",
            &[],
        )
        .await
        .expect("counting server connections")
        .get(0)
}

/// Waits (up to 5 s) until the proxy holds no server connection to the
/// superuser's database; returns how many are left.
pub async fn servers_gone(superuser: &Client) -> i64 {
    let mut left = i64::MAX;
    for _ in 0..100 {
        left = server_connections(superuser).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    left
}

pub struct Proxy {
    pub port: u16,
    pub deps: std::sync::Arc<pgtenant::session::Deps>,
    /// Where `/metrics` is served, when the config asks for it.
    pub metrics: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn env(name: &str) -> Option<String> {
    match name {
        "TEST_BACKEND_PASSWORD" => Some(BACKEND_PASSWORD.to_owned()),
        "TEST_MD5_PASSWORD" => Some(MD5_BACKEND_PASSWORD.to_owned()),
        _ => None,
    }
}

/// Starts a proxy in-process on a free port.
pub async fn start(yaml: &str) -> Proxy {
    start_with(yaml, None).await
}

/// `yaml` with the test secrets written in: an in-process proxy re-reads its
/// file with this process's environment, which does not have them.
pub fn with_literal_secrets(yaml: &str) -> String {
    yaml.replace("${TEST_BACKEND_PASSWORD}", BACKEND_PASSWORD)
        .replace("${TEST_MD5_PASSWORD}", MD5_BACKEND_PASSWORD)
}

/// A proxy whose config lives in a file (returned), so it can be reloaded.
pub async fn start_file(yaml: &str) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    (start_with(yaml, Some(path)).await, dir)
}

async fn start_with(yaml: &str, path: Option<std::path::PathBuf>) -> Proxy {
    // RUST_LOG=pgtenant=debug shows the proxy's logs beside a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let config = pgtenant::config::parse(yaml, &env)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{yaml}"));
    let proxy = pgtenant::app::Proxy::bind(config, path)
        .await
        .expect("proxy starts");
    let port = proxy.local_addr().port();
    let metrics = proxy.metrics_addr();
    let deps = std::sync::Arc::clone(proxy.deps());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(proxy.run(async {
        let _ = rx.await;
        pgtenant::app::Stop::Fast
    }));
    Proxy {
        port,
        deps,
        metrics,
        stop: Some(tx),
    }
}

/// Waits (up to 2 s) until no client of `proxy` is inside a transaction: a
/// transaction's counts reach the metrics just after its client has the reply.
pub async fn settled(proxy: &Proxy) {
    use pgtenant::session::control::ClientState;
    for _ in 0..200 {
        let clients = proxy.deps.control.clients();
        if clients.iter().all(|c| c.state() == ClientState::Idle) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `GET path` over HTTP/1.1: status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The value of one sample line, `name{labels} value`, in a `/metrics` text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// The real binary, `pgtenant run --config <path>`, with its log collected.
pub struct Binary {
    pub child: std::process::Child,
    pub port: u16,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Binary {
    pub fn start(path: &std::path::Path, rust_log: &str) -> Binary {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .args(["run", "--config"])
            .arg(path)
            .env("RUST_LOG", rust_log)
            .env("TEST_BACKEND_PASSWORD", BACKEND_PASSWORD)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = std::sync::Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("accepting clients") {
                    let _ = tx.send(line.clone());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the binary did not start:\n{}", log.lock().unwrap()));
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|p| {
                p.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no port in {line}"));
        Binary {
            child,
            port,
            log,
            reader: Some(reader),
        }
    }

    /// Sends `signal`, waits for the exit and returns the whole log.
    pub fn stop(&mut self, signal: &str) -> String {
        self.signal(signal);
        self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.log()
    }

    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The `/metrics` listener, from its start-up log line.
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .unwrap_or_else(|| panic!("no metrics listener in the log:\n{log}"));
        let port: String = line
            .split("127.0.0.1:")
            .nth(1)
            .unwrap()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        format!("127.0.0.1:{port}").parse().unwrap()
    }

    /// Waits for the process to exit: its status and how long it took.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    pub fn client_config(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        client_config(self.port, user, password, db)
    }
}

/// Driver settings for logging in through a proxy on `port`.
pub fn client_config(port: u16, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(db);
    config
}

/// `pgbench -i -s 1` into `db`, with the tables open to the tenants' role.
pub fn pgbench_init(db: &str) {
    let bin = pgtenant::demo::postgres::find_bin().unwrap();
    let init = std::process::Command::new(bin.join("pgbench"))
        .args(["-i", "-s", "1", "-q", "-h"])
        .arg(pg().pg.dir())
        .args(["-p", &pg().pg.port().to_string(), "-U", "postgres", db])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    pg().psql(
        db,
        "GRANT SELECT, UPDATE, INSERT ON ALL TABLES IN SCHEMA public TO PUBLIC",
    );
}

/// pgbench through a proxy on `port` as `tenant`'s app user, with `options`
/// (mode, clients, duration…) before the connection arguments.
pub fn pgbench_as(port: u16, db: &str, tenant: &str, options: &[&str]) -> tokio::process::Command {
    let bin = pgtenant::demo::postgres::find_bin().unwrap();
    let mut command = tokio::process::Command::new(bin.join("pgbench"));
    command
        .args(options)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U"])
        .arg(format!("app.{tenant}"))
        .arg(db)
        .env("PGPASSWORD", APP_PASSWORD);
    command
}

/// Asserts a pgbench run succeeded with no failed transaction and more than
/// `at_least` done.
pub fn assert_pgbench_clean(what: &str, out: &std::process::Output, at_least: u64) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("number of failed transactions: 0"),
        "{what}: {stdout}"
    );
    let tx: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(tx > at_least, "{what}: only {tx} transactions\n{stdout}");
}

/// Waits (up to 2.5 s) for PostgreSQL to have no session of `superuser`'s
/// database left idle in a transaction; returns how many there still are.
pub async fn open_transactions(superuser: &Client) -> i64 {
    let mut open = 0;
    for _ in 0..50 {
        open = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    open
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects and keeps the connection task's outcome: a fatal error the proxy
/// sends to an idle client shows there.
pub async fn connect_watched(
    config: &tokio_postgres::Config,
) -> (
    Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, conn) = config.connect(NoTls).await.expect("client connects");
    (client, tokio::spawn(conn))
}

impl Proxy {
    pub fn url(&self, user: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={APP_PASSWORD} dbname={db}",
            self.port
        )
    }

    /// Logs in as `app.<tenant>`.
    pub async fn connect(&self, tenant: &str, db: &str) -> Client {
        self.try_connect(&format!("app.{tenant}"), APP_PASSWORD, db)
            .await
            .expect("client connects")
    }

    /// Driver settings for logging in through this proxy.
    pub fn client_config(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        client_config(self.port, user, password, db)
    }

    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = self
            .client_config(user, password, db)
            .connect(NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// The SQLSTATE of a failed call.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("not a database error: {e}"))
}

/// One text value from a simple query.
pub async fn one(client: &Client, sql: &str) -> String {
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(r.get(0).unwrap_or("NULL").to_owned())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Logs in over a raw socket (SCRAM through rust-postgres's client side) and
/// reads up to the first ReadyForQuery, for tests that send bytes no driver would.
pub async fn raw_login(port: u16, user: &str, password: &str, db: &str) -> tokio::net::TcpStream {
    use bytes::BytesMut;
    use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
    use postgres_protocol::message::{backend::Message, frontend};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", db)], &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    loop {
        let msg = loop {
            if let Some(msg) = Message::parse(&mut buf).unwrap() {
                break msg;
            }
            assert!(
                stream.read_buf(&mut buf).await.unwrap() > 0,
                "proxy closed during login"
            );
        };
        out.clear();
        match msg {
            Message::AuthenticationSasl(_) => {
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out).unwrap()
            }
            Message::AuthenticationSaslContinue(body) => {
                scram.update(body.data()).unwrap();
                frontend::sasl_response(scram.message(), &mut out).unwrap();
            }
            Message::AuthenticationSaslFinal(body) => scram.finish(body.data()).unwrap(),
            Message::ReadyForQuery(_) => return stream,
            Message::ErrorResponse(_) => panic!("login refused"),
            _ => {}
        }
        if !out.is_empty() {
            stream.write_all(&out).await.unwrap();
        }
    }
}

/// Reads until EOF (or 5 s) and returns the SQLSTATEs of the ErrorResponses seen.
pub async fn error_codes_until_close(stream: &mut tokio::net::TcpStream) -> Vec<String> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut bytes),
    )
    .await
    .expect("the proxy did not close the connection")
    .unwrap();
    let mut codes = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let len = i32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize + 1;
        let (msg, after) = rest.split_at(len.min(rest.len()));
        if msg[0] == b'E' {
            let fields = &msg[5..];
            if let Some(pos) = fields.windows(1).position(|w| w[0] == b'C') {
                let code = &fields[pos + 1..pos + 6];
                codes.push(String::from_utf8_lossy(code).into_owned());
            }
        }
        rest = after;
    }
    codes
}

/// Writes `out` and reads replies until `ready` ReadyForQuery messages arrive
/// (10 s at most). Each reply is its tag, followed by the SQLSTATE for errors,
/// the status for ReadyForQuery, the first column for rows and the tag for
/// CommandComplete: "1", "E26000", "ZI", "D42", "CSELECT 1".
pub async fn exchange(stream: &mut tokio::net::TcpStream, out: &[u8], ready: usize) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(out).await.unwrap();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut seen = 0;
    let read = async {
        loop {
            while buf.len() >= 5 {
                let len = i32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize + 1;
                if buf.len() < len {
                    break;
                }
                let msg: Vec<u8> = buf.drain(..len).collect();
                let body = &msg[5..];
                let text = |b: &[u8]| {
                    String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap()).into_owned()
                };
                let reply = match msg[0] {
                    b'E' => {
                        let at = body.iter().position(|&c| c == b'C').unwrap();
                        format!("E{}", text(&body[at + 1..]))
                    }
                    b'Z' => format!("Z{}", body[0] as char),
                    b'C' => format!("C{}", text(body)),
                    b'D' => {
                        let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                        if len < 0 {
                            "DNULL".to_owned()
                        } else {
                            let v = &body[6..6 + len as usize];
                            format!("D{}", String::from_utf8_lossy(v))
                        }
                    }
                    b'N' | b'S' => continue,
                    tag => (tag as char).to_string(),
                };
                if msg[0] == b'Z' {
                    seen += 1;
                }
                replies.push(reply);
                if seen == ready {
                    return;
                }
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "proxy closed the connection; replies so far: {replies:?}"
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no reply in time; replies so far: {replies:?}"));
    replies
}

/// Cancels `SELECT pg_sleep(10)` on `client` through its cancel key after
/// 300 ms: the query ends with 57014 well before it would, and the session
/// goes on.
pub async fn cancel_a_running_query(client: &Client) {
    let token = client.cancel_token();
    let started = std::time::Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await.unwrap();
    });
    let err = client
        .simple_query("SELECT pg_sleep(10)")
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert_eq!(code(&err), "57014");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(one(client, "SELECT 1").await, "1");
}

/// `config(db, …)` with two workers and one tier `one` of a single server,
/// its cluster's `host:` line replaced by `host` and `cluster_extra` added
/// (e.g. a `tls:` line).
pub fn one_server_two_workers(db: &str, host: &str, cluster_extra: &str) -> String {
    let yaml = config(
        db,
        "\n  one: { pool_size: 1 }",
        &tenants("one", "one", "one", "one"),
    );
    format!("workers: 2\n{yaml}")
        .replace("    host: 127.0.0.1\n", &format!("    host: {host}\n"))
        .replace(
            "    max_server_connections: 50\n",
            &format!("    max_server_connections: 50\n{cluster_extra}"),
        )
}

/// Two clients take turns on a pool of one server (a proxy from
/// [`one_server_two_workers`]): sessions go to the workers in turn, so the
/// server moves to the other worker at each turn. Each transaction must see
/// its own tenant, on the one backend.
pub async fn servers_move_between_workers(proxy: &Proxy, db: &str) {
    let acme = proxy.connect("acme", db).await;
    let globex = proxy.connect("globex", db).await;
    let sql = "SELECT current_setting('app.current_tenant') || ' ' || pg_backend_pid()";
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..3 {
        for (tenant, client) in [("acme", &acme), ("globex", &globex)] {
            let row = one(client, sql).await;
            let (seen, pid) = row.split_once(' ').expect("tenant and pid");
            assert_eq!(seen, tenant);
            pids.insert(pid.to_owned());
        }
    }
    assert_eq!(pids.len(), 1, "one server for both clients: {pids:?}");
    let moves: u64 = proxy
        .deps
        .runtime
        .load()
        .pools
        .iter()
        .map(|(_, pool)| pool.metrics.server_moves.get())
        .sum();
    assert!(moves >= 5, "the server moved at each turn, counted {moves}");
}
