//! Wiring: bind the listener, check the clusters, accept clients, keep pools
//! topped up, stop on a shutdown signal.
//!
//! Tasks: one accept loop; one task per client session; one maintenance task
//! that visits every pool each second (idle timeouts, `min_pool_size`); one
//! that re-reads the TLS certificate on SIGHUP.

pub mod rls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::session::{self, Deps, Runtime};

/// A bound, checked proxy, ready to run.
pub struct Proxy {
    listener: TcpListener,
    deps: Arc<Deps>,
}

impl Proxy {
    /// Checks the clusters' roles (see [`rls`]) and binds the listen address.
    pub async fn bind(config: Config) -> anyhow::Result<Proxy> {
        let findings = rls::check(&config).await;
        for f in &findings.unreachable {
            tracing::warn!("could not check {f}; the pool will retry connecting");
        }
        for f in &findings.bypasses {
            tracing::warn!("ROW LEVEL SECURITY WILL NOT PROTECT TENANTS: {f}");
        }
        for f in &findings.broken {
            tracing::error!("tenant transactions will fail: {f}");
        }
        if !findings.broken.is_empty() {
            bail!(
                "tenant roles are misconfigured: {}",
                findings.broken.join("; ")
            );
        }
        if config.require_rls_enforced && !findings.bypasses.is_empty() {
            bail!(
                "require_rls_enforced is set and RLS would be bypassed: {}",
                findings.bypasses.join("; ")
            );
        }
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let deps = Arc::new(Deps::new(Runtime::new(Arc::new(config))));
        Ok(Proxy { listener, deps })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn deps(&self) -> &Arc<Deps> {
        &self.deps
    }

    /// Accepts clients until `shutdown` completes. Sessions already running are
    /// left to finish on the runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tracing::info!(listen = %self.local_addr(), "pgtenant accepting clients");
        let maintenance = tokio::spawn(maintain(Arc::clone(&self.deps)));
        let hangups = tokio::spawn(reload_on_hangup(Arc::clone(&self.deps)));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let limit = self.deps.runtime.load().config.limits.max_client_connections;
                        match self.deps.connections.open(limit) {
                            Some(slot) => {
                                tokio::spawn(session::serve(stream, Arc::clone(&self.deps), peer, slot));
                            }
                            None => {
                                tracing::warn!(%peer, limit, "refused a client: max_client_connections reached");
                                tokio::spawn(session::refuse_full(stream, limit));
                            }
                        }
                    }
                    // Out of file descriptors and the like: back off, keep serving.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        maintenance.abort();
        hangups.abort();
        tracing::info!("pgtenant stopped accepting clients");
        Ok(())
    }
}

async fn maintain(deps: Arc<Deps>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let runtime = deps.runtime.load_full();
        for (_, pool) in runtime.pools.iter() {
            pool.maintain().await;
        }
        deps.throttle
            .sweep(runtime.config.limits.auth_failure_window);
    }
}

/// SIGHUP re-reads the listener's TLS certificate and key. Connections keep the
/// certificate they started with; a file that does not load leaves the old one.
async fn reload_on_hangup(deps: Arc<Deps>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install a SIGHUP handler; reloads are off");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        let runtime = deps.runtime.load_full();
        let tls = &runtime.config.tls;
        if tls.mode == crate::tls::ClientTlsMode::Disable {
            continue;
        }
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: re-read the TLS certificate and key"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: kept the TLS certificate in use")
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
