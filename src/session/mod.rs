//! One client, from accept to close:
//! [`handshake`] → [`login`] (authenticate, resolve tenant, greet) → [`relay`]
//! (transactions on pooled servers). A CancelRequest connection ends after
//! [`cancel`] has forwarded it. Only this module writes to clients.

pub mod cancel;
mod handshake;
mod io;
mod login;
mod relay;
mod settings;
mod tracker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Config;
use crate::error::ClientError;
use crate::pool::Pools;
use crate::tenant::context::TenantContext;
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
    /// Seeds the stable fake salts of unknown users.
    pub mock_seed: [u8; 32],
}

impl Deps {
    pub fn new(runtime: Runtime) -> Deps {
        Deps {
            runtime: ArcSwap::from_pointee(runtime),
            cancels: Arc::default(),
            clients: Arc::default(),
            mock_seed: rand::random(),
        }
    }
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
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut stream: S,
    deps: Arc<Deps>,
    peer: String,
) {
    let limits = deps.runtime.load().config.limits.clone();
    let mut buf = BytesMut::with_capacity(8192);
    let started = tokio::time::timeout(limits.login_timeout, async {
        let startup = match handshake::handshake(&mut stream, limits.max_startup_packet_size).await
        {
            Ok(Handshake::Startup(startup)) => startup,
            Ok(Handshake::Cancel { process_id, secret }) => {
                deps.cancels.cancel(process_id, &secret).await;
                return None;
            }
            Err(HandshakeError::Io(_)) => return None,
            Err(e) => {
                tracing::info!(%peer, error = %e, "bad startup packet");
                let _ = io::send_error(&mut stream, &ClientError::protocol_violation(&e)).await;
                return None;
            }
        };
        let cancel = deps.cancels.register(startup.cancel_key_len());
        let key = (cancel.slot.process_id, cancel.slot.secret());
        match login::login(&mut stream, &mut buf, &startup, &deps, key).await {
            Ok(client) => Some((client, cancel)),
            Err(LoginError::Refused(e)) => {
                let _ = io::send_error(&mut stream, &e).await;
                None
            }
            Err(LoginError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "client left during login");
                None
            }
        }
    })
    .await;
    let Ok(Some((client, cancel))) = started else {
        return;
    };
    tracing::debug!(%peer, tenant = %client.tenant.id, "client logged in");
    if let Err(e) = relay::Relay::new(stream, buf, client, cancel, &limits)
        .run()
        .await
    {
        tracing::info!(%peer, error = %e, "client session ended with an error");
    }
}
