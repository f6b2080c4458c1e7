//! Readiness: every cluster reachable, and not draining. A probe opens a TCP
//! connection to each cluster every two seconds (within its `connect_timeout`);
//! a full login is not needed to tell a dead host, and costs PostgreSQL a backend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::server;
use crate::session::Deps;

#[derive(Default)]
pub struct Health {
    /// Per cluster: `None` reachable, `Some(why)` not.
    clusters: Mutex<BTreeMap<String, Option<String>>>,
}

impl Health {
    /// `Err` says why the proxy should not get traffic now.
    pub fn ready(&self, deps: &Deps) -> Result<(), String> {
        if deps.control.draining() {
            return Err("draining: shutting down".to_owned());
        }
        let runtime = deps.runtime.load();
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        for name in runtime.config.clusters.keys() {
            match clusters.get(name) {
                Some(None) => {}
                Some(Some(why)) => return Err(format!("cluster {name} unreachable: {why}")),
                None => return Err(format!("cluster {name} not checked yet")),
            }
        }
        Ok(())
    }
}

pub async fn probe(deps: Arc<Deps>, health: Arc<Health>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let runtime = deps.runtime.load_full();
        let mut found = BTreeMap::new();
        for cluster in runtime.config.clusters.values() {
            let outcome =
                match tokio::time::timeout(cluster.connect_timeout, server::open(cluster)).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("no answer within {:?}", cluster.connect_timeout)),
                };
            found.insert(cluster.name.clone(), outcome);
        }
        *health.clusters.lock().unwrap_or_else(|p| p.into_inner()) = found;
    }
}
