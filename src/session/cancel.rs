//! Cancel keys: each client gets the proxy's own `BackendKeyData`; a CancelRequest
//! with that key is forwarded, with the real server key over a new connection, to
//! the server the client is attached to at that moment, and dropped otherwise.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use dashmap::DashMap;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::protocol::build;
use crate::server::{CancelTarget, ServerAddr};

/// The longest secret issued (protocol 3.2 clients get 32 bytes, 3.0 clients 4).
const MAX_SECRET: usize = 32;

/// One client's cancel key and the server it is attached to, if any.
pub struct CancelSlot {
    pub process_id: i32,
    secret: [u8; MAX_SECRET],
    secret_len: usize,
    target: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    /// The secret half of the key, as sent in `BackendKeyData`.
    pub fn secret(&self) -> &[u8] {
        &self.secret[..self.secret_len]
    }

    pub fn attach(&self, target: CancelTarget) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
    }

    pub fn detach(&self) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn target(&self) -> Option<CancelTarget> {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// All live clients' keys, by proxy process id.
#[derive(Default)]
pub struct CancelRegistry {
    slots: DashMap<i32, Arc<CancelSlot>>,
}

impl CancelRegistry {
    /// A fresh random key with a `secret_len`-byte secret (at most 32) for a new
    /// client; dropping the guard unregisters it.
    pub fn register(self: &Arc<Self>, secret_len: usize) -> CancelGuard {
        let secret_len = secret_len.min(MAX_SECRET);
        loop {
            let process_id = rand::random::<i32>() & i32::MAX;
            if process_id == 0 {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                process_id,
                secret: rand::random(),
                secret_len,
                target: Mutex::new(None),
            });
            if let dashmap::Entry::Vacant(v) = self.slots.entry(process_id) {
                v.insert(Arc::clone(&slot));
                return CancelGuard {
                    registry: Arc::clone(self),
                    slot,
                };
            }
        }
    }

    /// Forwards a CancelRequest if the key matches a client attached to a server.
    /// Returns whether a cancel was sent.
    pub async fn cancel(&self, process_id: i32, secret: &[u8]) -> bool {
        // Clone out of the map: no map guard may live across an await.
        let Some(slot) = self.slots.get(&process_id).map(|s| Arc::clone(&s)) else {
            return false;
        };
        // `ct_eq` on slices of different lengths is false without comparing bytes;
        // the length is not secret.
        if !bool::from(secret.ct_eq(slot.secret())) {
            return false;
        }
        let Some(target) = slot.target() else {
            return false;
        };
        match forward(target).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not forward a cancel request");
                false
            }
        }
    }
}

async fn forward(target: CancelTarget) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    build::cancel_request(&mut buf, target.process_id, target.secret);
    async fn send(mut stream: impl AsyncWrite + Unpin, buf: &[u8]) -> std::io::Result<()> {
        stream.write_all(buf).await?;
        stream.shutdown().await
    }
    match &target.addr {
        ServerAddr::Tcp(addr) => send(TcpStream::connect(addr).await?, &buf).await,
        ServerAddr::Unix(path) => send(UnixStream::connect(path).await?, &buf).await,
    }
}

pub struct CancelGuard {
    registry: Arc<CancelRegistry>,
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry.slots.remove(&self.slot.process_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn only_the_exact_key_of_an_attached_client_is_forwarded() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = CancelTarget {
            addr: ServerAddr::Tcp(server.local_addr().unwrap()),
            process_id: 77,
            secret: 0x0102_0304,
        };
        let registry = Arc::new(CancelRegistry::default());
        for len in [4, 32] {
            let guard = registry.register(len);
            let (pid, secret) = (guard.slot.process_id, guard.slot.secret().to_vec());
            assert_eq!(secret.len(), len);
            assert!(!registry.cancel(pid, &secret).await, "idle client");
            guard.slot.attach(target.clone());
            let mut wrong = secret.clone();
            wrong[len - 1] ^= 1;
            assert!(!registry.cancel(pid, &wrong).await, "wrong secret");
            assert!(!registry.cancel(pid, &secret[..len - 1]).await, "prefix");
            assert!(!registry.cancel(pid ^ 1, &secret).await, "wrong pid");
            assert!(registry.cancel(pid, &secret).await);
            let (mut conn, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).await.unwrap();
            let mut want = BytesMut::new();
            build::cancel_request(&mut want, 77, 0x0102_0304);
            assert_eq!(got, want, "the server's own key, not the client's");
            drop(guard);
        }
        assert!(registry.slots.is_empty());
    }
}
