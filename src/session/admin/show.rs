//! The tables `SHOW …` returns, built from live state. Column names follow
//! PgBouncer's where the concept is the same (`cl_active`, `sv_idle`,
//! `maxwait`, `total_xact_count`…). Nothing here ever shows a secret.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::command::Show;
use crate::config::{Config, PoolMode};
use crate::pool::PoolKey;
use crate::session::Deps;
use crate::session::control::ClientState;

pub struct Table {
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<Option<String>>>,
}

pub fn table(deps: &Deps, what: Show) -> Table {
    match what {
        Show::Pools => pools(deps),
        Show::Clients => clients(deps),
        Show::Servers => servers(deps),
        Show::Stats => stats(deps),
        Show::Tenants => tenants(deps),
        Show::Tiers => tiers(deps),
        Show::Config => config(deps),
        Show::Version => Table {
            columns: &["version"],
            rows: vec![vec![Some(format!(
                "pgtenant {}",
                env!("CARGO_PKG_VERSION")
            ))]],
        },
    }
}

fn cell(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn mode(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn pools(deps: &Deps) -> Table {
    let runtime = deps.runtime.load_full();
    let paused = deps.control.paused();
    let mut rows: Vec<(String, Vec<Option<String>>)> = Vec::new();
    for (key, pool) in runtime.pools.iter() {
        let s = pool.stats();
        let cluster = pool.cluster();
        let tier = &pool.identity.tier;
        let pool_mode = runtime
            .config
            .tiers
            .get(tier)
            .map_or(PoolMode::Transaction, |t| t.pool_mode);
        let is_paused = match key {
            PoolKey::Dedicated { tenant } => paused.covers(tenant, tier),
            PoolKey::Tier { .. } => paused.covers_tier(tier),
        };
        rows.push((
            format!("{}\0{}", cluster.name, pool.identity.label),
            vec![
                cell(&cluster.name),
                cell(tier),
                cell(&pool.identity.label),
                cell(s.active()),
                cell(s.waiting),
                cell(s.idle_clients()),
                cell(s.active()),
                cell(s.idle),
                cell(s.connecting),
                cell(s.sizes.max_size),
                cell(s.sizes.min_size),
                cell(s.sizes.max_tenant_share),
                cell(s.max_wait.as_secs()),
                cell(s.max_wait.subsec_micros()),
                cell(mode(pool_mode)),
                cell(yes(is_paused)),
            ],
        ));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Table {
        columns: &[
            "cluster",
            "tier",
            "pool",
            "cl_active",
            "cl_waiting",
            "cl_idle",
            "sv_active",
            "sv_idle",
            "sv_login",
            "pool_size",
            "min_pool_size",
            "max_tenant_share",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "paused",
        ],
        rows: rows.into_iter().map(|(_, r)| r).collect(),
    }
}

fn clients(deps: &Deps) -> Table {
    let now = SystemTime::now();
    let rows = deps
        .control
        .clients()
        .iter()
        .map(|c| {
            let state = c.state();
            let wait = match (state, c.request_at()) {
                (ClientState::Waiting, Some(at)) => now.duration_since(at).unwrap_or_default(),
                _ => Duration::ZERO,
            };
            vec![
                cell("C"),
                cell(c.user()),
                cell(c.database()),
                cell(c.tenant()),
                cell(c.tier()),
                cell(state.name()),
                cell(c.addr.ip()),
                cell(c.addr.port()),
                cell(utc(c.connected_at)),
                c.request_at().map(utc),
                cell(wait.as_secs()),
                cell(wait.subsec_micros()),
                cell(yes(c.tls)),
                cell(c.application_name()),
                cell(c.id),
                c.server().map(|(id, _)| id.to_string()),
            ]
        })
        .collect();
    Table {
        columns: &[
            "type",
            "user",
            "database",
            "tenant",
            "tier",
            "state",
            "addr",
            "port",
            "connect_time",
            "request_time",
            "wait",
            "wait_us",
            "tls",
            "application_name",
            "id",
            "server",
        ],
        rows,
    }
}

fn servers(deps: &Deps) -> Table {
    let runtime = deps.runtime.load_full();
    let mut rows = Vec::new();
    for c in deps.control.clients() {
        let Some((id, pid)) = c.server() else {
            continue;
        };
        let tenant = c.tenant();
        let Some(pool) = runtime
            .config
            .tenants
            .get(&*tenant)
            .and_then(|t| runtime.pools.for_tenant(t))
        else {
            continue;
        };
        let cluster = pool.cluster();
        rows.push((
            id,
            server_row(
                &cluster,
                &pool.identity.label,
                "active",
                None,
                Some(&*tenant),
                pid,
                id,
                c.request_at(),
            ),
        ));
    }
    for (_, pool) in runtime.pools.iter() {
        let cluster = pool.cluster();
        for s in pool.idle_servers() {
            let connected = Some(s.connected_at);
            rows.push((
                s.id,
                server_row(
                    &cluster,
                    &pool.identity.label,
                    "idle",
                    connected,
                    s.tenant.as_deref(),
                    s.process_id,
                    s.id,
                    None,
                ),
            ));
        }
    }
    rows.sort_by_key(|r| r.0);
    Table {
        columns: &[
            "type",
            "user",
            "database",
            "cluster",
            "pool",
            "state",
            "addr",
            "port",
            "connect_time",
            "request_time",
            "tenant",
            "remote_pid",
            "id",
        ],
        rows: rows.into_iter().map(|(_, r)| r).collect(),
    }
}

#[allow(clippy::too_many_arguments)] // one row's columns
fn server_row(
    cluster: &crate::config::Cluster,
    pool: &str,
    state: &str,
    connected: Option<SystemTime>,
    tenant: Option<&str>,
    pid: i32,
    id: u64,
    request: Option<SystemTime>,
) -> Vec<Option<String>> {
    vec![
        cell("S"),
        cell(&cluster.user),
        cell(&cluster.database),
        cell(&cluster.name),
        cell(pool),
        cell(state),
        cell(&cluster.host),
        cell(cluster.port),
        connected.map(utc),
        request.map(utc),
        tenant.map(str::to_owned),
        cell(pid),
        cell(id),
    ]
}

fn stats(deps: &Deps) -> Table {
    let rows = deps
        .metrics
        .pools()
        .into_iter()
        .map(|((cluster, tier), m)| {
            let xacts = m.transaction_time.count();
            let xact_us = m.transaction_time.sum().as_micros() as u64;
            let waits = m.queue_wait.count();
            let wait_us = m.queue_wait.sum().as_micros() as u64;
            let errors: u64 = m.errors().iter().map(|(_, n)| n).sum();
            vec![
                cell(cluster),
                cell(tier),
                cell(m.transactions.get()),
                cell(m.queries.get()),
                cell(m.bytes_received.get()),
                cell(m.bytes_sent.get()),
                cell(xact_us),
                cell(wait_us),
                cell(xact_us.checked_div(xacts).unwrap_or(0)),
                cell(wait_us.checked_div(waits).unwrap_or(0)),
                cell(m.server_connects.get()),
                cell(m.queue_timeouts.get()),
                cell(errors),
            ]
        })
        .collect();
    Table {
        columns: &[
            "cluster",
            "tier",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_wait_time",
            "avg_xact_time",
            "avg_wait_time",
            "total_server_connects",
            "total_queue_timeouts",
            "total_errors",
        ],
        rows,
    }
}

fn tenants(deps: &Deps) -> Table {
    let runtime = deps.runtime.load_full();
    let paused = deps.control.paused();
    let mut active: BTreeMap<Arc<str>, usize> = BTreeMap::new();
    for c in deps.control.clients() {
        if c.state() == ClientState::Active {
            *active.entry(c.tenant()).or_default() += 1;
        }
    }
    let rows = runtime
        .config
        .tenants
        .values()
        .map(|t| {
            let pool = runtime
                .pools
                .for_tenant(t)
                .map(|p| p.identity.label.clone());
            vec![
                cell(&t.id),
                cell(&t.tier),
                cell(&t.cluster),
                cell(if t.disabled { "disabled" } else { "active" }),
                t.schema.clone(),
                t.role.clone(),
                pool,
                cell(deps.clients.get(&t.id)),
                cell(active.get(t.id.as_str()).copied().unwrap_or(0)),
                cell(yes(paused.covers(&t.id, &t.tier))),
            ]
        })
        .collect();
    Table {
        columns: &[
            "tenant",
            "tier",
            "cluster",
            "status",
            "schema",
            "role",
            "pool",
            "clients",
            "cl_active",
            "paused",
        ],
        rows,
    }
}

fn tiers(deps: &Deps) -> Table {
    let runtime = deps.runtime.load_full();
    let paused = deps.control.paused();
    let config = &runtime.config;
    let rows = config
        .tiers
        .values()
        .map(|t| {
            let tenants = config.tenants.values().filter(|x| x.tier == t.name).count();
            vec![
                cell(&t.name),
                cell(t.pool_size),
                cell(t.min_pool_size),
                cell(t.max_tenant_share),
                t.statement_timeout.map(|d| format!("{}ms", d.as_millis())),
                cell(format!("{}ms", t.queue_timeout.as_millis())),
                cell(t.max_client_connections),
                cell(mode(t.pool_mode)),
                cell(tenants),
                cell(yes(paused.covers_tier(&t.name))),
            ]
        })
        .collect();
    Table {
        columns: &[
            "tier",
            "pool_size",
            "min_pool_size",
            "max_tenant_share",
            "statement_timeout",
            "queue_timeout",
            "max_client_connections",
            "pool_mode",
            "tenants",
            "paused",
        ],
        rows,
    }
}

/// Proxy-wide settings (clusters, tiers and tenants have their own SHOWs).
/// `changeable`: whether a reload applies it.
fn config(deps: &Deps) -> Table {
    let runtime = deps.runtime.load_full();
    let c: &Config = &runtime.config;
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let settings: Vec<(&str, String, bool)> = vec![
        ("listen", c.listen.clone(), false),
        (
            "metrics.listen",
            c.metrics.listen.clone().unwrap_or_default(),
            false,
        ),
        (
            "log_format",
            format!("{:?}", c.log_format).to_lowercase(),
            false,
        ),
        (
            "metrics.max_tenant_series",
            c.metrics.max_tenant_series.to_string(),
            true,
        ),
        ("tls.mode", format!("{:?}", c.tls.mode).to_lowercase(), true),
        ("tenant_setting", c.tenant_setting.clone(), true),
        (
            "resolution.username_separator",
            c.separator.clone().unwrap_or_default(),
            true,
        ),
        (
            "require_rls_enforced",
            c.require_rls_enforced.to_string(),
            true,
        ),
        ("shutdown_timeout", ms(c.shutdown_timeout), true),
        ("watch_config", c.watch_config.to_string(), true),
        ("limits.login_timeout", ms(c.limits.login_timeout), true),
        (
            "limits.max_client_connections",
            c.limits.max_client_connections.to_string(),
            true,
        ),
        (
            "limits.max_auth_failures",
            c.limits.max_auth_failures.to_string(),
            true,
        ),
        (
            "limits.auth_failure_window",
            ms(c.limits.auth_failure_window),
            true,
        ),
        (
            "limits.max_startup_packet_size",
            c.limits.max_startup_packet_size.to_string(),
            true,
        ),
        (
            "limits.max_message_size",
            c.limits.max_message_size.to_string(),
            true,
        ),
        (
            "limits.max_prepared_statements",
            c.limits.max_prepared_statements.to_string(),
            true,
        ),
        (
            "limits.max_client_prepared_statements",
            c.limits.max_client_prepared_statements.to_string(),
            true,
        ),
        ("clusters", c.clusters.len().to_string(), true),
        ("tiers", c.tiers.len().to_string(), true),
        ("tenants", c.tenants.len().to_string(), true),
        ("admin.users", c.admin_users.len().to_string(), true),
    ];
    Table {
        columns: &["key", "value", "changeable"],
        rows: settings
            .into_iter()
            .map(|(k, v, changeable)| vec![cell(k), cell(v), cell(yes(changeable))])
            .collect(),
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC`, as PgBouncer prints times.
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_like_pgbouncer() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_435_445);
        assert_eq!(utc(t), "2026-11-23 12:04:05 UTC");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29 00:00:00 UTC");
    }
}
