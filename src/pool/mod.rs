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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::config::Cluster;
use crate::prepared::{Invalidations, ServerStatements};
use crate::server::{self, Server, ServerError};
use queue::{FairQueue, Waiter};
pub use registry::{PoolKey, Pools};

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("queue timeout")]
    QueueTimeout,
    #[error("connect failed: {0}")]
    Connect(#[from] ServerError),
}

/// Fixed settings of one pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Shown to clients and in logs: the tier name, or `tenant <id>` for a dedicated pool.
    pub label: String,
    pub max_size: u32,
    pub min_size: u32,
    pub max_tenant_share: u32,
}

pub struct Pool {
    pub settings: PoolSettings,
    pub cluster: Arc<Cluster>,
    inner: Mutex<Inner>,
    /// Statements whose result type changed, shared by this pool's servers.
    invalidations: Arc<Invalidations>,
}

#[derive(Default)]
struct Inner {
    /// Idle servers, most recently used last.
    idle: Vec<Server>,
    /// Servers held (or being opened) per tenant, for `max_tenant_share`. Every
    /// open server is either idle or held, so [`Inner::open`] is derived from
    /// these two and never goes out of step with them.
    held: HashMap<Arc<str>, u32>,
    queue: FairQueue<oneshot::Sender<Lease>>,
    next_waiter: u64,
    /// `ParameterStatus` set of the most recent server connection.
    params: Option<Arc<Vec<(String, String)>>>,
}

impl Inner {
    /// Servers open or being opened.
    fn open(&self) -> u32 {
        self.idle.len() as u32 + self.held.values().sum::<u32>()
    }

    /// Ends one hold of `tenant`; a reusable server goes idle, `None` means the
    /// capacity it stood for is free again.
    fn unhold(&mut self, tenant: &str, server: Option<Server>) {
        if let Some(held) = self.held.get_mut(tenant) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(tenant);
            }
        }
        if let Some(mut s) = server {
            s.idle_since = Instant::now();
            self.idle.push(s);
        }
    }
}

/// Gauges of one pool, read on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub idle: u32,
    pub open: u32,
    pub waiting: u32,
}

impl Pool {
    pub fn new(settings: PoolSettings, cluster: Arc<Cluster>) -> Arc<Pool> {
        Arc::new(Pool {
            settings,
            cluster,
            inner: Mutex::new(Inner::default()),
            invalidations: Arc::default(),
        })
    }

    /// A new server for this pool.
    async fn connect(&self) -> Result<Server, ServerError> {
        let mut server = server::connect(&self.cluster).await?;
        server.statements = ServerStatements::new(Arc::clone(&self.invalidations));
        self.lock().params = Some(Arc::clone(&server.params));
        Ok(server)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves counts that are still consistent
        // enough to keep serving; poisoning would take the whole pool down.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        PoolStats {
            idle: inner.idle.len() as u32,
            open: inner.open(),
            waiting: inner.queue.len() as u32,
        }
    }

    /// The server parameters clients are shown at login, if a server has been seen.
    pub fn server_params(&self) -> Option<Arc<Vec<(String, String)>>> {
        self.lock().params.clone()
    }

    /// A ready server for `tenant`, waiting until `deadline` for capacity.
    ///
    /// Cancel-safe: dropping the future at any point releases whatever it held.
    pub async fn checkout(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        deadline: Instant,
    ) -> Result<Lease, CheckoutError> {
        let mut lease = match self.try_lease(tenant) {
            Ok(lease) => lease,
            Err(wait) => wait.until(deadline).await?,
        };
        while let Some(server) = lease.server.take() {
            if server.looks_alive() {
                lease.server = Some(server);
                return Ok(lease);
            }
            tracing::info!(server = server.id, pool = %self.settings.label, "idle server died; replacing it");
            // Another idle server can take the dead one's place in this lease,
            // or we connect anew.
            lease.server = self.lock().idle.pop();
        }
        lease.server = Some(self.connect().await?);
        Ok(lease)
    }

    /// Grants capacity now, or queues the caller.
    fn try_lease(self: &Arc<Self>, tenant: &Arc<str>) -> Result<Lease, Wait> {
        let mut inner = self.lock();
        if let Some(server) = self.grant(&mut inner, tenant) {
            return Ok(Lease::new(self, Arc::clone(tenant), server));
        }
        let id = inner.next_waiter;
        inner.next_waiter += 1;
        let (tx, rx) = oneshot::channel();
        inner.queue.push(tenant, Waiter { id, tx });
        Err(Wait {
            pool: Arc::clone(self),
            tenant: Arc::clone(tenant),
            id,
            rx,
        })
    }

    /// Takes capacity for `tenant` if the pool and the tenant's share allow:
    /// `Some(Some(server))` an idle server, `Some(None)` a slot to connect in.
    fn grant(&self, inner: &mut Inner, tenant: &Arc<str>) -> Option<Option<Server>> {
        if inner.held.get(tenant).copied().unwrap_or(0) >= self.settings.max_tenant_share {
            return None;
        }
        let server = inner.idle.pop();
        if server.is_none() && inner.open() >= self.settings.max_size {
            return None;
        }
        *inner.held.entry(Arc::clone(tenant)).or_default() += 1;
        Some(server)
    }

    /// Returns a lease's capacity: a reusable server goes idle, `None` closes one.
    /// Then serves waiters with whatever became available.
    fn give_back(self: &Arc<Self>, tenant: &str, server: Option<Server>) {
        let mut inner = self.lock();
        inner.unhold(tenant, server);
        self.dispatch(&mut inner);
    }

    fn dispatch(self: &Arc<Self>, inner: &mut Inner) {
        while !inner.queue.is_empty()
            && (!inner.idle.is_empty() || inner.open() < self.settings.max_size)
        {
            let share = self.settings.max_tenant_share;
            let held = &inner.held;
            let Some((tenant, waiter)) = inner
                .queue
                .pop(|t| held.get(t).copied().unwrap_or(0) < share)
            else {
                return;
            };
            let server = self
                .grant(inner, &tenant)
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
        let timeout = self.cluster.server_idle_timeout;
        {
            let mut inner = self.lock();
            inner.idle.retain(Server::looks_alive);
            // Oldest idle servers are at the front.
            while inner.open() > self.settings.min_size
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
                    tracing::warn!(pool = %self.settings.label, cluster = %self.cluster.name, error = %e, "could not open a server for min_pool_size");
                    return;
                }
            }
        }
    }

    /// Capacity for one more server while the pool is below `min_size` and nobody waits.
    fn reserve_for_minimum(self: &Arc<Self>) -> Option<Lease> {
        let mut inner = self.lock();
        if inner.open() >= self.settings.min_size || !inner.queue.is_empty() {
            return None;
        }
        let tenant: Arc<str> = Arc::from("");
        *inner.held.entry(Arc::clone(&tenant)).or_default() += 1;
        Some(Lease::new(self, tenant, None))
    }
}

/// A unit of a pool's capacity held for one tenant, usually with a server in it.
/// Dropping it closes the server and frees the capacity; [`Lease::release`]
/// returns a clean server for reuse.
pub struct Lease {
    pool: Arc<Pool>,
    tenant: Arc<str>,
    server: Option<Server>,
    live: bool,
}

impl Lease {
    /// Only called with the pool's counts already updated for this hold.
    fn new(pool: &Arc<Pool>, tenant: Arc<str>, server: Option<Server>) -> Lease {
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

    /// Returns the server to the pool. Only for a server at a clean transaction
    /// boundary (`ReadyForQuery('I')` with nothing outstanding).
    pub fn release(mut self) {
        self.live = false;
        let server = self.server.take();
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

/// A queued checkout. Dropping it (timeout, client gone) removes the waiter.
struct Wait {
    pool: Arc<Pool>,
    tenant: Arc<str>,
    id: u64,
    rx: oneshot::Receiver<Lease>,
}

impl Wait {
    async fn until(mut self, deadline: Instant) -> Result<Lease, CheckoutError> {
        match tokio::time::timeout_at(deadline.into(), &mut self.rx).await {
            Ok(Ok(lease)) => Ok(lease),
            _ => Err(CheckoutError::QueueTimeout),
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        self.pool.lock().queue.remove(&self.tenant, self.id);
    }
}
