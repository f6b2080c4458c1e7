//! One client, from accept to close:
//! [`handshake`] (TLS, startup packet) → [`login`] (authenticate, resolve tenant, greet) → [`relay`]
//! (transactions on pooled servers). A CancelRequest connection ends after
//! [`cancel`] has forwarded it. Only this module writes to clients.

mod admin;
pub mod cancel;
pub mod control;
mod handshake;
pub(crate) mod io;
mod login;
mod relay;
pub(crate) mod settings;
mod spares;
mod throttle;
mod tracker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::{Config, Limits};
use crate::error::ClientError;
use crate::metrics::Metrics;
use crate::protocol::startup::StartupMessage;
pub use crate::runtime::Runtime;
use crate::tls::ClientTlsMode;
use crate::workers::{AbortHandle, Socket};
use cancel::CancelRegistry;
use control::Control;
use handshake::{Handshake, HandshakeError};
use io::ClientStream;
use login::{Login, LoginError};

/// Shared state every session gets.
pub struct Deps {
    pub runtime: ArcSwap<Runtime>,
    pub cancels: Arc<CancelRegistry>,
    pub clients: Arc<ClientCounts>,
    /// Every open client connection, for `limits.max_client_connections`.
    pub connections: Arc<Connections>,
    /// Failed logins per source address.
    pub throttle: throttle::Throttle,
    /// Seeds the stable fake salts of unknown users.
    pub mock_seed: [u8; 32],
    pub control: Arc<Control>,
    pub metrics: Arc<Metrics>,
    /// The file the config came from, for reloads; `None` when built in memory.
    pub config_path: Option<PathBuf>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Deps {
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Deps {
        let metrics = Arc::new(Metrics::new(config.metrics.max_tenant_series));
        let runtime = Runtime::new(Arc::new(config), None, &metrics);
        Deps {
            runtime: ArcSwap::from_pointee(runtime),
            cancels: Arc::default(),
            clients: Arc::default(),
            connections: Arc::default(),
            throttle: Default::default(),
            mock_seed: rand::random(),
            control: Arc::default(),
            metrics,
            config_path,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Re-reads the config file and, if it is valid as a whole, swaps it in.
    /// On any error the running config stays and the errors are returned (and
    /// logged, and counted). `why` names the trigger for the audit log.
    pub async fn reload(&self, why: &str) -> Result<(), String> {
        let _one = self.reloading.lock().await;
        let result = self.try_reload().await;
        match &result {
            Ok(()) => {
                self.metrics.reloads.inc();
                self.metrics.loaded_now();
                tracing::info!(target: "pgtenant::audit", event = "reload", outcome = "ok", trigger = why, "configuration reloaded");
            }
            Err(e) => {
                self.metrics.reload_failures.inc();
                tracing::error!(target: "pgtenant::audit", event = "reload", outcome = "refused", trigger = why, "configuration not reloaded, the running one stays:\n{e}");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<(), String> {
        let path = self
            .config_path
            .as_ref()
            .ok_or("this proxy was started without a config file")?;
        let mut config = crate::config::load(path).map_err(|e| {
            e.0.iter()
                .map(|e| format!("{}: {e}", path.display()))
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        crate::runtime::check_roles(&config).await?;
        let old = self.runtime.load_full();
        // Bound sockets and the log format stay until a restart.
        for (key, was, now) in [
            ("listen", &old.config.listen, &config.listen),
            (
                "metrics.listen",
                &format!("{:?}", old.config.metrics.listen),
                &format!("{:?}", config.metrics.listen),
            ),
            (
                "log_format",
                &format!("{:?}", old.config.log_format),
                &format!("{:?}", config.log_format),
            ),
            (
                "workers",
                &old.config.workers.to_string(),
                &config.workers.to_string(),
            ),
        ] {
            if was != now {
                tracing::warn!(key, "changed in the file; takes effect at the next restart");
            }
        }
        config.listen.clone_from(&old.config.listen);
        config.metrics.listen.clone_from(&old.config.metrics.listen);
        config.log_format = old.config.log_format;
        config.workers = old.config.workers;
        self.metrics
            .tenants
            .set_max(config.metrics.max_tenant_series);
        let runtime = Runtime::new(Arc::new(config), Some(&old), &self.metrics);
        self.runtime.store(Arc::new(runtime));
        self.control.reloaded();
        Ok(())
    }
}

/// Open client connections, logins in progress included.
#[derive(Default)]
pub struct Connections(AtomicU32);

impl Connections {
    /// A place for one more connection, unless `limit` are open.
    pub fn open(self: &Arc<Self>, limit: u32) -> Option<ConnectionSlot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(ConnectionSlot(Arc::clone(self)))
    }

    pub fn count(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// One open connection; dropping it frees the place.
pub struct ConnectionSlot(Arc<Connections>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tells a connection over `limits.max_client_connections` why it is closed.
pub async fn refuse_full(mut tcp: TcpStream, limit: u32) {
    io::close_with_error(&mut tcp, &ClientError::proxy_full(limit)).await;
}

/// Open client connections per tenant, for `max_client_connections`.
#[derive(Default)]
pub struct ClientCounts {
    counts: Mutex<HashMap<Arc<str>, u32>>,
}

impl ClientCounts {
    pub fn acquire(self: &Arc<Self>, tenant: &Arc<str>, limit: u32) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(Arc::clone(tenant)).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: Arc::clone(self),
            tenant: Arc::clone(tenant),
        })
    }

    pub fn get(&self, tenant: &str) -> u32 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}

/// One open client of a tenant; dropping it frees the place.
pub struct ClientSlot {
    counts: Arc<ClientCounts>,
    tenant: Arc<str>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = counts.get_mut(&*self.tenant) {
            *c -= 1;
            if *c == 0 {
                counts.remove(&*self.tenant);
            }
        }
    }
}

/// Serves one client connection to its end. Errors are logged here, once.
/// `task` is this session's own task, for `KILL`. Spawned as it is on the
/// worker that will serve it: the socket joins that worker's reactor there.
///
/// Handshake and login run boxed: their state is freed once the client is in,
/// so a logged-in session's task is no bigger than its relay's idle state
/// (and holds nothing else: the arguments go into the boxed part). Spawn it
/// unwrapped: tokio allocates a task in steps of 128 bytes, and these 240
/// bytes fit 384; a wrapper future keeping the arguments too would need 512.
pub fn serve(
    tcp: std::net::TcpStream,
    deps: Arc<Deps>,
    peer: SocketAddr,
    slot: ConnectionSlot,
    task: Arc<OnceLock<AbortHandle>>,
) -> impl Future<Output = ()> + Send {
    let start = Box::pin(start(tcp, deps, peer, task));
    async move {
        let _slot = slot;
        match start.await {
            Some(Started::Plain(relay)) => relay.run().await,
            // Boxed, or the session future would hold room for both relays.
            Some(Started::Tls(relay)) => Box::pin(relay.run()).await,
            None => {}
        }
    }
}

/// A logged-in client, ready for its transactions.
/// (Boxed: moved around as a pointer, it is not copied into each future
/// that passes it on.)
enum Started {
    Plain(Box<relay::Relay<Socket>>),
    Tls(Box<relay::Relay<Box<TlsStream<Socket>>>>),
}

/// Handshake and login; `None` once the connection is done with (refused,
/// gone, a cancel request, an admin console that ended).
async fn start(
    tcp: std::net::TcpStream,
    deps: Arc<Deps>,
    peer: SocketAddr,
    task: Arc<OnceLock<AbortHandle>>,
) -> Option<Started> {
    let tcp = match Socket::from_std(tcp) {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "could not register a client");
            return None;
        }
    };
    let runtime = deps.runtime.load_full();
    let config = &runtime.config;
    let limits = config.limits.clone();
    // One deadline for encryption, startup and authentication together.
    let deadline = Instant::now() + limits.login_timeout;
    let place = Place {
        peer,
        task,
        deadline,
    };
    let shaken = tokio::time::timeout_at(
        deadline.into(),
        handshake::handshake(tcp, &config.tls, limits.max_startup_packet_size),
    )
    .await;
    let (stream, startup, end_point) = match shaken {
        Err(_) => {
            tracing::debug!(%peer, "no startup packet within login_timeout");
            return None;
        }
        Ok(Err(HandshakeError::Io(_))) => return None,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "refused a connection before startup");
            return None;
        }
        Ok(Ok(Handshake::Cancel { process_id, secret })) => {
            deps.cancels.cancel(process_id, &secret).await;
            return None;
        }
        Ok(Ok(Handshake::Plain(mut stream, startup))) => {
            if config.tls.mode == ClientTlsMode::Require {
                tracing::info!(%peer, "refused a client without TLS");
                io::close_with_error(&mut stream, &ClientError::tls_required()).await;
                return None;
            }
            drop(runtime);
            return session(stream, startup, None, deps, place, limits)
                .await
                .map(Started::Plain);
        }
        Ok(Ok(Handshake::Tls(stream, startup, end_point))) => (stream, startup, end_point),
    };
    drop(runtime);
    session(stream, startup, Some(end_point), deps, place, limits)
        .await
        .map(Started::Tls)
}

/// Where a session comes from and runs.
struct Place {
    peer: SocketAddr,
    task: Arc<OnceLock<AbortHandle>>,
    /// The login deadline.
    deadline: Instant,
}

/// Login on a plain or a TLS stream (one copy of each, so the plain path pays
/// nothing for TLS): the relay to run, or `None` when the session ended here
/// (refused, or an admin console that has been served).
async fn session<S: ClientStream>(
    mut stream: S,
    startup: StartupMessage,
    end_point: Option<Arc<[u8]>>,
    deps: Arc<Deps>,
    place: Place,
    limits: Limits,
) -> Option<Box<relay::Relay<S>>> {
    let peer = place.peer;
    let mut buf = BytesMut::new();
    spares::take(&mut buf);
    let cancel = deps.cancels.register(startup.cancel_key_len());
    let key = (cancel.slot.process_id, cancel.slot.secret());
    let tls = end_point.is_some();
    let logged_in = tokio::time::timeout_at(
        place.deadline.into(),
        login::login(
            &mut stream,
            &mut buf,
            &startup,
            &deps,
            key,
            end_point.as_deref(),
            peer.ip(),
        ),
    )
    .await;
    let (client, settings) = match logged_in {
        Ok(Ok(Login::Tenant(client, settings))) => (client, settings),
        Ok(Ok(Login::Admin(user))) => {
            admin::Console::new(stream, buf, user, deps, peer)
                .run()
                .await;
            return None;
        }
        Ok(Err(LoginError::Refused(e))) => {
            deps.metrics.auth_failures.inc();
            io::close_with_error(&mut stream, &e).await;
            return None;
        }
        Ok(Err(LoginError::Io(e))) => {
            tracing::debug!(%peer, error = %e, "client left during login");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "login not finished within login_timeout");
            return None;
        }
    };
    deps.metrics.logins.inc();
    let entry = control::ClientEntry::new(
        startup.user(),
        startup.database(),
        Arc::clone(&client.tenant_key),
        Arc::clone(&client.tier),
        peer,
        tls,
        startup.get("application_name").unwrap_or(""),
        place.task,
    );
    let registered = deps.control.register(entry);
    tracing::info!(target: "pgtenant::audit", event = "login", outcome = "ok", %peer, user = startup.user(), tenant = %client.tenant.id, tls);
    Some(Box::new(relay::Relay::new(
        stream, buf, client, settings, cancel, &limits, &deps, registered,
    )))
}
