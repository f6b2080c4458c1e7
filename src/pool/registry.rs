//! All pools of a config: one per (cluster, tier) that has tenants, one per
//! tenant with a dedicated pool. On reload the new set is built from the old
//! one: a pool whose cluster still opens the same servers is kept, with its
//! servers, and only resized.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Pool, PoolIdentity, PoolSizes};
use crate::config::{Config, Tenant};
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PoolKey {
    Tier { cluster: String, tier: String },
    Dedicated { tenant: String },
}

impl PoolKey {
    pub fn of(tenant: &Tenant) -> PoolKey {
        match tenant.dedicated_pool_size {
            Some(_) => PoolKey::Dedicated {
                tenant: tenant.id.clone(),
            },
            None => PoolKey::Tier {
                cluster: tenant.cluster.clone(),
                tier: tenant.tier.clone(),
            },
        }
    }
}

pub struct Pools {
    map: HashMap<PoolKey, Arc<Pool>>,
}

impl Pools {
    /// The pools `config` needs, reusing those of `previous` that still fit.
    pub fn from_config(config: &Config, previous: Option<&Pools>, metrics: &Metrics) -> Pools {
        let mut map = HashMap::new();
        for tenant in config.tenants.values() {
            let key = PoolKey::of(tenant);
            if map.contains_key(&key) {
                continue;
            }
            let tier = &config.tiers[&tenant.tier];
            let cluster = Arc::clone(&config.clusters[&tenant.cluster]);
            let (label, sizes) = match tenant.dedicated_pool_size {
                Some(size) => (
                    format!("tenant {}", tenant.id),
                    PoolSizes {
                        max_size: size,
                        min_size: tier.min_pool_size.min(size),
                        max_tenant_share: size,
                    },
                ),
                None => (
                    tier.name.clone(),
                    PoolSizes {
                        max_size: tier.pool_size,
                        min_size: tier.min_pool_size,
                        max_tenant_share: tier.max_tenant_share,
                    },
                ),
            };
            let kept = previous
                .and_then(|p| p.map.get(&key))
                .filter(|p| p.identity.tier == tier.name && p.cluster().same_servers(&cluster));
            let pool = match kept {
                Some(pool) => {
                    pool.reconfigure(sizes, cluster);
                    Arc::clone(pool)
                }
                None => {
                    let identity = PoolIdentity {
                        label,
                        tier: tier.name.clone(),
                    };
                    let metrics = metrics.pool(&cluster.name, &tier.name);
                    Pool::new(identity, sizes, cluster, metrics)
                }
            };
            map.insert(key, pool);
        }
        Pools { map }
    }

    pub fn for_tenant(&self, tenant: &Tenant) -> Option<&Arc<Pool>> {
        self.map.get(&PoolKey::of(tenant))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PoolKey, &Arc<Pool>)> {
        self.map.iter()
    }
}
