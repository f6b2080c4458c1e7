//! What the proxy counts, kept as plain atomics on the objects that do the work
//! and read when `/metrics` is scraped: no registry lookup on the hot path.
//!
//! [`PoolMetrics`] are per (cluster, tier) and outlive pools, so counters stay
//! monotonic across reloads that rebuild a pool. [`TenantStats`] are per tenant;
//! [`tenants`] folds them into a bounded number of series. Gauges (clients,
//! servers) are not kept here: they are read from the live pools at scrape time.

pub mod histogram;
pub mod tenants;
pub mod text;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

pub use histogram::Histogram;
use text::{Kind, Writer};

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Counters and histograms of one (cluster, tier), shared by its tier pool and
/// the dedicated pools of its tenants.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    pub transactions: Counter,
    /// Client requests answered with `ReadyForQuery` (a `Query` or a `Sync`).
    pub queries: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub server_connects: Counter,
    pub server_connect_errors: Counter,
    /// Servers moved to another worker thread's event loop for a transaction.
    pub server_moves: Counter,
    /// Transactions that first set the tenant's context on their server.
    pub context_switches: Counter,
    pub queue_timeouts: Counter,
    pub queue_wait: Histogram,
    pub transaction_time: Histogram,
    pub connect_time: Histogram,
    /// Errors sent to clients, by SQLSTATE class (the first two characters).
    errors: Mutex<BTreeMap<[u8; 2], u64>>,
}

impl PoolMetrics {
    /// Counts an error by its SQLSTATE; anything malformed counts as class `XX`.
    pub fn error(&self, sqlstate: &[u8]) {
        let class = match sqlstate {
            [a, b, ..] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => [*a, *b],
            _ => *b"XX",
        };
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(class).or_default() += 1;
    }

    pub fn errors(&self) -> Vec<(String, u64)> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors
            .iter()
            .map(|(c, n)| (String::from_utf8_lossy(c).into_owned(), *n))
            .collect()
    }
}

/// Picks one counter or histogram of a pool's metrics.
type CounterOf = fn(&PoolMetrics) -> &Counter;
type HistogramOf = fn(&PoolMetrics) -> &Histogram;

/// Per-tenant activity, folded into bounded series by [`tenants::TenantSeries`].
#[derive(Debug, Default)]
pub struct TenantStats {
    pub transactions: Counter,
    pub queries: Counter,
    pub queue_wait_micros: Counter,
    pub errors: Counter,
}

/// Everything `/metrics` reports that is not read from live pools.
pub struct Metrics {
    pools: Mutex<BTreeMap<(String, String), Arc<PoolMetrics>>>,
    pub tenants: tenants::TenantSeries,
    pub auth_failures: Counter,
    pub logins: Counter,
    pub reloads: Counter,
    pub reload_failures: Counter,
    /// Unix time of the last successful (re)load.
    pub config_loaded_at: AtomicU64,
}

impl Metrics {
    pub fn new(max_tenant_series: usize) -> Metrics {
        Metrics {
            pools: Mutex::default(),
            tenants: tenants::TenantSeries::new(max_tenant_series),
            auth_failures: Counter::default(),
            logins: Counter::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            config_loaded_at: AtomicU64::new(unix_now()),
        }
    }

    /// The counters of (cluster, tier), created on first use and kept for the
    /// process's life (a handful per tier, so this never grows unbounded).
    pub fn pool(&self, cluster: &str, tier: &str) -> Arc<PoolMetrics> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            pools
                .entry((cluster.to_owned(), tier.to_owned()))
                .or_default(),
        )
    }

    pub fn pools(&self) -> Vec<((String, String), Arc<PoolMetrics>)> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }

    pub fn loaded_now(&self) {
        self.config_loaded_at.store(unix_now(), Relaxed);
    }

    /// Writes the per-(cluster, tier) counters and histograms, the per-tenant
    /// series and the proxy-wide counters; `clients` gives a tenant's open
    /// client connections.
    pub fn write(&self, w: &mut Writer, clients: &dyn Fn(&str) -> u32) {
        let pools = self.pools();
        let counters: [(&str, &str, CounterOf); 9] = [
            (
                "pgtenant_transactions_total",
                "Transactions run on servers.",
                |p| &p.transactions,
            ),
            (
                "pgtenant_queries_total",
                "Client requests answered (each Query or Sync).",
                |p| &p.queries,
            ),
            (
                "pgtenant_client_bytes_received_total",
                "Bytes read from clients.",
                |p| &p.bytes_received,
            ),
            (
                "pgtenant_client_bytes_sent_total",
                "Bytes written to clients.",
                |p| &p.bytes_sent,
            ),
            (
                "pgtenant_server_connects_total",
                "Server connections opened.",
                |p| &p.server_connects,
            ),
            (
                "pgtenant_server_connect_errors_total",
                "Server connections that failed to open.",
                |p| &p.server_connect_errors,
            ),
            (
                "pgtenant_server_moves_total",
                "Server connections moved to another worker thread for a transaction (two epoll_ctl calls each).",
                |p| &p.server_moves,
            ),
            (
                "pgtenant_context_switches_total",
                "Transactions that first set their tenant's context on a server carrying another's (one more statement for PostgreSQL).",
                |p| &p.context_switches,
            ),
            (
                "pgtenant_queue_timeouts_total",
                "Transactions refused after waiting queue_timeout for a server.",
                |p| &p.queue_timeouts,
            ),
        ];
        for (name, help, get) in counters {
            w.family(name, Kind::Counter, help);
            for ((cluster, tier), p) in &pools {
                w.sample(
                    name,
                    &[("cluster", cluster), ("tier", tier)],
                    get(p).get() as f64,
                );
            }
        }
        let name = "pgtenant_errors_total";
        w.family(
            name,
            Kind::Counter,
            "Errors sent to clients, by SQLSTATE class.",
        );
        for ((cluster, tier), p) in &pools {
            for (class, n) in p.errors() {
                w.sample(
                    name,
                    &[("cluster", cluster), ("tier", tier), ("class", &class)],
                    n as f64,
                );
            }
        }
        let histograms: [(&str, &str, HistogramOf); 3] = [
            (
                "pgtenant_queue_wait_seconds",
                "Time a transaction waited for a server.",
                |p| &p.queue_wait,
            ),
            (
                "pgtenant_transaction_duration_seconds",
                "Time a transaction held its server.",
                |p| &p.transaction_time,
            ),
            (
                "pgtenant_server_connect_duration_seconds",
                "Time to open and authenticate a server connection.",
                |p| &p.connect_time,
            ),
        ];
        for (name, help, get) in histograms {
            histogram::family(w, name, help);
            for ((cluster, tier), p) in &pools {
                get(p).write(w, name, &[("cluster", cluster), ("tier", tier)]);
            }
        }
        self.tenants.write(w, clients);
        let globals: [(&str, &str, &Counter); 4] = [
            (
                "pgtenant_logins_total",
                "Successful client logins.",
                &self.logins,
            ),
            (
                "pgtenant_auth_failures_total",
                "Failed or refused client logins.",
                &self.auth_failures,
            ),
            (
                "pgtenant_config_reloads_total",
                "Configuration reloads applied.",
                &self.reloads,
            ),
            (
                "pgtenant_config_reload_failures_total",
                "Configuration reloads refused (the running config stayed).",
                &self.reload_failures,
            ),
        ];
        for (name, help, c) in globals {
            w.family(name, Kind::Counter, help);
            w.sample(name, &[], c.get() as f64);
        }
        let name = "pgtenant_config_last_reload_success_timestamp_seconds";
        w.family(
            name,
            Kind::Gauge,
            "Unix time the running configuration was loaded.",
        );
        w.sample(name, &[], self.config_loaded_at.load(Relaxed) as f64);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
