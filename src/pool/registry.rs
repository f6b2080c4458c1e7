//! All pools of a config: one per (cluster, tier) that has tenants, one per
//! tenant with a dedicated pool.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Pool, PoolSettings};
use crate::config::{Config, Tenant};

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
    pub fn from_config(config: &Config) -> Pools {
        let mut map = HashMap::new();
        for tenant in config.tenants.values() {
            let key = PoolKey::of(tenant);
            if map.contains_key(&key) {
                continue;
            }
            let tier = &config.tiers[&tenant.tier];
            let cluster = Arc::clone(&config.clusters[&tenant.cluster]);
            let settings = match tenant.dedicated_pool_size {
                Some(size) => PoolSettings {
                    label: format!("tenant {}", tenant.id),
                    max_size: size,
                    min_size: tier.min_pool_size.min(size),
                    max_tenant_share: size,
                },
                None => PoolSettings {
                    label: tier.name.clone(),
                    max_size: tier.pool_size,
                    min_size: tier.min_pool_size,
                    max_tenant_share: tier.max_tenant_share,
                },
            };
            map.insert(key, Pool::new(settings, cluster));
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
