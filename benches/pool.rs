//! Pool checkout and release under contention: threads taking an idle server
//! and giving it back, as every transaction does, on one pool of real
//! PostgreSQL connections (the pool's lock and bookkeeping are what is timed;
//! the servers only have to exist and be alive).
//!
//! Starts a throwaway PostgreSQL of its own (as the tests do), so it needs
//! only the PostgreSQL server binaries.
//!
//! Run: `cargo bench --bench pool`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use divan::Bencher;
use pgtenant::demo::TempPostgres;
use pgtenant::metrics::PoolMetrics;
use pgtenant::pool::{Pool, PoolIdentity, PoolMember, PoolSizes};

fn main() {
    divan::main();
}

/// More servers than benchmark threads, so a checkout finds one idle.
const SERVERS: u32 = 8;

struct Bench {
    /// One client of each of 100 tenants (each holds the pool).
    tenants: Vec<PoolMember>,
    /// For queued checkouts, which these never are (more servers than threads).
    deadline: std::time::Instant,
    /// Keeps the servers' sockets registered while the benchmarks run.
    _runtime: tokio::runtime::Runtime,
    _postgres: TempPostgres,
}

static BENCH: LazyLock<Bench> = LazyLock::new(|| {
    let postgres = TempPostgres::start(&[])
        .unwrap_or_else(|e| panic!("cannot start the benchmark PostgreSQL: {e:#}"));
    postgres
        .psql(
            "postgres",
            "CREATE ROLE bench LOGIN PASSWORD 'bench'; CREATE DATABASE bench OWNER bench;",
        )
        .expect("creating the benchmark role and database");
    let port = postgres.port();
    let yaml = format!(
        "listen: 127.0.0.1:0
clusters:
  bench: {{ host: 127.0.0.1, port: {port}, database: bench, user: bench, password: bench, max_server_connections: {SERVERS} }}
tiers:
  bench: {{ pool_size: {SERVERS}, min_pool_size: {SERVERS} }}
tenants:
  # md5 of the password and user, both `bench`.
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
        "could not open {SERVERS} servers on the benchmark PostgreSQL:\n{}",
        postgres.log()
    );
    let tenants = (0..100)
        .map(|i| pool.member(&Arc::from(format!("tenant{i}"))))
        .collect();
    Bench {
        tenants,
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(3600),
        _runtime: runtime,
        _postgres: postgres,
    }
});

/// One tenant: every thread contends for the same per-tenant count too.
#[divan::bench(threads = [1, 2, 4])]
fn checkout_release_one_tenant(b: Bencher) {
    let bench = &*BENCH;
    let tenant = &bench.tenants[0];
    b.bench(|| {
        if let Ok(lease) = tenant.checkout_now(bench.deadline) {
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
        if let Ok(lease) = tenant.checkout_now(bench.deadline) {
            lease.release();
        }
    });
}
