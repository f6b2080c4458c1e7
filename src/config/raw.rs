//! The YAML file as written: serde types with a doc comment on every field.
//! `validate` turns this into the checked runtime [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::values::{Dur, Name};
use crate::tls::{ClientTlsMode, ServerTlsMode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address the proxy accepts clients on, `host:port`.
    pub listen: Spanned<String>,
    /// TLS for client connections.
    #[serde(default)]
    pub tls: RawClientTls,
    /// Protective limits on client connections.
    #[serde(default)]
    pub limits: RawLimits,
    /// The session setting that carries the tenant id (RLS policies read it).
    #[serde(default = "default_context_setting")]
    pub tenant_setting: Spanned<String>,
    /// How a login name is turned into a tenant.
    #[serde(default)]
    pub resolution: RawResolution,
    /// Refuse to start when the role tenant transactions run as would bypass RLS.
    #[serde(default)]
    pub require_rls_enforced: bool,
    /// PostgreSQL servers (or databases) tenants live on, by name.
    pub clusters: BTreeMap<Name, RawCluster>,
    /// Classes of service, by name.
    pub tiers: BTreeMap<Name, RawTier>,
    /// Tenants, by id.
    pub tenants: BTreeMap<Name, RawTenant>,
    /// Prometheus metrics and health checks over HTTP.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Users of the admin console (`psql -d pgtenant`).
    #[serde(default)]
    pub admin: RawAdmin,
    /// After SIGTERM, how long running transactions get before the proxy exits.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// Log lines as `text` or `json` (read at start).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Reload when this file changes on disk, as on SIGHUP.
    #[serde(default)]
    pub watch_config: bool,
    /// Worker threads for client sessions (read at start): 0 for one per core.
    #[serde(default)]
    pub workers: Option<Spanned<u16>>,
}

fn default_shutdown_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// `host:port` of the HTTP listener for `/metrics`, `/healthz` and `/readyz`;
    /// none when absent.
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    /// Tenants with series of their own (the busiest); the rest are summed into
    /// `tenant="other"`.
    #[serde(default = "default_tenant_series")]
    pub max_tenant_series: usize,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: None,
            max_tenant_series: default_tenant_series(),
        }
    }
}

fn default_tenant_series() -> usize {
    50
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Console users by login name.
    #[serde(default)]
    pub users: BTreeMap<Name, RawAdminUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminUser {
    /// A SCRAM-SHA-256 verifier or an md5 hash, never clear text.
    pub password: Spanned<String>,
    /// `admin` (every command) or `stats` (SHOW only).
    pub role: AdminRole,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    Admin,
    Stats,
}

impl AdminRole {
    pub fn name(self) -> &'static str {
        match self {
            AdminRole::Admin => "admin",
            AdminRole::Stats => "stats",
        }
    }
}

fn default_context_setting() -> Spanned<String> {
    unplaced("app.current_tenant".to_owned())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    /// `disable`, `allow` (TLS when the client asks) or `require`.
    #[serde(default)]
    pub mode: Option<Spanned<ClientTlsMode>>,
    /// PEM certificate chain, the server's certificate first.
    #[serde(default)]
    pub cert_file: Option<Spanned<String>>,
    /// PEM private key of that certificate.
    #[serde(default)]
    pub key_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`, as libpq's sslmode.
    #[serde(default)]
    pub mode: Option<Spanned<ServerTlsMode>>,
    /// PEM file of the CA certificates that sign PostgreSQL's certificate.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// Name checked against the certificate under verify-full; defaults to `host`.
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Time a client has to finish the startup and authentication.
    #[serde(default = "default_login_timeout")]
    pub login_timeout: Dur,
    /// Most client connections open at once, all tenants and logins in progress together.
    #[serde(default = "default_max_connections")]
    pub max_client_connections: u32,
    /// Failed logins from one address (an IPv6 /64) within `auth_failure_window`
    /// after which its logins are refused until the window ends; 0 turns it off.
    #[serde(default = "default_auth_failures")]
    pub max_auth_failures: u32,
    /// The window `max_auth_failures` is counted over.
    #[serde(default = "default_auth_window")]
    pub auth_failure_window: Dur,
    /// Largest startup packet accepted, in bytes.
    #[serde(default = "default_startup_packet")]
    pub max_startup_packet_size: Spanned<usize>,
    /// Largest single protocol message accepted from a client or server, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_size: Spanned<usize>,
    /// Named prepared statements each server keeps (least recently used are closed).
    #[serde(default = "default_server_statements")]
    pub max_prepared_statements: usize,
    /// Named prepared statements one client may hold at once.
    #[serde(default = "default_client_statements")]
    pub max_client_prepared_statements: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            login_timeout: default_login_timeout(),
            max_client_connections: default_max_connections(),
            max_auth_failures: default_auth_failures(),
            auth_failure_window: default_auth_window(),
            max_startup_packet_size: default_startup_packet(),
            max_message_size: default_max_message(),
            max_prepared_statements: default_server_statements(),
            max_client_prepared_statements: default_client_statements(),
        }
    }
}

fn default_login_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_auth_failures() -> u32 {
    20
}
fn default_auth_window() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}
fn default_startup_packet() -> Spanned<usize> {
    unplaced(10_000)
}
fn default_max_message() -> Spanned<usize> {
    unplaced(64 << 20)
}
/// A default: it has no place in the file.
fn unplaced<T>(value: T) -> Spanned<T> {
    let loc = serde_saphyr::Location::UNKNOWN;
    Spanned::new(value, loc, loc)
}
fn default_server_statements() -> usize {
    200
}
fn default_client_statements() -> usize {
    1000
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawResolution {
    /// Separator between a shared user and a tenant id in a login name (`app.acme`).
    #[serde(default)]
    pub username_separator: Option<Spanned<String>>,
    /// Application users shared by all tenants; the tenant comes from the suffix.
    #[serde(default)]
    pub shared_users: BTreeMap<Name, RawUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// A SCRAM-SHA-256 verifier or an md5 hash, never clear text.
    pub password: Spanned<String>,
    /// Overrides the tenant's and the tier's `pool_mode` for this user.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Host name or address of PostgreSQL, or (starting with `/`, as in libpq)
    /// the directory of its Unix-domain socket; `${ENV_VAR}` is expanded.
    pub host: Spanned<String>,
    /// TCP port of PostgreSQL (also names its Unix-domain socket file).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database on that server; clients must ask for the same name.
    pub database: Spanned<String>,
    /// Role the proxy logs in as; `${ENV_VAR}` is expanded.
    pub user: Spanned<String>,
    /// Its password (clear text is needed to log in); `${ENV_VAR}` is expanded.
    #[serde(default)]
    pub password: Option<Spanned<String>>,
    /// Time allowed to open and authenticate one server connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Most server connections the proxy may open to this cluster, all pools together.
    pub max_server_connections: Spanned<u32>,
    /// Idle server connections above a pool's minimum are closed after this long.
    #[serde(default = "default_idle_timeout")]
    pub server_idle_timeout: Dur,
    /// TLS on the proxy's connections to this cluster.
    #[serde(default)]
    pub tls: RawServerTls,
}

fn default_port() -> u16 {
    5432
}
fn default_connect_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
fn default_idle_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(600))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// Most server connections of this tier's pool on each cluster.
    pub pool_size: Spanned<u32>,
    /// Server connections kept open even when idle.
    #[serde(default)]
    pub min_pool_size: Option<Spanned<u32>>,
    /// Most servers one tenant may hold at once in this pool; defaults to pool_size.
    #[serde(default)]
    pub max_tenant_share: Option<Spanned<u32>>,
    /// `statement_timeout` set on every transaction; clients cannot raise it.
    #[serde(default)]
    pub statement_timeout: Option<Dur>,
    /// Longest a transaction waits for a server before failing with 53300.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Dur,
    /// Most client connections one tenant of this tier may have open.
    #[serde(default = "default_max_clients")]
    pub max_client_connections: u32,
    /// Other PostgreSQL settings applied to every transaction (`work_mem: 4MB`).
    #[serde(default)]
    pub settings: BTreeMap<Name, String>,
    /// `transaction` (a server per transaction) or `session` (a server for the
    /// client's whole connection, for LISTEN, temp tables, session locks).
    #[serde(default)]
    pub pool_mode: PoolMode,
}

fn default_queue_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
fn default_max_clients() -> u32 {
    100
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    #[default]
    Transaction,
    Session,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Active,
    Disabled,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// The tenant's tier.
    pub tier: Spanned<String>,
    /// The cluster the tenant's data lives on.
    pub cluster: Spanned<String>,
    /// `active` or `disabled` (logins refused).
    #[serde(default)]
    pub status: Status,
    /// Schema of a schema-per-tenant tenant: `search_path` is set to it and `public`.
    #[serde(default)]
    pub schema: Option<Spanned<String>>,
    /// PostgreSQL role the tenant's transactions run as (`SET ROLE`).
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    /// A dedicated pool of this size instead of the tier's shared pool.
    #[serde(default)]
    pub pool_size: Option<Spanned<u32>>,
    /// Overrides the tier's `pool_mode` for this tenant.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// Login users that belong to this tenant.
    #[serde(default)]
    pub users: BTreeMap<Name, RawUser>,
}
