//! The HTTP listener: `GET /metrics` (Prometheus text format), `/healthz`
//! (the process answers) and `/readyz` (see [`Health::ready`]). One request per
//! connection; enough HTTP/1.1 for Prometheus, kubelet probes and curl.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Health;
use crate::metrics::text::{CONTENT_TYPE, Kind, Writer};
use crate::session::Deps;

/// Largest request head read; scrapers send a few hundred bytes.
const MAX_REQUEST: usize = 8192;

pub async fn serve(listener: TcpListener, deps: Arc<Deps>, health: Arc<Health>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (deps, health) = (Arc::clone(&deps), Arc::clone(&health));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), respond(stream, &deps, &health))
                .await;
        });
    }
}

async fn respond(mut stream: TcpStream, deps: &Deps, health: &Health) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, render(deps)),
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET" | "HEAD", "/readyz") => match health.ready(deps) {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_owned()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Pool gauges summed per (cluster, tier), read from the live pools.
#[derive(Default)]
struct Gauges {
    clients: [u32; 3],
    servers: [u32; 3],
    size: u32,
    max_wait: Duration,
}

/// Reads one gauge triple (per state) of a pool.
type StateCounts = fn(&Gauges) -> [u32; 3];
type PoolValue = fn(&Gauges) -> f64;

/// The whole exposition: live gauges, then the counters in [`crate::metrics`].
pub fn render(deps: &Deps) -> String {
    let mut w = Writer::default();
    let runtime = deps.runtime.load_full();
    let mut gauges: BTreeMap<(String, String), Gauges> = BTreeMap::new();
    for (_, pool) in runtime.pools.iter() {
        let s = pool.stats();
        let g = gauges
            .entry((pool.cluster().name.clone(), pool.identity.tier.clone()))
            .or_default();
        let active = s.active();
        g.clients[0] += active;
        g.clients[1] += s.waiting;
        g.clients[2] += s.idle_clients();
        g.servers[0] += active;
        g.servers[1] += s.idle;
        g.servers[2] += s.connecting;
        g.size += s.sizes.max_size;
        g.max_wait = g.max_wait.max(s.max_wait);
    }
    let by_state: [(&str, &str, [&str; 3], StateCounts); 2] = [
        (
            "pgtenant_pool_clients",
            "Logged-in clients per pool: in a transaction, waiting for a server, idle.",
            ["active", "waiting", "idle"],
            |g| g.clients,
        ),
        (
            "pgtenant_pool_servers",
            "Server connections per pool: in a transaction, idle, being opened.",
            ["active", "idle", "connecting"],
            |g| g.servers,
        ),
    ];
    for (name, help, states, get) in by_state {
        w.family(name, Kind::Gauge, help);
        for ((cluster, tier), g) in &gauges {
            for (state, n) in states.iter().zip(get(g)) {
                w.sample(
                    name,
                    &[("cluster", cluster), ("tier", tier), ("state", state)],
                    n as f64,
                );
            }
        }
    }
    let per_pool: [(&str, &str, PoolValue); 2] = [
        (
            "pgtenant_pool_size",
            "Most server connections the pools may open (pool_size).",
            |g| g.size as f64,
        ),
        (
            "pgtenant_pool_max_wait_seconds",
            "How long the longest-waiting transaction has waited for a server.",
            |g| g.max_wait.as_secs_f64(),
        ),
    ];
    for (name, help, get) in per_pool {
        w.family(name, Kind::Gauge, help);
        for ((cluster, tier), g) in &gauges {
            w.sample(name, &[("cluster", cluster), ("tier", tier)], get(g));
        }
    }
    let singles = [
        (
            "pgtenant_client_connections",
            "Open client connections, logins in progress included.",
            deps.connections.count() as f64,
        ),
        (
            "pgtenant_draining",
            "1 while shutting down.",
            f64::from(u8::from(deps.control.draining())),
        ),
    ];
    for (name, help, value) in singles {
        w.family(name, Kind::Gauge, help);
        w.sample(name, &[], value);
    }
    let name = "pgtenant_build_info";
    w.family(name, Kind::Gauge, "Always 1; the version is a label.");
    w.sample(name, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    deps.metrics
        .write(&mut w, &|tenant| deps.clients.get(tenant));
    w.finish()
}
