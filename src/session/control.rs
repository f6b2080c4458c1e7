//! What operators do to running sessions: reloads, pause and resume, kill,
//! shutdown. Sessions read it at transaction boundaries (a few atomic loads)
//! and, while idle, wait on their own [`ClientEntry::wake`], which every change
//! here notifies, so a change reaches them at once. A per-session [`Wake`] keeps
//! the idle wait free of any lock. It also keeps the
//! registry of logged-in clients the admin console lists.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use crate::workers::AbortHandle;
use futures_util::task::AtomicWaker;

use crate::config::Tier;

/// Where a pause applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    Tier(String),
    Tenant(String),
}

#[derive(Debug, Default, Clone)]
pub struct Paused {
    pub all: bool,
    pub tiers: BTreeSet<String>,
    pub tenants: BTreeSet<String>,
}

impl Paused {
    /// Whether new transactions of `tenant` (of `tier`) wait.
    pub fn covers(&self, tenant: &str, tier: &str) -> bool {
        self.covers_tier(tier) || self.tenants.contains(tenant)
    }

    /// Whether the whole tier waits (everything, or the tier by name).
    pub fn covers_tier(&self, tier: &str) -> bool {
        self.all || self.tiers.contains(tier)
    }

    fn is_empty(&self) -> bool {
        !self.all && self.tiers.is_empty() && self.tenants.is_empty()
    }
}

pub struct Control {
    /// Bumped by each applied reload; a session refreshes its tenant when it
    /// sees a new one (32 bits: a session compares it with the one it saw, and
    /// keeps it in its idle state).
    generation: AtomicU32,
    draining: AtomicBool,
    any_paused: AtomicBool,
    paused: Mutex<Paused>,
    clients: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    next_client: AtomicU64,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            generation: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            any_paused: AtomicBool::new(false),
            paused: Mutex::default(),
            clients: Mutex::default(),
            next_client: AtomicU64::new(1),
        }
    }
}

impl Control {
    /// Wakes every logged-in client to look at what changed (a client busy in
    /// a transaction finds a stored permit at its next idle wait).
    fn changed(&self) {
        for c in self.lock_clients().values() {
            c.wake.notify();
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Called after a new runtime is stored.
    pub fn reloaded(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed();
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// SIGTERM: sessions close at their next transaction boundary.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        self.changed();
    }

    pub fn is_paused(&self, tenant: &str, tier: &str) -> bool {
        self.any_paused.load(Ordering::Acquire) && self.lock_paused().covers(tenant, tier)
    }

    pub fn paused(&self) -> Paused {
        self.lock_paused().clone()
    }

    pub fn pause(&self, target: &Target) {
        self.edit_paused(|p| match target {
            Target::All => p.all = true,
            Target::Tier(t) => _ = p.tiers.insert(t.clone()),
            Target::Tenant(t) => _ = p.tenants.insert(t.clone()),
        });
    }

    /// `RESUME` with no target lifts every pause.
    pub fn resume(&self, target: &Target) {
        self.edit_paused(|p| match target {
            Target::All => *p = Paused::default(),
            Target::Tier(t) => _ = p.tiers.remove(t),
            Target::Tenant(t) => _ = p.tenants.remove(t),
        });
    }

    fn edit_paused(&self, edit: impl FnOnce(&mut Paused)) {
        let mut paused = self.lock_paused();
        edit(&mut paused);
        self.any_paused.store(!paused.is_empty(), Ordering::Release);
        drop(paused);
        self.changed();
    }

    fn lock_paused(&self) -> std::sync::MutexGuard<'_, Paused> {
        self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ClientEntry>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists a logged-in client until the returned guard drops.
    pub fn register(self: &Arc<Self>, mut entry: ClientEntry) -> Registered {
        entry.id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(entry);
        self.lock_clients().insert(entry.id, Arc::clone(&entry));
        Registered {
            control: Arc::clone(self),
            entry,
        }
    }

    pub fn clients(&self) -> Vec<Arc<ClientEntry>> {
        let mut clients: Vec<_> = self.lock_clients().values().cloned().collect();
        clients.sort_by_key(|c| c.id);
        clients
    }

    /// Ends every session of `tenant`: idle ones are told 57P01 at once, those
    /// in a transaction are cut (their servers are closed, never reused).
    /// Returns how many.
    pub fn kill(&self, tenant: &str) -> usize {
        let victims: Vec<_> = self
            .clients()
            .into_iter()
            .filter(|c| &*c.tenant() == tenant)
            .collect();
        for c in &victims {
            c.killed.store(true, Ordering::SeqCst);
            if c.state() != ClientState::Idle
                && let Some(abort) = c.abort.get()
            {
                abort.abort();
            }
        }
        self.changed();
        victims.len()
    }

    /// Clients of `tenant` in a transaction (polled by `DRAIN`: counted under
    /// the lock, nothing cloned).
    pub fn busy(&self, tenant: &str) -> usize {
        self.lock_clients()
            .values()
            .filter(|c| &*c.tenant() == tenant && c.state() == ClientState::Active)
            .count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Idle = 0,
    Waiting = 1,
    Active = 2,
}

impl ClientState {
    pub fn name(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

/// One logged-in client as the admin console shows it.
pub struct ClientEntry {
    pub id: u64,
    /// User, database and application name in one allocation (an idle
    /// client's footprint is counted in bytes), split at the NULs.
    names: Box<str>,
    pub addr: SocketAddr,
    pub tls: bool,
    pub connected_at: SystemTime,
    /// The tenant and its tier (a reload may move the tenant to another tier).
    placement: Mutex<(Arc<str>, Arc<Tier>)>,
    state: AtomicU8,
    /// When its current or last request began, in microseconds after
    /// [`CLOCK_BASE`] (0: none yet). Kept from the relay's own `Instant`, so
    /// stamping it reads no clock.
    request_at: AtomicU64,
    /// The server it holds, 0 for none, and that server's backend pid.
    server: AtomicU64,
    server_pid: AtomicI32,
    killed: AtomicBool,
    /// Notified on every operator change; the session waits on it while idle.
    pub wake: Wake,
    /// Its task, so `KILL` can cut a session in the middle of a transaction.
    abort: Arc<OnceLock<AbortHandle>>,
}

/// Tells one session to look at what operators changed: a stored flag and the
/// session task's waker. A session polls it twice per transaction, so unlike
/// `tokio::sync::Notify` it takes no lock to wait or to stop waiting.
#[derive(Debug, Default)]
pub struct Wake {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Wake {
    /// Wakes the session if it waits, or makes its next wait end at once.
    pub fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once a notification came since the last one was taken.
    /// Cancel-safe: dropped unfinished, it takes nothing.
    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_notified(cx))
    }

    /// [`Wake::notified`] as a poll, for a wait polled by hand.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A notification between the first look and the registration
        // found no waker to wake.
        if self.take() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn take(&self) -> bool {
        self.pending.load(Ordering::Acquire) && self.pending.swap(false, Ordering::AcqRel)
    }
}

impl ClientEntry {
    fn name(&self, i: usize) -> &str {
        self.names.split('\0').nth(i).unwrap_or("")
    }

    pub fn user(&self) -> &str {
        self.name(0)
    }

    pub fn database(&self) -> &str {
        self.name(1)
    }

    pub fn application_name(&self) -> &str {
        self.name(2)
    }

    #[allow(clippy::too_many_arguments)] // one plain record, filled once at login
    pub fn new(
        user: &str,
        database: &str,
        tenant: Arc<str>,
        tier: Arc<Tier>,
        addr: SocketAddr,
        tls: bool,
        application_name: &str,
        abort: Arc<OnceLock<AbortHandle>>,
    ) -> ClientEntry {
        ClientEntry {
            id: 0,
            names: [user, database, application_name].join("\0").into(),
            addr,
            tls,
            connected_at: SystemTime::now(),
            placement: Mutex::new((tenant, tier)),
            state: AtomicU8::new(ClientState::Idle as u8),
            request_at: AtomicU64::new(0),
            server: AtomicU64::new(0),
            server_pid: AtomicI32::new(0),
            killed: AtomicBool::new(false),
            wake: Wake::default(),
            abort,
        }
    }

    fn lock_placement(&self) -> std::sync::MutexGuard<'_, (Arc<str>, Arc<Tier>)> {
        self.placement.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn tenant(&self) -> Arc<str> {
        Arc::clone(&self.lock_placement().0)
    }

    pub fn tier(&self) -> String {
        self.lock_placement().1.name.clone()
    }

    pub fn set_tier(&self, tier: &Arc<Tier>) {
        self.lock_placement().1 = Arc::clone(tier);
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::SeqCst) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::SeqCst);
    }

    /// A new request, waiting for a server since `started`.
    pub fn wait_from(&self, started: Instant) {
        let (base, _) = *CLOCK_BASE;
        let us = started.saturating_duration_since(base).as_micros() as u64;
        self.request_at.store(us.max(1), Ordering::Relaxed);
        self.set_state(ClientState::Waiting);
    }

    pub fn request_at(&self) -> Option<SystemTime> {
        let (_, wall) = *CLOCK_BASE;
        match self.request_at.load(Ordering::Relaxed) {
            0 => None,
            us => Some(wall + Duration::from_micros(us)),
        }
    }

    /// The server it now holds (`id` 0: none).
    pub fn set_server(&self, id: u64, pid: i32) {
        self.server_pid.store(pid, Ordering::Relaxed);
        self.server.store(id, Ordering::Relaxed);
    }

    /// The id and backend pid of the server it holds.
    pub fn server(&self) -> Option<(u64, i32)> {
        match self.server.load(Ordering::Relaxed) {
            0 => None,
            id => Some((id, self.server_pid.load(Ordering::Relaxed))),
        }
    }

    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// A registered client; dropping it removes the entry.
pub struct Registered {
    control: Arc<Control>,
    pub entry: Arc<ClientEntry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.control.lock_clients().remove(&self.entry.id);
    }
}

/// One moment read on both clocks, to turn an `Instant` into wall time.
static CLOCK_BASE: LazyLock<(Instant, SystemTime)> =
    LazyLock::new(|| (Instant::now(), SystemTime::now()));

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_is_kept_until_taken_and_reaches_a_waiting_task() {
        let wake = Arc::new(Wake::default());
        // Stored before anyone waits: the next wait ends at once, once.
        wake.notify();
        wake.notified().await;
        let again = tokio::time::timeout(Duration::from_millis(20), wake.notified()).await;
        assert!(again.is_err(), "one notification ends one wait");
        // A wait given up takes nothing; a waiting task is woken.
        let waiter = tokio::spawn({
            let wake = Arc::clone(&wake);
            async move { wake.notified().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        wake.notify();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting task is woken")
            .unwrap();
    }

    #[test]
    fn pauses_cover_all_a_tier_or_a_tenant_and_resume_lifts_them() {
        let c = Control::default();
        assert!(!c.is_paused("acme", "free"));
        c.pause(&Target::Tier("free".into()));
        assert!(c.is_paused("acme", "free"));
        assert!(!c.is_paused("acme", "growth"));
        c.pause(&Target::Tenant("globex".into()));
        assert!(c.is_paused("globex", "growth"));
        c.resume(&Target::Tier("free".into()));
        assert!(!c.is_paused("acme", "free"));
        c.pause(&Target::All);
        assert!(c.is_paused("x", "y"));
        c.resume(&Target::All);
        assert!(!c.is_paused("globex", "growth"));
    }

    #[test]
    fn a_registered_client_is_listed_until_dropped() {
        let c = Arc::new(Control::default());
        let entry = ClientEntry::new(
            "u",
            "db",
            Arc::from("acme"),
            Arc::new(Tier::named("free")),
            "127.0.0.1:1".parse().unwrap(),
            false,
            "",
            Arc::default(),
        );
        let registered = c.register(entry);
        assert_eq!(c.clients().len(), 1);
        assert_eq!(c.kill("acme"), 1);
        assert!(registered.entry.killed());
        drop(registered);
        assert!(c.clients().is_empty());
    }
}
