//! `proxy.yaml`: typed, validated as a whole, and then immutable.
//!
//! [`load`] reads the file, [`parse`] deserialises it into the raw types and
//! `validate` checks every field and every reference between sections, collecting
//! all errors (each with its YAML path, line and column) rather than stopping at
//! the first. A running proxy holds a `Arc<Config>` snapshot; a session keeps the
//! snapshot it logged in with.

mod raw;
pub mod secret;
mod validate;
pub mod values;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use raw::{AdminRole, LogFormat, PoolMode};
pub use secret::Secret;

use crate::tls::{ClientTls, ServerTls};

/// One problem in the file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted YAML path such as `tenants.acme.tier`; empty for syntax errors.
    pub path: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{} (line {}, column {}): {}",
                self.path, self.line, self.column, self.message
            )
        }
    }
}

/// Every error found in one file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Config {
    pub listen: String,
    /// TLS for clients, with the certificate loaded.
    pub tls: ClientTls,
    pub limits: Limits,
    /// Name of the setting that carries the tenant id, e.g. `app.current_tenant`.
    pub tenant_setting: String,
    /// Separator in `<shared user><sep><tenant>` login names; `None` disables it.
    pub separator: Option<String>,
    pub shared_users: HashMap<String, SharedUser>,
    pub require_rls_enforced: bool,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub tiers: BTreeMap<String, Arc<Tier>>,
    pub tenants: BTreeMap<String, Arc<Tenant>>,
    /// Login users declared under a tenant.
    pub users: HashMap<String, TenantUser>,
    pub metrics: MetricsConfig,
    /// Admin console users by login name.
    pub admin_users: HashMap<String, AdminUser>,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub watch_config: bool,
    /// Worker threads; 0: one per core.
    pub workers: u16,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: Option<String>,
    pub max_tenant_series: usize,
}

#[derive(Debug, Clone)]
pub struct AdminUser {
    pub secret: Secret,
    pub role: AdminRole,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub login_timeout: Duration,
    pub max_client_connections: u32,
    pub max_auth_failures: u32,
    pub auth_failure_window: Duration,
    pub max_startup_packet_size: usize,
    pub max_message_size: usize,
    pub max_prepared_statements: usize,
    pub max_client_prepared_statements: usize,
}

#[derive(Clone)]
pub struct Cluster {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub max_server_connections: u32,
    pub server_idle_timeout: Duration,
    pub tls: ServerTls,
    /// The TLS settings as written (mode, CA file, server name), to tell on
    /// reload whether open servers still match.
    pub tls_source: String,
}

impl Cluster {
    /// The Unix-domain socket of the cluster when `host` is a directory
    /// (starts with `/`, as in libpq): `<host>/.s.PGSQL.<port>`.
    pub fn socket_path(&self) -> Option<std::path::PathBuf> {
        self.host
            .starts_with('/')
            .then(|| Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    /// Whether servers opened for `self` are as good as ones opened for `other`:
    /// same address, database, role, password and TLS. Timeouts and limits may differ.
    pub fn same_servers(&self, other: &Cluster) -> bool {
        (
            &self.host,
            self.port,
            &self.database,
            &self.user,
            &self.password,
            &self.tls_source,
        ) == (
            &other.host,
            other.port,
            &other.database,
            &other.user,
            &other.password,
            &other.tls_source,
        )
    }
}

// The backend password must never reach a log line.
impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("tls", &self.tls.mode)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub max_tenant_share: u32,
    pub statement_timeout: Option<Duration>,
    pub queue_timeout: Duration,
    pub max_client_connections: u32,
    /// Other settings applied on every transaction, validated names.
    pub settings: Vec<(String, String)>,
    pub pool_mode: PoolMode,
}

#[cfg(test)]
impl Tier {
    /// A tier of one server with no limits set, for unit tests.
    pub(crate) fn named(name: &str) -> Tier {
        Tier {
            name: name.into(),
            pool_size: 1,
            min_pool_size: 0,
            max_tenant_share: 1,
            statement_timeout: None,
            queue_timeout: Duration::from_secs(1),
            max_client_connections: 1,
            settings: Vec::new(),
            pool_mode: Default::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub tier: String,
    pub cluster: String,
    pub disabled: bool,
    pub schema: Option<String>,
    pub role: Option<String>,
    /// Size of the tenant's own pool, when it has one.
    pub dedicated_pool_size: Option<u32>,
    /// Overrides the tier's pool mode.
    pub pool_mode: Option<PoolMode>,
}

#[derive(Debug, Clone)]
pub struct TenantUser {
    pub tenant: String,
    pub secret: Secret,
    pub pool_mode: Option<PoolMode>,
}

/// An application user shared by all tenants (`app` in `app.acme`).
#[derive(Debug, Clone)]
pub struct SharedUser {
    pub secret: Secret,
    pub pool_mode: Option<PoolMode>,
}

/// Reads and validates a config file, expanding `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            line: 0,
            column: 0,
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    parse(&text, &|name| std::env::var(name).ok())
}

/// Parses and validates config text; `env` resolves `${VAR}` references.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let raw: raw::RawConfig = serde_saphyr::from_str(text).map_err(|e| {
        let loc = e.location();
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            line: loc.map_or(0, |l| l.line() as u32),
            column: loc.map_or(0, |l| l.column() as u32),
            message: e.to_string(),
        }])
    })?;
    validate::validate(raw, env)
}
