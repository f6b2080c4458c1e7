//! One client, from accept to close:
//! [`handshake`] (TLS, startup packet) → [`login`] (authenticate, resolve tenant, greet) → [`relay`]
//! (transactions on pooled servers). A CancelRequest connection ends after
//! [`cancel`] has forwarded it. Only this module writes to clients.

pub mod cancel;
mod handshake;
mod io;
mod login;
mod relay;
mod settings;
mod throttle;
mod tracker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{Config, Limits};
use crate::error::ClientError;
use crate::pool::Pools;
use crate::protocol::startup::StartupMessage;
use crate::tenant::context::TenantContext;
use crate::tls::ClientTlsMode;
use cancel::CancelRegistry;
use handshake::{Handshake, HandshakeError};
use login::LoginError;

/// What a config turns into at run time: pools and pre-encoded tenant contexts.
/// A session keeps the snapshot it logged in with.
pub struct Runtime {
    pub config: Arc<Config>,
    pub pools: Pools,
    pub contexts: HashMap<String, Arc<TenantContext>>,
}

impl Runtime {
    pub fn new(config: Arc<Config>) -> Runtime {
        let contexts = config
            .tenants
            .values()
            .map(|t| {
                let tier = &config.tiers[&t.tier];
                (
                    t.id.clone(),
                    Arc::new(TenantContext::new(&config.tenant_setting, t, tier)),
                )
            })
            .collect();
        Runtime {
            pools: Pools::from_config(&config),
            contexts,
            config,
        }
    }
}

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
}

impl Deps {
    pub fn new(runtime: Runtime) -> Deps {
        Deps {
            runtime: ArcSwap::from_pointee(runtime),
            cancels: Arc::default(),
            clients: Arc::default(),
            connections: Arc::default(),
            throttle: Default::default(),
            mock_seed: rand::random(),
        }
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
    counts: Mutex<HashMap<String, u32>>,
}

impl ClientCounts {
    pub fn acquire(self: &Arc<Self>, tenant: &str, limit: u32) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(tenant.to_owned()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: Arc::clone(self),
            tenant: tenant.to_owned(),
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
    tenant: String,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = counts.get_mut(&self.tenant) {
            *c -= 1;
            if *c == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

/// Serves one client connection to its end. Errors are logged here, once.
pub async fn serve(tcp: TcpStream, deps: Arc<Deps>, peer: SocketAddr, _slot: ConnectionSlot) {
    let runtime = deps.runtime.load_full();
    let config = &runtime.config;
    let limits = config.limits.clone();
    // One deadline for encryption, startup and authentication together.
    let deadline = tokio::time::Instant::now() + limits.login_timeout;
    let shaken = tokio::time::timeout_at(
        deadline,
        handshake::handshake(tcp, &config.tls, limits.max_startup_packet_size),
    )
    .await;
    let (stream, startup, end_point) = match shaken {
        Err(_) => {
            tracing::debug!(%peer, "no startup packet within login_timeout");
            return;
        }
        Ok(Err(HandshakeError::Io(_))) => return,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "refused a connection before startup");
            return;
        }
        Ok(Ok(Handshake::Cancel { process_id, secret })) => {
            deps.cancels.cancel(process_id, &secret).await;
            return;
        }
        Ok(Ok(Handshake::Plain(mut stream, startup))) => {
            if config.tls.mode == ClientTlsMode::Require {
                tracing::info!(%peer, "refused a client without TLS");
                io::close_with_error(&mut stream, &ClientError::tls_required()).await;
                return;
            }
            drop(runtime);
            return session(stream, startup, None, deps, peer, deadline, limits).await;
        }
        Ok(Ok(Handshake::Tls(stream, startup, end_point))) => (stream, startup, end_point),
    };
    drop(runtime);
    session(
        *stream,
        startup,
        Some(end_point),
        deps,
        peer,
        deadline,
        limits,
    )
    .await;
}

/// Login, then the relay, on a plain or a TLS stream (one copy of each, so the
/// plain path pays nothing for TLS).
async fn session<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut stream: S,
    startup: StartupMessage,
    end_point: Option<Arc<[u8]>>,
    deps: Arc<Deps>,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    limits: Limits,
) {
    let mut buf = BytesMut::with_capacity(8192);
    let cancel = deps.cancels.register(startup.cancel_key_len());
    let key = (cancel.slot.process_id, cancel.slot.secret());
    let logged_in = tokio::time::timeout_at(
        deadline,
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
    let client = match logged_in {
        Ok(Ok(client)) => client,
        Ok(Err(LoginError::Refused(e))) => {
            io::close_with_error(&mut stream, &e).await;
            return;
        }
        Ok(Err(LoginError::Io(e))) => {
            tracing::debug!(%peer, error = %e, "client left during login");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "login not finished within login_timeout");
            return;
        }
    };
    tracing::debug!(%peer, tenant = %client.tenant.id, "client logged in");
    if let Err(e) = relay::Relay::new(stream, buf, client, cancel, &limits)
        .run()
        .await
    {
        tracing::info!(%peer, error = %e, "client session ended with an error");
    }
}
