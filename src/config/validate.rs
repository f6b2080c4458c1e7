//! Raw YAML → checked [`Config`]: every field, every cross-reference, all errors at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_saphyr::{Location, Spanned};

use std::path::Path;

use super::raw::{RawClientTls, RawCluster, RawConfig, RawServerTls, RawTenant, RawTier, Status};
use super::values::{is_identifier, is_setting_name, is_tenant_id};
use super::{
    AdminUser, Cluster, Config, ConfigError, ConfigErrors, Limits, MetricsConfig, Secret,
    SharedUser, Tenant, TenantUser, Tier,
};
use crate::tls::{ClientTls, ClientTlsMode, ServerTls, ServerTlsMode};

/// Worker threads at most: more than a few per core only adds wake-ups.
const MAX_WORKERS: u16 = 256;

struct Errors(Vec<ConfigError>);

impl Errors {
    fn at(&mut self, path: impl Into<String>, loc: Location, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            line: loc.line() as u32,
            column: loc.column() as u32,
            message: message.into(),
        });
    }
}

pub(super) fn validate(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut errs = Errors(Vec::new());

    address(&mut errs, "listen", &raw.listen, "127.0.0.1:6432");
    if let Some(listen) = &raw.metrics.listen {
        address(&mut errs, "metrics.listen", listen, "127.0.0.1:9930");
    }
    if let Some(workers) = &raw.workers
        && workers.value > MAX_WORKERS
    {
        errs.at(
            "workers",
            workers.referenced,
            format!("must be at most {MAX_WORKERS} (0 means one per core)"),
        );
    }
    within(
        &mut errs,
        "limits.max_startup_packet_size",
        &raw.limits.max_startup_packet_size,
        STARTUP_PACKET_SIZES,
        "PostgreSQL itself refuses startup packets over 10000 bytes",
    );
    within(
        &mut errs,
        "limits.max_message_size",
        &raw.limits.max_message_size,
        MESSAGE_SIZES,
        "PostgreSQL's own messages need 8 KiB and it refuses any over 1 GiB",
    );
    let tenant_setting = raw.tenant_setting.value.clone();
    if !is_setting_name(&tenant_setting) || !tenant_setting.contains('.') {
        errs.at(
            "tenant_setting",
            raw.tenant_setting.referenced,
            "must be a custom setting name with a prefix, e.g. app.current_tenant",
        );
    }
    let separator = raw
        .resolution
        .username_separator
        .as_ref()
        .map(|s| s.value.clone());
    if let Some(sep) = &raw.resolution.username_separator
        && (sep.value.is_empty()
            || sep
                .value
                .chars()
                .any(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        errs.at(
            "resolution.username_separator",
            sep.referenced,
            "must be non-empty and contain no letters, digits, '_' or '-' (they can appear in tenant ids)",
        );
    }
    let mut shared_users = HashMap::new();
    for (name, user) in &raw.resolution.shared_users {
        let path = format!("resolution.shared_users.{name}");
        if let Some(secret) = secret(&mut errs, &path, &user.password) {
            let pool_mode = user.pool_mode;
            shared_users.insert(name.value.clone(), SharedUser { secret, pool_mode });
        }
    }
    if !raw.resolution.shared_users.is_empty() && separator.is_none() {
        errs.at(
            "resolution.shared_users",
            raw.resolution
                .shared_users
                .keys()
                .next()
                .map_or(Location::UNKNOWN, |k| k.at),
            "shared users need resolution.username_separator to be set",
        );
    }

    let clusters: BTreeMap<String, Arc<Cluster>> = raw
        .clusters
        .iter()
        .map(|(name, c)| {
            (
                name.value.clone(),
                Arc::new(cluster(&mut errs, &name.value, c, env)),
            )
        })
        .collect();
    let tiers: BTreeMap<String, Arc<Tier>> = raw
        .tiers
        .iter()
        .map(|(name, t)| {
            (
                name.value.clone(),
                Arc::new(tier(&mut errs, &name.value, t)),
            )
        })
        .collect();

    let mut tenants = BTreeMap::new();
    let mut users: HashMap<String, TenantUser> = HashMap::new();
    for (id, t) in &raw.tenants {
        let tenant = tenant(&mut errs, id, t, &clusters, &tiers);
        for (name, user) in &t.users {
            let path = format!("tenants.{id}.users.{name}");
            if shared_users.contains_key(&name.value) || users.contains_key(&name.value) {
                errs.at(
                    &path,
                    name.at,
                    format!("user \"{name}\" is declared more than once"),
                );
            }
            if let Some(secret) = secret(&mut errs, &path, &user.password) {
                users.insert(
                    name.value.clone(),
                    TenantUser {
                        tenant: id.value.clone(),
                        secret,
                        pool_mode: user.pool_mode,
                    },
                );
            }
        }
        tenants.insert(id.value.clone(), Arc::new(tenant));
    }

    let mut admin_users = HashMap::new();
    for (name, user) in &raw.admin.users {
        let path = format!("admin.users.{name}");
        if shared_users.contains_key(&name.value) || users.contains_key(&name.value) {
            errs.at(
                &path,
                name.at,
                format!("\"{name}\" is also a tenant or shared user; admin users need names of their own"),
            );
        }
        if let Some(secret) = secret(&mut errs, &path, &user.password) {
            admin_users.insert(
                name.value.clone(),
                AdminUser {
                    secret,
                    role: user.role,
                },
            );
        }
    }

    let tls = client_tls(&mut errs, &raw.tls);
    check_cluster_capacity(&mut errs, &raw, &clusters, &tiers, &tenants);

    if !errs.0.is_empty() {
        return Err(ConfigErrors(errs.0));
    }
    Ok(Config {
        listen: raw.listen.value,
        tls,
        limits: Limits {
            login_timeout: raw.limits.login_timeout.0,
            max_client_connections: raw.limits.max_client_connections,
            max_auth_failures: raw.limits.max_auth_failures,
            auth_failure_window: raw.limits.auth_failure_window.0,
            max_startup_packet_size: raw.limits.max_startup_packet_size.value,
            max_message_size: raw.limits.max_message_size.value,
            max_prepared_statements: raw.limits.max_prepared_statements,
            max_client_prepared_statements: raw.limits.max_client_prepared_statements,
        },
        tenant_setting,
        separator,
        shared_users,
        require_rls_enforced: raw.require_rls_enforced,
        clusters,
        tiers,
        tenants,
        users,
        metrics: MetricsConfig {
            listen: raw.metrics.listen.map(|l| l.value),
            max_tenant_series: raw.metrics.max_tenant_series,
        },
        admin_users,
        shutdown_timeout: raw.shutdown_timeout.0,
        log_format: raw.log_format,
        watch_config: raw.watch_config,
        workers: raw.workers.as_ref().map_or(0, |w| w.value),
    })
}

fn address(errs: &mut Errors, path: &str, value: &Spanned<String>, example: &str) {
    if value
        .value
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        errs.at(
            path,
            value.referenced,
            format!("must be host:port, e.g. {example}"),
        );
    }
}

/// Startup packets a login can need (user, database, a few settings) and
/// PostgreSQL's own limit on them.
const STARTUP_PACKET_SIZES: std::ops::RangeInclusive<usize> = 512..=10_000;
/// Protocol messages: room for PostgreSQL's errors and notices (and SASL's 8
/// KiB) up to PostgreSQL's own limit, 1 GiB.
const MESSAGE_SIZES: std::ops::RangeInclusive<usize> = 8 << 10..=1 << 30;

fn within(
    errs: &mut Errors,
    path: &str,
    value: &Spanned<usize>,
    range: std::ops::RangeInclusive<usize>,
    why: &str,
) {
    if !range.contains(&value.value) {
        errs.at(
            path,
            value.referenced,
            format!(
                "must be from {} to {} bytes ({why})",
                range.start(),
                range.end()
            ),
        );
    }
}

fn at_least_one(errs: &mut Errors, path: String, value: &Spanned<u32>) {
    if value.value == 0 {
        errs.at(path, value.referenced, "must be at least 1");
    }
}

fn secret(errs: &mut Errors, path: &str, password: &Spanned<String>) -> Option<Secret> {
    Secret::parse(&password.value)
        .map_err(|e| errs.at(format!("{path}.password"), password.referenced, e))
        .ok()
}

/// Expands `${VAR}` references; an unset variable is an error at that field.
fn expand(
    errs: &mut Errors,
    path: &str,
    s: &Spanned<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
    let mut out = String::new();
    let mut rest = s.value.as_str();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            errs.at(path, s.referenced, "unterminated ${...} reference");
            return out;
        };
        let name = &rest[start + 2..start + end];
        match env(name) {
            Some(v) => out.push_str(&v),
            None => errs.at(
                path,
                s.referenced,
                format!("environment variable {name} is not set"),
            ),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

fn cluster(
    errs: &mut Errors,
    name: &str,
    c: &RawCluster,
    env: &dyn Fn(&str) -> Option<String>,
) -> Cluster {
    let path = format!("clusters.{name}");
    at_least_one(
        errs,
        format!("{path}.max_server_connections"),
        &c.max_server_connections,
    );
    if c.database.value.is_empty() {
        errs.at(
            format!("{path}.database"),
            c.database.referenced,
            "must not be empty",
        );
    }
    let host = expand(errs, &format!("{path}.host"), &c.host, env);
    let tls = server_tls(errs, &path, &host, &c.tls);
    let field = |f: &Option<Spanned<String>>| f.as_ref().map(|f| f.value.clone());
    let tls_source = format!(
        "{:?} {:?} {:?}",
        c.tls.mode.as_ref().map(|m| m.value),
        field(&c.tls.ca_file),
        field(&c.tls.server_name)
    );
    Cluster {
        tls_source,
        name: name.to_owned(),
        host,
        tls,
        port: c.port,
        database: c.database.value.clone(),
        user: expand(errs, &format!("{path}.user"), &c.user, env),
        password: c
            .password
            .as_ref()
            .map(|p| expand(errs, &format!("{path}.password"), p, env)),
        connect_timeout: c.connect_timeout.0,
        max_server_connections: c.max_server_connections.value,
        server_idle_timeout: c.server_idle_timeout.0,
    }
}

fn server_tls(errs: &mut Errors, path: &str, host: &str, raw: &RawServerTls) -> ServerTls {
    let Some(mode) = &raw.mode else {
        return ServerTls::disabled();
    };
    // PostgreSQL offers no TLS on its Unix-domain socket (the traffic stays
    // on this host): `prefer` connects plain, as libpq does, and a mode that
    // needs TLS is refused.
    if host.starts_with('/') {
        if !matches!(mode.value, ServerTlsMode::Disable | ServerTlsMode::Prefer) {
            errs.at(
                format!("{path}.tls.mode"),
                mode.referenced,
                "needs TLS, which PostgreSQL does not offer on a Unix-domain socket (host \
                 starts with /): use disable or prefer, or a TCP host",
            );
        }
        return ServerTls::disabled();
    }
    let name = raw.server_name.as_ref().map_or(host, |n| n.value.as_str());
    let ca_file = raw.ca_file.as_ref().map(|f| Path::new(&f.value));
    ServerTls::new(mode.value, name, ca_file).unwrap_or_else(|e| {
        let (field, at) = match (e.field, &raw.ca_file, &raw.server_name) {
            ("ca_file", Some(f), _) => ("ca_file", f.referenced),
            ("server_name", _, Some(n)) => ("server_name", n.referenced),
            _ => ("mode", mode.referenced),
        };
        errs.at(format!("{path}.tls.{field}"), at, e.message);
        ServerTls::disabled()
    })
}

/// The listener's TLS: certificate and key are loaded now, so a bad file is
/// refused with the config.
fn client_tls(errs: &mut Errors, raw: &RawClientTls) -> ClientTls {
    let mode = raw
        .mode
        .as_ref()
        .map_or(ClientTlsMode::Disable, |m| m.value);
    let at = raw
        .mode
        .as_ref()
        .map_or(Location::UNKNOWN, |m| m.referenced);
    match (&raw.cert_file, &raw.key_file) {
        (Some(cert), Some(key)) => {
            ClientTls::load(mode, Path::new(&cert.value), Path::new(&key.value)).unwrap_or_else(
                |e| {
                    let at = if e.field == "key_file" {
                        key.referenced
                    } else {
                        cert.referenced
                    };
                    errs.at(format!("tls.{}", e.field), at, e.message);
                    ClientTls::disabled()
                },
            )
        }
        (None, None) if mode == ClientTlsMode::Disable => ClientTls::disabled(),
        _ => {
            errs.at(
                "tls",
                at,
                "tls needs both cert_file and key_file (PEM files) unless mode is disable",
            );
            ClientTls::disabled()
        }
    }
}

fn tier(errs: &mut Errors, name: &str, t: &RawTier) -> Tier {
    let path = format!("tiers.{name}");
    at_least_one(errs, format!("{path}.pool_size"), &t.pool_size);
    let min_pool_size = t.min_pool_size.as_ref().map_or(0, |m| m.value);
    if let Some(min) = &t.min_pool_size
        && min.value > t.pool_size.value
    {
        errs.at(
            format!("{path}.min_pool_size"),
            min.referenced,
            "must not exceed pool_size",
        );
    }
    let share = t
        .max_tenant_share
        .as_ref()
        .map_or(t.pool_size.value, |s| s.value);
    if let Some(s) = &t.max_tenant_share
        && (s.value == 0 || s.value > t.pool_size.value)
    {
        errs.at(
            format!("{path}.max_tenant_share"),
            s.referenced,
            "must be between 1 and pool_size",
        );
    }
    for key in t.settings.keys() {
        let protected = [
            "search_path",
            "role",
            "session_authorization",
            "statement_timeout",
        ];
        if !is_setting_name(&key.value) || protected.contains(&key.value.as_str()) {
            errs.at(
                format!("{path}.settings.{key}"),
                key.at,
                "not a setting name the proxy may set here (search_path, role and statement_timeout have their own keys)",
            );
        }
    }
    Tier {
        name: name.to_owned(),
        pool_size: t.pool_size.value,
        min_pool_size,
        max_tenant_share: share,
        statement_timeout: t.statement_timeout.map(|d| d.0),
        queue_timeout: t.queue_timeout.0,
        max_client_connections: t.max_client_connections,
        settings: t
            .settings
            .iter()
            .map(|(k, v)| (k.value.clone(), v.clone()))
            .collect(),
        pool_mode: t.pool_mode,
    }
}

fn tenant(
    errs: &mut Errors,
    id: &super::values::Name,
    t: &RawTenant,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    tiers: &BTreeMap<String, Arc<Tier>>,
) -> Tenant {
    let path = format!("tenants.{id}");
    if !is_tenant_id(&id.value) {
        errs.at(&path, id.at, "tenant ids are 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit");
    }
    if !tiers.contains_key(&t.tier.value) {
        errs.at(
            format!("{path}.tier"),
            t.tier.referenced,
            format!("no tier named \"{}\" in tiers", t.tier.value),
        );
    }
    if !clusters.contains_key(&t.cluster.value) {
        errs.at(
            format!("{path}.cluster"),
            t.cluster.referenced,
            format!("no cluster named \"{}\" in clusters", t.cluster.value),
        );
    }
    for (key, value) in [("schema", &t.schema), ("role", &t.role)] {
        if let Some(v) = value
            && !is_identifier(&v.value)
        {
            errs.at(
                format!("{path}.{key}"),
                v.referenced,
                "must be 1-63 characters of a-z, 0-9 and '_', starting with a letter or '_', and not start with pg_",
            );
        }
    }
    if let Some(size) = &t.pool_size {
        at_least_one(errs, format!("{path}.pool_size"), size);
    }
    Tenant {
        id: id.value.clone(),
        tier: t.tier.value.clone(),
        cluster: t.cluster.value.clone(),
        disabled: t.status == Status::Disabled,
        schema: t.schema.as_ref().map(|s| s.value.clone()),
        role: t.role.as_ref().map(|s| s.value.clone()),
        dedicated_pool_size: t.pool_size.as_ref().map(|s| s.value),
        pool_mode: t.pool_mode,
    }
}

/// The tier pools on a cluster (one per tier with a tenant there) and the dedicated
/// pools together must fit in the cluster's `max_server_connections`.
fn check_cluster_capacity(
    errs: &mut Errors,
    raw: &RawConfig,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    tiers: &BTreeMap<String, Arc<Tier>>,
    tenants: &BTreeMap<String, Arc<Tenant>>,
) {
    for (name, cluster) in clusters {
        let mut tiers_used: Vec<&str> = Vec::new();
        let mut dedicated = 0u64;
        for t in tenants.values().filter(|t| &t.cluster == name) {
            match t.dedicated_pool_size {
                Some(size) => dedicated += u64::from(size),
                None if !tiers_used.contains(&t.tier.as_str()) => tiers_used.push(&t.tier),
                None => {}
            }
        }
        let shared: u64 = tiers_used
            .iter()
            .filter_map(|t| tiers.get(*t))
            .map(|t| u64::from(t.pool_size))
            .sum();
        if shared + dedicated > u64::from(cluster.max_server_connections) {
            let loc = raw
                .clusters
                .iter()
                .find(|(k, _)| &k.value == name)
                .map_or(Location::UNKNOWN, |(_, c)| {
                    c.max_server_connections.referenced
                });
            errs.at(
                format!("clusters.{name}.max_server_connections"),
                loc,
                format!(
                    "pools on this cluster can open {} connections (tiers {}: {shared}, dedicated: {dedicated}) but max_server_connections is {}",
                    shared + dedicated,
                    tiers_used.join(", "),
                    cluster.max_server_connections
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const BASE: &str = "listen: 127.0.0.1:6432
clusters:
  main: { host: h, database: d, user: u, max_server_connections: 10 }
tiers:
  free:
    pool_size: 2
tenants:
  acme: { tier: free, cluster: main }
";

    /// Each broken variant of BASE is reported at the field that is wrong.
    #[test]
    fn errors_point_at_the_offending_field() {
        let cases = [
            (
                "    pool_size: 2\n",
                "    pool_size: 0\n",
                "tiers.free.pool_size",
                6,
            ),
            (
                "    pool_size: 2\n",
                "    pool_size: 2\n    min_pool_size: 3\n",
                "tiers.free.min_pool_size",
                7,
            ),
            (
                "    pool_size: 2\n",
                "    pool_size: 2\n    max_tenant_share: 5\n",
                "tiers.free.max_tenant_share",
                7,
            ),
            (
                "    pool_size: 2\n",
                "    pool_size: 2\n    settings: { search_path: x }\n",
                "tiers.free.settings.search_path",
                7,
            ),
            (
                "max_server_connections: 10",
                "max_server_connections: 1",
                "clusters.main.max_server_connections",
                3,
            ),
            (
                "max_server_connections: 10",
                "max_server_connections: 0",
                "clusters.main.max_server_connections",
                3,
            ),
            (
                "cluster: main }",
                "cluster: main, pool_size: 0 }",
                "tenants.acme.pool_size",
                8,
            ),
            (
                "cluster: main }",
                "cluster: main, role: \"Bad\" }",
                "tenants.acme.role",
                8,
            ),
            ("acme: {", "a.b: {", "tenants.a.b", 8),
            (
                "listen: 127.0.0.1:6432\n",
                "listen: 127.0.0.1:6432\nworkers: 10000\n",
                "workers",
                2,
            ),
            (
                "listen: 127.0.0.1:6432\n",
                "listen: 127.0.0.1:6432\nlimits: { max_message_size: 100 }\n",
                "limits.max_message_size",
                2,
            ),
            (
                "listen: 127.0.0.1:6432\n",
                "listen: 127.0.0.1:6432\nlimits:\n  max_message_size: 2147483648\n",
                "limits.max_message_size",
                3,
            ),
            (
                "listen: 127.0.0.1:6432\n",
                "listen: 127.0.0.1:6432\nlimits: { max_startup_packet_size: 20000 }\n",
                "limits.max_startup_packet_size",
                2,
            ),
            (
                "host: h,",
                "host: /run/postgresql, tls: { mode: require },",
                "clusters.main.tls.mode",
                3,
            ),
        ];
        for (from, to, path, line) in cases {
            let text = BASE.replace(from, to);
            let errors = parse(&text, &|_| None).expect_err(to).0;
            assert!(
                errors.iter().any(|e| e.path == path && e.line == line),
                "{to}: expected {path} at line {line}, got {errors:?}"
            );
        }
    }

    /// A value outside an enum (here `pool_mode`) is refused at its line.
    #[test]
    fn unknown_pool_mode_is_refused_with_its_line() {
        let text = BASE.replace(
            "    pool_size: 2\n",
            "    pool_size: 2\n    pool_mode: statement\n",
        );
        let errors = parse(&text, &|_| None).expect_err("pool_mode: statement").0;
        assert!(
            errors
                .iter()
                .any(|e| e.line == 7 && e.message.contains("statement")),
            "{errors:?}"
        );
        let text = BASE.replace("cluster: main }", "cluster: main, pool_mode: session }");
        let config = parse(&text, &|_| None).unwrap();
        assert_eq!(
            config.tenants["acme"].pool_mode,
            Some(crate::config::PoolMode::Session)
        );
        // Per user too: a typo is refused at its line, a valid mode is kept.
        let user = |mode: &str| {
            BASE.replace(
                "  acme: { tier: free, cluster: main }\n",
                &format!(
                    "  acme:\n    tier: free\n    cluster: main\n    users:\n      worker:\n        password: md5{}\n        pool_mode: {mode}\n",
                    "0".repeat(32)
                ),
            )
        };
        let errors = parse(&user("sesion"), &|_| None)
            .expect_err("pool_mode: sesion")
            .0;
        assert!(
            errors
                .iter()
                .any(|e| e.line == 14 && e.message.contains("sesion")),
            "{errors:?}"
        );
        let config = parse(&user("session"), &|_| None).unwrap();
        assert_eq!(
            config.users["worker"].pool_mode,
            Some(crate::config::PoolMode::Session)
        );
    }

    #[test]
    fn base_config_is_valid_and_env_is_expanded() {
        let text = BASE.replace("user: u", "user: \"${WHO}\"");
        let config = parse(&text, &|name| (name == "WHO").then(|| "svc".to_owned())).unwrap();
        assert_eq!(config.clusters["main"].user, "svc");
        assert_eq!(config.tiers["free"].max_tenant_share, 2);
    }
}
