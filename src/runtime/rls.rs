//! The start-up check that RLS can protect anything: the role a tenant's
//! transactions run as must not be a superuser, have BYPASSRLS, or own (or
//! inherit ownership of) RLS tables that lack FORCE ROW LEVEL SECURITY, since any
//! of those makes PostgreSQL skip the policies. Tenant roles must exist and be
//! reachable with `SET ROLE` from the login role.

use std::collections::BTreeSet;

use postgres_protocol::escape::escape_literal;

use crate::config::Config;
use crate::server;

/// What the check found, per cluster.
#[derive(Debug, Default)]
pub struct Findings {
    /// RLS would not protect tenants' rows.
    pub bypasses: Vec<String>,
    /// Tenant transactions would fail (missing role, no membership).
    pub broken: Vec<String>,
    /// Clusters that could not be checked (down at start).
    pub unreachable: Vec<String>,
}

pub async fn check(config: &Config) -> Findings {
    let mut findings = Findings::default();
    for cluster in config.clusters.values() {
        let tenants: Vec<_> = config
            .tenants
            .values()
            .filter(|t| t.cluster == cluster.name)
            .collect();
        if tenants.is_empty() {
            continue;
        }
        let mut server = match server::connect(cluster).await {
            Ok(s) => s,
            Err(e) => {
                findings
                    .unreachable
                    .push(format!("cluster \"{}\": {e}", cluster.name));
                continue;
            }
        };
        let mut roles = BTreeSet::new();
        for tenant in &tenants {
            match &tenant.role {
                Some(role) => {
                    roles.insert(role.clone());
                }
                None => {
                    roles.insert(cluster.user.clone());
                }
            }
        }
        for role in roles {
            let lit = escape_literal(&role);
            let sql = format!(
                "SELECT r.rolsuper, r.rolbypassrls, pg_has_role(current_user, r.oid, 'MEMBER'), \
                 coalesce((SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ' ORDER BY n.nspname, c.relname) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity AND NOT c.relforcerowsecurity \
                     AND pg_has_role(r.oid, c.relowner, 'USAGE')), '') \
                 FROM pg_roles r WHERE r.rolname = {lit}"
            );
            let rows = match server.simple_query(&sql).await {
                Ok(rows) => rows,
                Err(e) => {
                    findings.unreachable.push(format!(
                        "cluster \"{}\": checking role {role}: {e}",
                        cluster.name
                    ));
                    continue;
                }
            };
            let Some(row) = rows.first() else {
                findings.broken.push(format!(
                    "cluster \"{}\": role \"{role}\" does not exist",
                    cluster.name
                ));
                continue;
            };
            let flag = |i: usize| row.get(i).and_then(|v| v.as_deref()) == Some("t");
            let place = format!("cluster \"{}\": role \"{role}\"", cluster.name);
            if flag(0) {
                findings.bypasses.push(format!("{place} is a superuser"));
            }
            if flag(1) {
                findings.bypasses.push(format!("{place} has BYPASSRLS"));
            }
            if !flag(2) {
                findings.broken.push(format!(
                    "{place}: login role \"{}\" is not a member (SET ROLE fails)",
                    cluster.user
                ));
            }
            if let Some(Some(tables)) = row.get(3)
                && !tables.is_empty()
            {
                findings.bypasses.push(format!(
                    "{place} owns RLS tables without FORCE ROW LEVEL SECURITY: {tables}"
                ));
            }
        }
    }
    findings
}
