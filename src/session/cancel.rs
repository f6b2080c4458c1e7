//! Cancel keys: each client gets the proxy's own `BackendKeyData`; a CancelRequest
//! with that key is forwarded, with the real server key over a new connection, to
//! the server the client is attached to at that moment, and dropped otherwise.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use dashmap::DashMap;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::protocol::build;
use crate::server::CancelTarget;

/// One client's cancel key and the server it is attached to, if any.
pub struct CancelSlot {
    pub process_id: i32,
    pub secret: i32,
    target: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    pub fn attach(&self, target: CancelTarget) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
    }

    pub fn detach(&self) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn target(&self) -> Option<CancelTarget> {
        *self.target.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All live clients' keys, by proxy process id.
#[derive(Default)]
pub struct CancelRegistry {
    slots: DashMap<i32, Arc<CancelSlot>>,
}

impl CancelRegistry {
    /// A fresh random key for a new client; dropping the guard unregisters it.
    pub fn register(self: &Arc<Self>) -> CancelGuard {
        loop {
            let process_id = rand::random::<i32>() & i32::MAX;
            if process_id == 0 {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                process_id,
                secret: rand::random(),
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
        if !bool::from(secret.ct_eq(&slot.secret.to_be_bytes())) {
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
    let mut stream = TcpStream::connect(target.addr).await?;
    let mut buf = BytesMut::new();
    build::cancel_request(&mut buf, target.process_id, target.secret);
    stream.write_all(&buf).await?;
    stream.shutdown().await
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

    #[tokio::test]
    async fn wrong_secret_or_idle_client_sends_nothing() {
        let registry = Arc::new(CancelRegistry::default());
        let guard = registry.register();
        let pid = guard.slot.process_id;
        let wrong = guard.slot.secret.wrapping_add(1).to_be_bytes();
        assert!(!registry.cancel(pid, &wrong).await);
        assert!(
            !registry.cancel(pid, &guard.slot.secret.to_be_bytes()).await,
            "idle client"
        );
        drop(guard);
        assert!(registry.slots.is_empty());
    }
}
