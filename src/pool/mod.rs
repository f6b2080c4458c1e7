//! Pools of server connections: one per (cluster, tier), plus one per tenant that
//! has a dedicated pool.
//!
//! A pool's state sits behind one short-held mutex, never held across `.await`.
//! A checkout that cannot be served at once queues in a [`FairQueue`]; a released
//! server (or freed capacity) is handed straight to the next eligible waiter as a
//! [`Lease`]. Leases and waits are RAII: dropping a lease frees its capacity and
//! closes its server; dropping a wait removes the waiter. So a client that
//! vanishes, times out or is cancelled at any `.await` leaks nothing.

mod queue;
mod registry;

use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use crate::config::Cluster;
use crate::metrics::PoolMetrics;
use crate::prepared::{Invalidations, ServerStatements};
use crate::server::{self, Server, ServerError};
use crate::workers::{self, WorkerId};

use queue::{FairQueue, Waiter};
pub use registry::{PoolKey, Pools};

/// How often queued checkouts are checked against their deadline: a queue
/// timeout fires up to this much late.
pub const EXPIRY_PERIOD: Duration = Duration::from_millis(50);

/// Every pool alive. A pool that a reload replaced lives on while its last
/// leases and waiters do, and those waiters must still time out.
static LIVE: Mutex<Vec<Weak<Pool>>> = Mutex::new(Vec::new());

fn lock_live() -> MutexGuard<'static, Vec<Weak<Pool>>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails the queued checkouts of every pool whose deadline has passed. Run
/// every [`EXPIRY_PERIOD`]: one timer for all waiters instead of one per wait,
/// which cost each queued checkout about 600 instructions (the time driver's
/// lock, twice, and its wheel).
pub fn expire_waits() {
    let now = Instant::now();
    lock_live().retain(|pool| pool.upgrade().inspect(|p| p.expire_waits(now)).is_some());
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("queue timeout")]
    QueueTimeout,
    #[error("connect failed: {0}")]
    Connect(#[from] ServerError),
}

/// What a pool is, fixed for its life.
#[derive(Debug, Clone)]
pub struct PoolIdentity {
    /// Shown to clients and in logs: the tier name, or `tenant <id>` for a dedicated pool.
    pub label: String,
    /// The tier, for metrics (a dedicated pool counts with its tenant's tier).
    pub tier: String,
}

/// Sizes of one pool; a reload may change them (see [`Pool::resize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    pub max_size: u32,
    pub min_size: u32,
    pub max_tenant_share: u32,
}

/// A tenant of one pool, resolved once per client and pool ([`Pool::member`])
/// so that a checkout and its release count the tenant's servers without a
/// map lookup (there were four per transaction, each hashing the tenant id).
pub struct PoolTenant {
    pub id: Arc<str>,
    /// Servers it holds here (or is opening), for `max_tenant_share`. Only
    /// changed under the pool's lock (an atomic so the handle can be shared).
    held: AtomicU32,
}

impl PoolTenant {
    fn held(&self) -> u32 {
        self.held.load(Ordering::Relaxed)
    }
}

/// A pool's handle on one of its tenants. A pool makes one per tenant id, so
/// handles are compared (and hashed, in the wait queue) by identity.
#[derive(Clone)]
pub struct TenantRef(Arc<PoolTenant>);

impl PartialEq for TenantRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TenantRef {}

impl Hash for TenantRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).hash(state);
    }
}

impl Deref for TenantRef {
    type Target = PoolTenant;

    fn deref(&self) -> &PoolTenant {
        &self.0
    }
}

pub struct Pool {
    pub identity: PoolIdentity,
    cluster: ArcSwap<Cluster>,
    pub metrics: Arc<PoolMetrics>,
    inner: Mutex<Inner>,
    /// Statements whose result type changed, shared by this pool's servers.
    invalidations: Arc<Invalidations>,
    /// Servers being opened (counted as held too).
    connecting: AtomicU32,
    /// Logged-in clients whose transactions run here.
    clients: AtomicU32,
}

struct Inner {
    sizes: PoolSizes,
    /// Idle servers, most recently used last.
    /// (Boxed: a server moves between pool and lease as a pointer.)
    #[allow(clippy::vec_box)]
    idle: Vec<Box<Server>>,
    /// This pool's tenants by id, each with the servers it holds (or is
    /// opening). Kept for the pool's life: one entry per tenant of its tier
    /// that ever logged in.
    tenants: foldhash::HashMap<Arc<str>, TenantRef>,
    /// Servers held, summed over tenants. Every open server is either idle or
    /// held, so [`Inner::open`] is derived from this; only [`Inner::hold`] and
    /// [`Inner::unhold`] change the counts.
    held_total: u32,
    queue: FairQueue<TenantRef, oneshot::Sender<Lease>>,
    next_waiter: u64,
    /// `ParameterStatus` set of the most recent server connection.
    params: Option<Arc<Vec<(String, String)>>>,
}

impl Inner {
    /// Servers open or being opened.
    fn open(&self) -> u32 {
        self.idle.len() as u32 + self.held_total
    }

    /// The handle on tenant `id`, made on first use.
    fn tenant(&mut self, id: &Arc<str>) -> TenantRef {
        if let Some(tenant) = self.tenants.get(id) {
            return tenant.clone();
        }
        let tenant = TenantRef(Arc::new(PoolTenant {
            id: Arc::clone(id),
            held: AtomicU32::new(0),
        }));
        self.tenants.insert(Arc::clone(id), tenant.clone());
        tenant
    }

    /// Starts one hold of `tenant`.
    fn hold(&mut self, tenant: &PoolTenant) {
        tenant.held.store(tenant.held() + 1, Ordering::Relaxed);
        self.held_total += 1;
    }

    /// The idle server to hand to `tenant` on `worker`: the most recently
    /// used among those that already carry its context (sparing the server
    /// the switch), preferring one on that worker (sparing the move, see
    /// [`crate::workers`]).
    fn take_idle(&mut self, tenant: &str, worker: WorkerId) -> Option<Box<Server>> {
        let score = |s: &Server| {
            let carries = s.context.as_ref().is_some_and(|c| c.tenant == tenant);
            2 * u8::from(carries) + u8::from(s.home == worker)
        };
        let mut best: Option<(usize, u8)> = None;
        for (i, s) in self.idle.iter().enumerate().rev() {
            let score = score(s);
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((i, score));
                if score == 3 {
                    break;
                }
            }
        }
        best.map(|(i, _)| self.idle.remove(i))
    }

    /// Ends one hold of `tenant`; a reusable server goes idle, `None` means the
    /// capacity it stood for is free again.
    fn unhold(&mut self, tenant: &PoolTenant, server: Option<Box<Server>>) {
        tenant.held.store(tenant.held() - 1, Ordering::Relaxed);
        self.held_total -= 1;
        if let Some(s) = server {
            self.idle.push(s);
        }
    }
}

/// Gauges of one pool, read on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub idle: u32,
    pub open: u32,
    /// Servers being opened (part of `open`).
    pub connecting: u32,
    pub waiting: u32,
    pub clients: u32,
    pub sizes: PoolSizes,
    /// How long the oldest waiter has waited.
    pub max_wait: Duration,
}

impl PoolStats {
    /// Servers in a transaction (each held by one client).
    pub fn active(&self) -> u32 {
        self.open - self.idle - self.connecting
    }

    /// Logged-in clients neither in a transaction nor queued.
    pub fn idle_clients(&self) -> u32 {
        self.clients.saturating_sub(self.active() + self.waiting)
    }
}

/// An idle server as the admin console shows it.
#[derive(Debug, Clone)]
pub struct IdleServer {
    pub id: u64,
    pub process_id: i32,
    pub connected_at: SystemTime,
    pub idle_for: Duration,
    /// The tenant whose context it carries.
    pub tenant: Option<String>,
}

impl Pool {
    pub fn new(
        identity: PoolIdentity,
        sizes: PoolSizes,
        cluster: Arc<Cluster>,
        metrics: Arc<PoolMetrics>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            identity,
            cluster: ArcSwap::new(cluster),
            metrics,
            inner: Mutex::new(Inner {
                sizes,
                idle: Vec::new(),
                tenants: Default::default(),
                held_total: 0,
                queue: FairQueue::default(),
                next_waiter: 0,
                params: None,
            }),
            invalidations: Arc::default(),
            connecting: AtomicU32::new(0),
            clients: AtomicU32::new(0),
        });
        lock_live().push(Arc::downgrade(&pool));
        pool
    }

    pub fn cluster(&self) -> Arc<Cluster> {
        self.cluster.load_full()
    }

    pub fn sizes(&self) -> PoolSizes {
        self.lock().sizes
    }

    /// Applies a reload: timeouts and limits of the cluster (its servers are
    /// unchanged, see [`Cluster::same_servers`]) and new sizes. A smaller pool
    /// closes idle servers now and busy ones as they come back; a bigger one
    /// serves its waiters at once.
    pub fn reconfigure(self: &Arc<Self>, sizes: PoolSizes, cluster: Arc<Cluster>) {
        self.cluster.store(cluster);
        let mut inner = self.lock();
        inner.sizes = sizes;
        while inner.open() > sizes.max_size && !inner.idle.is_empty() {
            // Oldest idle first.
            inner.idle.remove(0);
        }
        self.dispatch(&mut inner);
    }

    /// A new server for this pool.
    async fn connect(&self) -> Result<Box<Server>, ServerError> {
        let cluster = self.cluster();
        let _connecting = Connecting::new(&self.connecting);
        let started = Instant::now();
        let mut server = match server::connect(&cluster).await {
            Ok(server) => server,
            Err(e) => {
                self.metrics.server_connect_errors.inc();
                return Err(e);
            }
        };
        self.metrics.connect_time.observe(started.elapsed());
        self.metrics.server_connects.inc();
        server.statements = ServerStatements::new(Arc::clone(&self.invalidations));
        self.lock().params = Some(Arc::clone(&server.params));
        Ok(Box::new(server))
    }

    /// A logged-in client of `tenant` here: counted until it drops, and the
    /// way its transactions check out servers.
    pub fn member(self: &Arc<Self>, tenant: &Arc<str>) -> PoolMember {
        let tenant = self.lock().tenant(tenant);
        self.clients.fetch_add(1, Ordering::Relaxed);
        PoolMember {
            pool: Arc::clone(self),
            tenant,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves counts that are still consistent
        // enough to keep serving; poisoning would take the whole pool down.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        let open = inner.open();
        let idle = inner.idle.len() as u32;
        PoolStats {
            idle,
            open,
            connecting: self.connecting.load(Ordering::Relaxed).min(open - idle),
            waiting: inner.queue.len() as u32,
            clients: self.clients.load(Ordering::Relaxed),
            sizes: inner.sizes,
            max_wait: inner.queue.oldest().map_or(Duration::ZERO, |t| t.elapsed()),
        }
    }

    pub fn idle_servers(&self) -> Vec<IdleServer> {
        let inner = self.lock();
        inner
            .idle
            .iter()
            .map(|s| IdleServer {
                id: s.id,
                process_id: s.cancel.process_id,
                connected_at: s.connected_at,
                idle_for: s.idle_since.elapsed(),
                tenant: s.context.as_ref().map(|c| c.tenant.clone()),
            })
            .collect()
    }

    /// The server parameters clients are shown at login, if a server has been seen.
    pub fn server_params(&self) -> Option<Arc<Vec<(String, String)>>> {
        self.lock().params.clone()
    }

    /// See [`PoolMember::checkout_now`]; `tenant` is this pool's.
    fn checkout_now(
        self: &Arc<Self>,
        tenant: &TenantRef,
        deadline: Instant,
    ) -> Result<Lease, Pending> {
        match self.try_lease(tenant, deadline) {
            Ok(mut lease) => {
                if lease.settle() {
                    Ok(lease)
                } else {
                    Err(Pending::NoServer(lease))
                }
            }
            Err(wait) => Err(Pending::Queued(wait)),
        }
    }

    /// Grants capacity now, or queues the caller.
    fn try_lease(self: &Arc<Self>, tenant: &TenantRef, deadline: Instant) -> Result<Lease, Wait> {
        let mut inner = self.lock();
        let here = workers::current();
        if let Some(server) = self.grant(&mut inner, tenant, here) {
            return Ok(Lease::new(self, tenant.clone(), server));
        }
        let id = inner.next_waiter;
        inner.next_waiter += 1;
        let (tx, rx) = oneshot::channel();
        inner.queue.push(
            tenant,
            Waiter {
                id,
                tx,
                since: Instant::now(),
                deadline,
                worker: here,
            },
        );
        Err(Wait {
            pool: Arc::clone(self),
            tenant: tenant.clone(),
            worker: here,
            id,
            rx,
            served: false,
        })
    }

    /// Takes capacity for `tenant` if the pool and the tenant's share allow:
    /// `Some(Some(server))` an idle server, `Some(None)` a slot to connect in.
    /// `worker` is where the server will be used.
    fn grant(
        &self,
        inner: &mut Inner,
        tenant: &PoolTenant,
        worker: WorkerId,
    ) -> Option<Option<Box<Server>>> {
        if tenant.held() >= inner.sizes.max_tenant_share {
            return None;
        }
        if inner.idle.is_empty() && inner.open() >= inner.sizes.max_size {
            return None;
        }
        let server = inner.take_idle(&tenant.id, worker);
        inner.hold(tenant);
        Some(server)
    }

    /// Returns a lease's capacity: a reusable server goes idle, `None` closes one.
    /// Then serves waiters with whatever became available.
    fn give_back(self: &Arc<Self>, tenant: &PoolTenant, server: Option<Box<Server>>) {
        let mut inner = self.lock();
        inner.unhold(tenant, server);
        if inner.open() > inner.sizes.max_size {
            // Shrunk by a reload: the server just returned is the one to close.
            inner.idle.pop();
        }
        self.dispatch(&mut inner);
    }

    /// Fails the queued checkouts whose deadline is `now` or earlier.
    fn expire_waits(&self, now: Instant) {
        let mut inner = self.lock();
        if !inner.queue.is_empty() {
            inner.queue.expire(now);
        }
    }

    fn dispatch(self: &Arc<Self>, inner: &mut Inner) {
        let here = workers::current();
        while !inner.queue.is_empty()
            && (!inner.idle.is_empty() || inner.open() < inner.sizes.max_size)
        {
            let share = inner.sizes.max_tenant_share;
            let Some((tenant, waiter)) = inner.queue.pop(|t| t.held() < share, here) else {
                return;
            };
            let server = self
                .grant(inner, &tenant, waiter.worker)
                .expect("capacity and share were checked");
            if let Err(mut lease) = waiter.tx.send(Lease::new(self, tenant, server)) {
                // The waiter gave up between its timeout and our send: undo in place.
                lease.live = false;
                inner.unhold(&lease.tenant, lease.server.take());
            }
        }
    }

    /// Closes servers idle for longer than the cluster's `server_idle_timeout`
    /// (down to `min_size`) and dead idle servers, then opens servers up to
    /// `min_size`. Run periodically.
    pub async fn maintain(self: &Arc<Self>) {
        let timeout = self.cluster().server_idle_timeout;
        {
            let mut inner = self.lock();
            inner.idle.retain(|s| s.looks_alive());
            // Oldest idle servers are at the front.
            while inner.open() > inner.sizes.min_size
                && inner
                    .idle
                    .first()
                    .is_some_and(|s| s.idle_since.elapsed() >= timeout)
            {
                inner.idle.remove(0);
            }
            self.dispatch(&mut inner);
        }
        while let Some(mut lease) = self.reserve_for_minimum() {
            match self.connect().await {
                Ok(server) => {
                    lease.server = Some(server);
                    lease.release();
                }
                Err(e) => {
                    tracing::warn!(pool = %self.identity.label, cluster = %self.cluster().name, error = %e, "could not open a server for min_pool_size");
                    return;
                }
            }
        }
    }

    /// Capacity for one more server while the pool is below `min_size` and nobody waits.
    fn reserve_for_minimum(self: &Arc<Self>) -> Option<Lease> {
        let mut inner = self.lock();
        if inner.open() >= inner.sizes.min_size || !inner.queue.is_empty() {
            return None;
        }
        // Held for no tenant until the server goes idle.
        let tenant = inner.tenant(&Arc::from(""));
        inner.hold(&tenant);
        Some(Lease::new(self, tenant, None))
    }
}

/// A unit of a pool's capacity held for one tenant, usually with a server in it.
/// Dropping it closes the server and frees the capacity; [`Lease::release`]
/// returns a clean server for reuse.
pub struct Lease {
    pool: Arc<Pool>,
    tenant: TenantRef,
    server: Option<Box<Server>>,
    live: bool,
}

impl Lease {
    /// Only called with the pool's counts already updated for this hold.
    fn new(pool: &Arc<Pool>, tenant: TenantRef, server: Option<Box<Server>>) -> Lease {
        Lease {
            pool: Arc::clone(pool),
            tenant,
            server,
            live: true,
        }
    }

    pub fn server(&mut self) -> &mut Server {
        self.server
            .as_mut()
            .expect("a checked-out lease holds a server")
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Whether the lease holds a live server, usable from this worker
    /// ([`Server::adopt`]). A dead one is dropped (the lease keeps the
    /// capacity, for another server).
    fn settle(&mut self) -> bool {
        let Some(server) = self.server.take() else {
            return false;
        };
        if !server.looks_alive() {
            tracing::info!(server = server.id, pool = %self.pool.identity.label, "idle server died; replacing it");
            return false;
        }
        let moves = server.home != workers::current();
        self.server = server.adopt();
        if moves && self.server.is_some() {
            self.pool.metrics.server_moves.inc();
        }
        self.server.is_some()
    }

    /// Returns the server to the pool. Only for a server at a clean transaction
    /// boundary (`ReadyForQuery('I')` with nothing outstanding).
    pub fn release(self) {
        self.release_at(Instant::now());
    }

    /// [`Lease::release`] by a caller that has just read the clock: `now` is
    /// when the server goes idle.
    pub fn release_at(mut self, now: Instant) {
        self.live = false;
        let mut server = self.server.take();
        if let Some(s) = &mut server {
            s.idle_since = now;
        }
        self.pool.give_back(&self.tenant, server);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.live {
            if let Some(server) = self.server.take() {
                tracing::debug!(
                    server = server.id,
                    "closing a server that was not released clean"
                );
            }
            self.pool.give_back(&self.tenant, None);
        }
    }
}

/// A logged-in client of a pool and tenant: its checkouts, and its count in
/// the pool's gauges.
pub struct PoolMember {
    pool: Arc<Pool>,
    tenant: TenantRef,
}

impl PoolMember {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// A ready server, waiting until `deadline` for capacity.
    ///
    /// Cancel-safe: dropping the future at any point releases whatever it held.
    pub async fn checkout(&self, deadline: Instant) -> Result<Lease, CheckoutError> {
        match self.checkout_now(deadline) {
            Ok(lease) => Ok(lease),
            Err(pending) => pending.finish().await,
        }
    }

    /// An idle, live server at once, in one lock: the common checkout, kept
    /// synchronous so it costs no future. Otherwise what is left to do (wait
    /// for capacity, open a server) as a [`Pending`]. A queued checkout gives
    /// up at `deadline` ([`Pool::expire_waits`]).
    pub fn checkout_now(&self, deadline: Instant) -> Result<Lease, Pending> {
        self.pool.checkout_now(&self.tenant, deadline)
    }
}

impl Drop for PoolMember {
    fn drop(&mut self) {
        self.pool.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A server being opened, for the `connecting` gauge.
struct Connecting<'a>(&'a AtomicU32);

impl<'a> Connecting<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Connecting(count)
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A checkout that could not complete at once: queued for capacity, or
/// holding capacity without a usable server yet (one to open, or a dead idle
/// one to replace). Dropping it gives back whatever it holds.
pub enum Pending {
    Queued(Wait),
    NoServer(Lease),
}

impl Pending {
    /// Waits for capacity (until the checkout's deadline), then makes sure
    /// the lease holds a live server.
    pub async fn finish(self) -> Result<Lease, CheckoutError> {
        let mut lease = match self {
            Pending::Queued(wait) => wait.served().await?,
            Pending::NoServer(lease) => lease,
        };
        let pool = Arc::clone(&lease.pool);
        let here = workers::current();
        // An idle server (if one died, another: chosen as a checkout chooses)
        // can fill this lease, or we connect anew.
        while !lease.settle() {
            let idle = pool.lock().take_idle(&lease.tenant.id, here);
            if idle.is_none() {
                // Boxed: a server login is a big state, and this future is
                // built and moved for every checkout that waits.
                lease.server = Some(Box::pin(pool.connect()).await?);
                break;
            }
            lease.server = idle;
        }
        Ok(lease)
    }
}

/// A queued checkout. Dropping it unserved (timeout, client gone) removes the waiter.
pub struct Wait {
    pool: Arc<Pool>,
    tenant: TenantRef,
    worker: WorkerId,
    id: u64,
    rx: oneshot::Receiver<Lease>,
    /// Served: the pool took the waiter off its queue, to send it the lease
    /// or at its deadline.
    served: bool,
}

impl Wait {
    /// The lease, or the queue timeout: the pool drops a waiter whose
    /// deadline passed (and its channel's sender with it).
    async fn served(mut self) -> Result<Lease, CheckoutError> {
        let result = (&mut self.rx).await;
        // Either way the pool took the waiter off its queue: it sent the
        // lease, or dropped the waiter (and its sender) at its deadline.
        self.served = true;
        result.map_err(|_| CheckoutError::QueueTimeout)
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        // Served waiters are gone from the queue already: no lock, no search.
        if !self.served {
            self.pool
                .lock()
                .queue
                .remove(&self.tenant, self.worker, self.id);
        }
    }
}
