//! Tenant → the statements that give a server that tenant's context.
//!
//! The context is two simple `Query` messages, pre-encoded once per tenant and
//! written in front of the client's first message (no extra round trip):
//!
//! 1. the tenant setting, `search_path` and `RESET ROLE`. None of these can fail,
//!    so once it has run the server no longer carries the previous tenant's context;
//! 2. `SET ROLE`, `statement_timeout` and the tier's settings, which can fail (a
//!    dropped role, a bad value). If it does, PostgreSQL rolls back only this
//!    statement group, so the client's pipelined statements run as the login role
//!    with *this* tenant's setting, never another's; the server is then closed.
//!
//! Each is a `Query` of its own, so it commits before the client's statements
//! run, outside the client's transaction. Inside it, the setting would roll
//! back with it, and a transaction can roll back with no sign on the wire the
//! proxy could rely on: a procedure run by `CALL` may itself `ROLLBACK` (where
//! PostgreSQL allows it transaction control), and the command tag is still
//! `CALL`. The previous tenant's value would then be back under this tenant's
//! later statements.
//!
//! Identifiers and literals are quoted here; names were validated at config load.

use bytes::{Bytes, BytesMut};
use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::config::{Tenant, Tier};
use crate::protocol::build;

/// A tenant's pre-encoded context.
#[derive(Debug, PartialEq, Eq)]
pub struct TenantContext {
    /// Whose context it is.
    pub tenant: String,
    /// The `Query` messages, ready to write.
    pub wire: Bytes,
    /// Where the first message ends in `wire`.
    first_len: usize,
    /// `Query` of the tenant setting alone.
    tenant_only: Bytes,
    /// Whether the second message sets a role (which the first resets).
    sets_role: bool,
    /// How many `ReadyForQuery` replies they produce (and the relay swallows).
    pub replies: usize,
    /// The SQL, kept to compare contexts and for logs.
    pub sql: Vec<String>,
    /// What unqualified names resolve to (role and `search_path`): prepared
    /// statements are shared only within one namespace.
    pub namespace: Vec<u8>,
    /// Settings the context sets after `SET ROLE` (lower-case name, SQL value):
    /// a client may override them, and they come back when it has not.
    pub owned: Vec<(String, String)>,
}

impl TenantContext {
    pub fn new(setting: &str, tenant: &Tenant, tier: &Tier) -> TenantContext {
        let search_path = match &tenant.schema {
            Some(schema) => format!("{}, public", escape_identifier(schema)),
            None => "DEFAULT".to_owned(),
        };
        let first = format!(
            "SET {setting} TO {}; SET search_path TO {search_path}; RESET ROLE",
            escape_literal(&tenant.id)
        );
        let mut second = Vec::new();
        if let Some(role) = &tenant.role {
            second.push(format!("SET ROLE {}", escape_identifier(role)));
        }
        let mut owned = vec![(
            "statement_timeout".to_owned(),
            match tier.statement_timeout {
                Some(t) => t.as_millis().to_string(),
                None => "DEFAULT".to_owned(),
            },
        )];
        for (name, value) in &tier.settings {
            owned.push((name.to_ascii_lowercase(), escape_literal(value)));
        }
        for (name, value) in &owned {
            second.push(format!("SET {name} TO {value}"));
        }
        let namespace =
            format!("{}\0{search_path}", tenant.role.as_deref().unwrap_or("")).into_bytes();
        let sql = vec![first, second.join("; ")];
        let mut wire = BytesMut::new();
        build::query(&mut wire, &sql[0]);
        let first_len = wire.len();
        build::query(&mut wire, &sql[1]);
        let mut tenant_only = BytesMut::new();
        build::query(
            &mut tenant_only,
            &format!("SET {setting} TO {}", escape_literal(&tenant.id)),
        );
        TenantContext {
            tenant: tenant.id.clone(),
            wire: wire.freeze(),
            first_len,
            tenant_only: tenant_only.freeze(),
            sets_role: tenant.role.is_some(),
            replies: sql.len(),
            sql,
            namespace,
            owned,
        }
    }
}

/// What a server must run, ahead of the client's messages, to carry a context.
#[derive(Debug, PartialEq, Eq)]
pub struct Switch<'a> {
    /// The `Query` messages (empty: the server carries the context already).
    pub wire: &'a [u8],
    /// How many `ReadyForQuery` replies they make (the relay swallows them).
    pub replies: usize,
    /// Whether they set the tier's settings ([`TenantContext::owned`]) again,
    /// over whatever values a client had set on the server.
    pub sets_owned: bool,
}

impl TenantContext {
    /// What switches a server that carries `current` (`None`: nothing known,
    /// as after `DISCARD ALL`) to this context. Between tenants of one tier
    /// without roles (the common switch) the second message would set what the
    /// server already has, so only the first goes; and of that only the tenant
    /// setting when both share a `search_path` (clients cannot change it, nor
    /// the role). Every statement costs PostgreSQL time on every switch.
    /// Settings a client changed on top stay recorded on the server and are
    /// re-applied as after a full switch.
    pub fn switch_from(&self, current: Option<&TenantContext>) -> Switch<'_> {
        let partial = |wire| Switch {
            wire,
            replies: 1,
            sets_owned: false,
        };
        match current {
            Some(c) if std::ptr::eq(c, self) || c == self => Switch {
                wire: &[],
                replies: 0,
                sets_owned: false,
            },
            Some(c) if !self.sets_role && !c.sets_role && self.sql[1] == c.sql[1] => {
                if self.namespace == c.namespace {
                    partial(&self.tenant_only)
                } else {
                    partial(&self.wire[..self.first_len])
                }
            }
            _ => Switch {
                wire: &self.wire,
                replies: self.replies,
                sets_owned: true,
            },
        }
    }
}

/// `Query("DISCARD ALL")`, sent before the context when the previous client may
/// have left session state behind (see [`super::scan`]). It cannot run inside a
/// transaction block, so it is a `Query` of its own; servers are only released idle.
pub const RESET: &[u8] = b"Q\0\0\0\x10DISCARD ALL\0";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tier() -> Tier {
        Tier {
            name: "free".into(),
            pool_size: 1,
            min_pool_size: 0,
            max_tenant_share: 1,
            statement_timeout: Some(Duration::from_millis(200)),
            queue_timeout: Duration::from_secs(1),
            max_client_connections: 1,
            settings: vec![("work_mem".into(), "4MB".into())],
            pool_mode: Default::default(),
        }
    }

    fn tenant(schema: Option<&str>, role: Option<&str>) -> Tenant {
        Tenant {
            id: "acme".into(),
            tier: "free".into(),
            cluster: "main".into(),
            disabled: false,
            schema: schema.map(Into::into),
            role: role.map(Into::into),
            dedicated_pool_size: None,
            pool_mode: None,
        }
    }

    #[test]
    fn shared_schema_tenant() {
        let c = TenantContext::new("app.current_tenant", &tenant(None, None), &tier());
        assert_eq!(
            c.sql,
            vec![
                "SET app.current_tenant TO 'acme'; SET search_path TO DEFAULT; RESET ROLE"
                    .to_owned(),
                "SET statement_timeout TO 200; SET work_mem TO '4MB'".to_owned(),
            ]
        );
        assert_eq!(c.replies, 2);
    }

    #[test]
    fn schema_and_role_tenant_sets_role_after_the_infallible_part() {
        let c = TenantContext::new(
            "app.tenant",
            &tenant(Some("acme"), Some("acme_role")),
            &tier(),
        );
        assert_eq!(
            c.sql[0],
            "SET app.tenant TO 'acme'; SET search_path TO \"acme\", public; RESET ROLE"
        );
        assert!(c.sql[1].starts_with("SET ROLE \"acme_role\"; "));
    }

    #[test]
    fn a_switch_within_a_tier_sets_only_the_tenant() {
        let other = Tenant {
            id: "umbrella".into(),
            ..tenant(None, None)
        };
        let from = TenantContext::new("app.current_tenant", &other, &tier());
        let switch = |to: &TenantContext, from: &TenantContext| {
            let s = to.switch_from(Some(from));
            (s.wire.to_vec(), s.replies)
        };
        let to = TenantContext::new("app.current_tenant", &tenant(None, None), &tier());
        let mut setting = BytesMut::new();
        build::query(&mut setting, "SET app.current_tenant TO 'acme'");
        assert_eq!(switch(&to, &from), (setting.to_vec(), 1));
        // Another search_path is set too (and RESET ROLE, which cannot fail).
        let schema = TenantContext::new("app.current_tenant", &tenant(Some("s"), None), &tier());
        let mut first = BytesMut::new();
        build::query(&mut first, &schema.sql[0]);
        assert_eq!(switch(&schema, &from), (first.to_vec(), 1));
        // A role is reset by the first message and set by the second.
        let with_role = TenantContext::new("app.current_tenant", &tenant(None, Some("r")), &tier());
        assert_eq!(switch(&with_role, &from), (with_role.wire.to_vec(), 2));
        assert_eq!(switch(&to, &with_role), (to.wire.to_vec(), 2));
        // Another tier's settings are set again.
        let mut slow = tier();
        slow.statement_timeout = None;
        let other_tier = TenantContext::new("app.current_tenant", &other, &slow);
        assert_eq!(switch(&to, &other_tier), (to.wire.to_vec(), 2));
        // Nothing known (after DISCARD ALL): all of it; the same context: nothing.
        assert_eq!(to.switch_from(None).wire, &to.wire[..]);
        assert!(to.switch_from(None).sets_owned);
        assert_eq!(to.switch_from(Some(&to)).replies, 0);
    }

    #[test]
    fn reset_is_a_discard_all_query() {
        let mut built = BytesMut::new();
        build::query(&mut built, "DISCARD ALL");
        assert_eq!(RESET, &built[..]);
    }

    #[test]
    fn values_are_quoted() {
        let mut t = tier();
        t.settings = vec![("app.note".into(), "it's".into())];
        let c = TenantContext::new("app.current_tenant", &tenant(None, None), &t);
        assert!(
            c.sql[1].ends_with("SET app.note TO 'it''s'"),
            "{}",
            c.sql[1]
        );
    }
}
