//! One connection to PostgreSQL: open it, authenticate as the cluster's role
//! (SCRAM-SHA-256, md5, cleartext or trust), learn its parameters and cancel key,
//! and know which tenant context it carries. The pool owns idle servers; a
//! session borrows one per transaction.

mod connect;
mod query;
mod stream;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::prepared::ServerStatements;
use crate::tenant::context::TenantContext;
use crate::workers::{self, WorkerId};

pub use connect::{connect, open};
pub use stream::ServerStream;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("server said: {0}")]
    Server(String),
    #[error("authentication method {0} is not supported for server logins")]
    UnsupportedAuth(&'static str),
    #[error("the cluster's password is needed for {0} authentication")]
    PasswordNeeded(&'static str),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol error from server: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where a server was reached: a TCP peer or a Unix-domain socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    Tcp(SocketAddr),
    Unix(Arc<Path>),
}

/// Where and how to cancel whatever a server is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: ServerAddr,
    pub process_id: i32,
    pub secret: i32,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct Server {
    pub stream: ServerStream,
    /// Proxy-wide id, for logs.
    pub id: u64,
    pub cancel: CancelTarget,
    /// The `ParameterStatus` values PostgreSQL sent at login.
    pub params: Arc<Vec<(String, String)>>,
    /// The tenant context this server is known to carry.
    pub context: Option<Arc<TenantContext>>,
    /// A client may have changed session state: `DISCARD ALL` before the next use.
    pub needs_reset: bool,
    /// The named statements prepared on it.
    pub statements: ServerStatements,
    /// Session settings its last client left, beyond the tenant context.
    pub settings: crate::session::settings::Settings,
    pub idle_since: Instant,
    pub connected_at: std::time::SystemTime,
    /// The worker whose reactor its socket is registered with.
    pub home: WorkerId,
}

impl Server {
    fn new(stream: ServerStream, cancel: CancelTarget, params: Vec<(String, String)>) -> Server {
        Server {
            stream,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cancel,
            params: Arc::new(params),
            context: None,
            needs_reset: false,
            statements: ServerStatements::default(),
            settings: Default::default(),
            idle_since: Instant::now(),
            connected_at: std::time::SystemTime::now(),
            home: workers::current(),
        }
    }

    /// Whether an idle server still looks usable (see [`ServerStream::quiet`]).
    pub fn looks_alive(&self) -> bool {
        self.stream.quiet()
    }

    /// This server, usable from the worker this runs on: its socket moves to
    /// this worker's reactor if it is registered elsewhere. `None`: the move
    /// failed and the connection is gone.
    pub fn adopt(self: Box<Self>) -> Option<Box<Self>> {
        let here = workers::current();
        if self.home == here {
            return Some(self);
        }
        let server = *self;
        match server.stream.rehome() {
            Ok(stream) => Some(Box::new(Server {
                stream,
                home: here,
                ..server
            })),
            Err(e) => {
                tracing::info!(server = server.id, error = %e, "could not move a server to this worker; closing it");
                None
            }
        }
    }
}
