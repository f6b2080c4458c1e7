//! Wiring: bind the listeners, check the clusters, accept clients, keep pools
//! topped up, reload, and stop.
//!
//! Threads: this one (the control thread) accepts clients and runs the tasks
//! below; client sessions run on the worker threads ([`crate::workers`]),
//! handed out in turn.
//!
//! Tasks: one accept loop; one task per client session; one maintenance task
//! that visits every pool each second (idle timeouts, `min_pool_size`) and,
//! with `watch_config`, notices a changed config file; one that reloads on
//! SIGHUP; the HTTP listener for `/metrics` and health ([`http`]) with its
//! cluster probe ([`health`]).

mod health;
mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use signal_hook::SigId;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::pool;
use crate::session::{self, Deps};
use crate::workers::Workers;
pub use health::Health;

/// How the proxy is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: stop accepting, let transactions finish, close clients at a
    /// transaction boundary with 57P01, exit within `shutdown_timeout`.
    Drain,
    /// SIGINT: exit now.
    Fast,
}

/// A bound, checked proxy, ready to run.
pub struct Proxy {
    listener: TcpListener,
    workers: Workers,
    http: Option<TcpListener>,
    deps: Arc<Deps>,
    health: Arc<Health>,
}

impl Proxy {
    /// Checks the clusters' roles (see [`crate::runtime::rls`]) and binds the
    /// listen addresses. `path` is where reloads read the config from.
    pub async fn bind(config: Config, path: Option<PathBuf>) -> anyhow::Result<Proxy> {
        crate::runtime::check_roles(&config)
            .await
            .map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let http = match &config.metrics.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?,
            ),
            None => None,
        };
        let workers = Workers::start(config.workers, &tokio::runtime::Handle::current())
            .context("cannot start worker threads")?;
        let deps = Arc::new(Deps::new(config, path));
        Ok(Proxy {
            listener,
            workers,
            http,
            health: Arc::default(),
            deps,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn deps(&self) -> &Arc<Deps> {
        &self.deps
    }

    /// Accepts clients until `stop` completes, then stops as it says.
    pub async fn run(self, stop: impl Future<Output = Stop>) -> anyhow::Result<()> {
        let mut tasks = vec![
            tokio::spawn(maintain(Arc::clone(&self.deps))),
            tokio::spawn(expire_waits()),
            tokio::spawn(reload_on_hangup(Arc::clone(&self.deps))),
            tokio::spawn(health::probe(
                Arc::clone(&self.deps),
                Arc::clone(&self.health),
            )),
        ];
        if let Some(http) = self.http {
            tracing::info!(listen = %http.local_addr()?, "serving /metrics, /healthz and /readyz");
            let (deps, health) = (Arc::clone(&self.deps), Arc::clone(&self.health));
            tasks.push(tokio::spawn(http::serve(http, deps, health)));
        }
        tracing::info!(listen = %self.listener.local_addr()?, "pgtenant accepting clients");
        tokio::pin!(stop);
        let how = loop {
            tokio::select! {
                how = &mut stop => break how,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => accept(&self.deps, &self.workers, stream, peer),
                    // Out of file descriptors and the like: back off, keep serving.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        };
        drop(self.listener);
        if how == Stop::Drain {
            drain(&self.deps).await;
        } else {
            tracing::info!("pgtenant exiting now");
        }
        for task in tasks {
            task.abort();
        }
        Ok(())
    }
}

/// Hands a new client to a worker. Its socket moves from this thread's
/// reactor to the worker's.
fn accept(deps: &Arc<Deps>, workers: &Workers, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let limit = deps.runtime.load().config.limits.max_client_connections;
    match deps.connections.open(limit) {
        Some(slot) => {
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "could not hand a client to a worker");
                    return;
                }
            };
            let task = Arc::default();
            let session = session::serve(stream, Arc::clone(deps), peer, slot, Arc::clone(&task));
            let _ = task.set(workers.spawn(session));
        }
        None => {
            tracing::warn!(%peer, limit, "refused a client: max_client_connections reached");
            tokio::spawn(session::refuse_full(stream, limit));
        }
    }
}

/// SIGTERM: no new clients (the listener is closed), `/readyz` fails, idle
/// clients are told 57P01 at once and busy ones at the end of their
/// transaction; after `shutdown_timeout` whatever is left is cut.
async fn drain(deps: &Deps) {
    let timeout = deps.runtime.load().config.shutdown_timeout;
    tracing::info!(
        ?timeout,
        clients = deps.connections.count(),
        "draining: waiting for transactions to finish"
    );
    deps.control.begin_shutdown();
    let until = Instant::now() + timeout;
    while deps.connections.count() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match deps.connections.count() {
        0 => tracing::info!("drained; exiting"),
        n => tracing::warn!(
            clients = n,
            "shutdown_timeout reached; closing the remaining clients"
        ),
    }
}

/// Queue timeouts of every pool, from one timer (see [`pool::expire_waits`]).
async fn expire_waits() {
    let mut tick = tokio::time::interval(pool::EXPIRY_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        pool::expire_waits();
    }
}

async fn maintain(deps: Arc<Deps>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut file = deps.config_path.as_deref().and_then(file_stamp);
    loop {
        tick.tick().await;
        let runtime = deps.runtime.load_full();
        for (_, pool) in runtime.pools.iter() {
            pool.maintain().await;
        }
        deps.throttle
            .sweep(runtime.config.limits.auth_failure_window);
        if let Some(path) = &deps.config_path {
            let now = file_stamp(path);
            if now != file && now.is_some() {
                file = now;
                if runtime.config.watch_config {
                    let _ = deps.reload("config file changed").await;
                }
            }
        }
    }
}

/// What tells a changed config file: modification time, size and inode. The
/// path is followed through symlinks, so a Kubernetes ConfigMap swap counts.
fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// SIGHUP reloads the config file, certificates included (see [`Deps::reload`]).
async fn reload_on_hangup(deps: Arc<Deps>) {
    let mut hangup = match Deliveries::of(SIGHUP) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install a SIGHUP handler; reloads are off");
            return;
        }
    };
    while hangup.recv().await {
        if deps.config_path.is_some() {
            let _ = deps.reload("SIGHUP").await;
        } else {
            tracing::warn!("SIGHUP ignored: this proxy was started without a config file");
        }
    }
}

/// Completes on SIGTERM ([`Stop::Drain`]) or SIGINT ([`Stop::Fast`]).
pub async fn shutdown_signal() -> Stop {
    let mut term = Deliveries::of(SIGTERM).expect("installing a SIGTERM handler");
    let mut interrupt = Deliveries::of(SIGINT).expect("installing a SIGINT handler");
    tokio::select! {
        _ = interrupt.recv() => {
            tracing::info!("SIGINT: exiting without waiting");
            Stop::Fast
        }
        _ = term.recv() => {
            tracing::info!("SIGTERM: draining");
            Stop::Drain
        }
    }
}

/// Deliveries of one signal, read on the runtime that asks for them: the
/// handler (signal-hook's) writes a byte to a socket pair. Not tokio's signal
/// driver, which every runtime with I/O then checks on each park, the
/// workers' too (about 40–55 instructions a transaction at 4 clients).
/// Dropping it takes the handler's action (and its end of the pair) away, so
/// a proxy run in-process again and again leaves none behind.
struct Deliveries {
    read: tokio::net::UnixStream,
    action: SigId,
}

impl Deliveries {
    fn of(signal: i32) -> std::io::Result<Deliveries> {
        let (read, write) = std::os::unix::net::UnixStream::pair()?;
        read.set_nonblocking(true)?;
        // The reading end first: registered, the action must be owned.
        let read = tokio::net::UnixStream::from_std(read)?;
        let action = signal_hook::low_level::pipe::register(signal, write)?;
        Ok(Deliveries { read, action })
    }

    /// The next delivery (deliveries that came meanwhile count as one);
    /// `false` if the handler's end is gone.
    async fn recv(&mut self) -> bool {
        let mut bytes = [0u8; 64];
        matches!(self.read.read(&mut bytes).await, Ok(n) if n > 0)
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.action);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signal_hook::consts::{SIGUSR1, SIGUSR2};
    use signal_hook::low_level::{raise, unregister};

    /// Nothing else in the test process handles SIGUSR2.
    #[tokio::test]
    async fn a_signal_is_read_once_however_often_it_came_meanwhile() {
        let mut usr2 = Deliveries::of(SIGUSR2).unwrap();
        let quiet = Duration::from_millis(100);
        // The handler's registration probes the socket with an empty send:
        // that is no delivery.
        assert!(tokio::time::timeout(quiet, usr2.recv()).await.is_err());
        raise(SIGUSR2).unwrap();
        raise(SIGUSR2).unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), usr2.recv()).await;
        assert_eq!(read, Ok(true));
        assert!(tokio::time::timeout(quiet, usr2.recv()).await.is_err());
        raise(SIGUSR2).unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), usr2.recv()).await;
        assert_eq!(read, Ok(true));
    }

    /// SIGUSR1 is this test's alone, and it raises nothing.
    #[tokio::test]
    async fn dropped_deliveries_leave_no_action_behind() {
        let usr1 = Deliveries::of(SIGUSR1).unwrap();
        let action = usr1.action;
        drop(usr1);
        assert!(!unregister(action), "the action was still registered");
    }
}
