//! What a config turns into at run time: its pools and pre-encoded tenant
//! contexts, built from the previous runtime on reload so that pools that did
//! not change keep their servers. A session reads the runtime of the moment at
//! each transaction boundary.

pub mod rls;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::tenant::context::TenantContext;

pub struct Runtime {
    pub config: Arc<Config>,
    pub pools: Pools,
    pub contexts: HashMap<String, Arc<TenantContext>>,
    /// `config.tenant_setting`, shared by every session.
    pub tenant_setting: Arc<str>,
}

impl Runtime {
    pub fn new(config: Arc<Config>, previous: Option<&Runtime>, metrics: &Metrics) -> Runtime {
        let contexts = config
            .tenants
            .values()
            .map(|t| {
                let tier = &config.tiers[&t.tier];
                let context = TenantContext::new(&config.tenant_setting, t, tier);
                // An unchanged context stays the same Arc: servers carrying it
                // are recognised by pointer, without comparing SQL.
                let context = match previous.and_then(|p| p.contexts.get(&t.id)) {
                    Some(old) if **old == context => Arc::clone(old),
                    _ => Arc::new(context),
                };
                (t.id.clone(), context)
            })
            .collect();
        Runtime {
            pools: Pools::from_config(&config, previous.map(|p| &p.pools), metrics),
            contexts,
            tenant_setting: Arc::from(config.tenant_setting.as_str()),
            config,
        }
    }
}

/// Checks the roles tenant transactions run as (see [`rls`]) and logs what it
/// finds. An error means the config must not be used: tenant transactions
/// would fail, or `require_rls_enforced` is set and RLS would be bypassed.
pub async fn check_roles(config: &Config) -> Result<(), String> {
    let findings = rls::check(config).await;
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
        return Err(format!(
            "tenant roles are misconfigured: {}",
            findings.broken.join("; ")
        ));
    }
    if config.require_rls_enforced && !findings.bypasses.is_empty() {
        return Err(format!(
            "require_rls_enforced is set and RLS would be bypassed: {}",
            findings.bypasses.join("; ")
        ));
    }
    Ok(())
}
