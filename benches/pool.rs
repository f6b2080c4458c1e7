//! Pool checkout and release under contention: threads taking an idle server
//! and giving it back, as every transaction does, on one pool of real
//! PostgreSQL connections (the pool's lock and bookkeeping are what is timed;
//! the servers only have to exist and be alive).
//!
//! Needs the benchmark PostgreSQL of `benches/e2e` (`benches/e2e/pg-setup.sh`
//! once, then `benches/e2e/pg-start.sh`), or another one named by
//! `PGTENANT_BENCH_PG=host:port` with user, password and database `bench`.
//!
//! Run: `cargo bench --bench pool`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use divan::Bencher;
use pgtenant::metrics::PoolMetrics;
use pgtenant::pool::{Pool, PoolIdentity, PoolSizes};

fn main() {
    divan::main();
}

/// More servers than benchmark threads, so a checkout finds one idle.
const SERVERS: u32 = 8;

struct Bench {
    pool: Arc<Pool>,
    tenants: Vec<Arc<str>>,
    /// Keeps the servers' sockets registered while the benchmarks run.
    _runtime: tokio::runtime::Runtime,
}

static BENCH: LazyLock<Bench> = LazyLock::new(|| {
    let address = std::env::var("PGTENANT_BENCH_PG").unwrap_or("127.0.0.1:5440".into());
    let (host, port) = address
        .rsplit_once(':')
        .expect("PGTENANT_BENCH_PG is host:port");
    let yaml = format!(
        "listen: 127.0.0.1:0
clusters:
  bench: {{ host: {host}, port: {port}, database: bench, user: bench, password: bench, max_server_connections: {SERVERS} }}
tiers:
  bench: {{ pool_size: {SERVERS}, min_pool_size: {SERVERS} }}
tenants:
  # md5 of the password and user, both `bench` (benches/e2e/env.sh).
  bench: {{ tier: bench, cluster: bench, users: {{ bench: {{ password: md58cd23f098e139362116d611b32b971a9 }} }} }}
"
    );
    let config = pgtenant::config::parse(&yaml, &|_| None).expect("the benchmark config");
    let sizes = PoolSizes {
        max_size: SERVERS,
        min_size: SERVERS,
        max_tenant_share: SERVERS,
    };
    let identity = PoolIdentity {
        label: "bench".into(),
        tier: "bench".into(),
    };
    let cluster = Arc::clone(&config.clusters["bench"]);
    let pool = Pool::new(identity, sizes, cluster, Arc::new(PoolMetrics::default()));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(pool.maintain());
    assert_eq!(
        pool.stats().idle,
        SERVERS,
        "could not open {SERVERS} servers on {address}: start the benchmark PostgreSQL \
         (benches/e2e/pg-setup.sh, then benches/e2e/pg-start.sh) or set PGTENANT_BENCH_PG"
    );
    Bench {
        pool,
        tenants: (0..100).map(|i| Arc::from(format!("tenant{i}"))).collect(),
        _runtime: runtime,
    }
});

/// One tenant: every thread contends for the same per-tenant count too.
#[divan::bench(threads = [1, 2, 4])]
fn checkout_release_one_tenant(b: Bencher) {
    let bench = &*BENCH;
    let tenant = &bench.tenants[0];
    b.bench(|| {
        if let Some(lease) = bench.pool.checkout_idle(tenant) {
            lease.release();
        }
    });
}

/// Each thread's checkouts for a different tenant of the pool: servers carry
/// no context here, so this times the per-tenant bookkeeping, not affinity.
#[divan::bench(threads = [1, 2, 4])]
fn checkout_release_many_tenants(b: Bencher) {
    let bench = &*BENCH;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    b.bench(|| {
        let tenant = &bench.tenants[SLOT.with(|i| *i) % bench.tenants.len()];
        if let Some(lease) = bench.pool.checkout_idle(tenant) {
            lease.release();
        }
    });
}
