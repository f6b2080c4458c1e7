//! Login name → credential to check → tenant. Pure, and driven only by the
//! authenticated identity: nothing else in the startup packet chooses the tenant.

use std::sync::Arc;

use crate::config::{Config, PoolMode, Secret, Tenant};
use crate::error::ClientError;

/// What a login name claims: the secret to check and the tenant it names.
#[derive(Debug, Clone)]
pub struct Credential<'c> {
    pub secret: &'c Secret,
    pub tenant_id: String,
    /// The user's own `pool_mode`, over the tenant's and the tier's.
    pub pool_mode: Option<PoolMode>,
}

/// Looks a login name up: (a) a user declared under a tenant, or (b) a shared
/// application user followed by the separator and a tenant id (`app.acme`).
/// `None` means no such user; the caller still runs a mock exchange.
pub fn credential<'c>(config: &'c Config, login: &str) -> Option<Credential<'c>> {
    if let Some(user) = config.users.get(login) {
        return Some(Credential {
            secret: &user.secret,
            tenant_id: user.tenant.clone(),
            pool_mode: user.pool_mode,
        });
    }
    let sep = config.separator.as_deref()?;
    let (shared, tenant) = login.rsplit_once(sep)?;
    let user = config.shared_users.get(shared)?;
    Some(Credential {
        secret: &user.secret,
        tenant_id: tenant.to_owned(),
        pool_mode: user.pool_mode,
    })
}

/// The tenant an authenticated credential names, if it may log in.
pub fn tenant(config: &Config, tenant_id: &str) -> Result<Arc<Tenant>, ClientError> {
    let tenant = config
        .tenants
        .get(tenant_id)
        .ok_or_else(|| ClientError::unknown_tenant(tenant_id))?;
    if tenant.disabled {
        return Err(ClientError::tenant_disabled(tenant_id));
    }
    Ok(Arc::clone(tenant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn config() -> Config {
        let scram = postgres_protocol::password::scram_sha_256(b"pw");
        let text = format!(
            r#"
listen: 127.0.0.1:0
resolution:
  username_separator: "."
  shared_users:
    app: {{ password: "{scram}" }}
clusters:
  main: {{ host: localhost, database: saas, user: u, max_server_connections: 10 }}
tiers:
  free: {{ pool_size: 2 }}
tenants:
  acme:
    tier: free
    cluster: main
    users:
      acme_admin: {{ password: "{scram}" }}
  gone: {{ tier: free, cluster: main, status: disabled }}
"#
        );
        config::parse(&text, &|_| None).unwrap()
    }

    #[test]
    fn declared_user_belongs_to_its_tenant() {
        let c = config();
        assert_eq!(credential(&c, "acme_admin").unwrap().tenant_id, "acme");
    }

    #[test]
    fn shared_user_takes_the_tenant_from_the_suffix() {
        let c = config();
        assert_eq!(credential(&c, "app.acme").unwrap().tenant_id, "acme");
        assert_eq!(credential(&c, "app.nobody").unwrap().tenant_id, "nobody");
        assert!(credential(&c, "other.acme").is_none());
        assert!(credential(&c, "app").is_none());
        assert!(credential(&c, "acme").is_none());
    }

    #[test]
    fn unknown_and_disabled_tenants_are_refused_with_28000() {
        let c = config();
        assert_eq!(tenant(&c, "acme").unwrap().id, "acme");
        assert_eq!(tenant(&c, "nobody").unwrap_err().code, "28000");
        let disabled = tenant(&c, "gone").unwrap_err();
        assert_eq!(disabled.code, "28000");
        assert!(disabled.message.contains("disabled"));
    }
}
