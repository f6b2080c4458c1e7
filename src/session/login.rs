//! Authentication and tenant resolution, ending with the client's greeting:
//! `AuthenticationOk`, `ParameterStatus`…, `BackendKeyData`, `ReadyForQuery`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::io::{SessionIoError, read_message};
use super::settings::{self, Settings};
use super::{ClientSlot, Deps};
use crate::auth::{self, AuthError, scram};
use crate::config::{AdminRole, PoolMode, Secret, Tenant, Tier};
use crate::error::ClientError;
use crate::metrics::TenantStats;
use crate::net::send;
use crate::pool::{Pool, PoolMember};
use crate::protocol::{TxStatus, build, frame::read_cstr, startup::StartupMessage};
use crate::tenant::guard::Policy;
use crate::tenant::{context::TenantContext, resolve};

/// SASL and password messages are tiny; anything bigger is hostile.
const MAX_AUTH_MESSAGE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{0}")]
    Refused(ClientError),
    #[error(transparent)]
    Io(#[from] SessionIoError),
}

impl From<ClientError> for LoginError {
    fn from(e: ClientError) -> Self {
        LoginError::Refused(e)
    }
}

impl From<std::io::Error> for LoginError {
    fn from(e: std::io::Error) -> Self {
        LoginError::Io(e.into())
    }
}

/// A client that logged in: who it is and where its transactions run. It holds
/// the pieces of the config snapshot it logged in with, so a later config swap
/// does not change a session mid-way.
pub struct LoggedIn {
    pub tenant: Arc<Tenant>,
    pub tier: Arc<Tier>,
    pub tenant_key: Arc<str>,
    pub context: Arc<TenantContext>,
    /// The name of the tenant setting (`app.current_tenant`).
    pub tenant_setting: Arc<str>,
    /// `pool_mode: session`: one server for the whole connection.
    pub session_mode: bool,
    /// Held for the session's lifetime: counts toward `max_client_connections`.
    pub _client_slot: ClientSlot,
    /// Its place in its pool: its checkouts, and its count in the gauges.
    pub member: PoolMember,
    pub stats: Arc<TenantStats>,
}

impl LoggedIn {
    /// Where its transactions run.
    pub fn pool(&self) -> &Arc<Pool> {
        self.member.pool()
    }
}

/// Who logged in: a tenant's client, or an operator on the admin console.
pub enum Login {
    /// With the settings from its startup packet, applied on every server it uses.
    Tenant(LoggedIn, Settings),
    Admin(AdminLogin),
}

pub struct AdminLogin {
    pub user: String,
    pub role: AdminRole,
}

/// The virtual database of the admin console.
pub const ADMIN_DATABASE: &str = "pgtenant";

pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    startup: &StartupMessage,
    deps: &Deps,
    cancel_key: (i32, &[u8]),
    end_point: Option<&[u8]>,
    peer: IpAddr,
) -> Result<Login, LoginError> {
    let mut out = BytesMut::new();
    if startup.needs_negotiation() {
        build::negotiate_protocol_version(
            &mut out,
            startup.protocol_minor(),
            &startup.protocol_options,
        );
        send(stream, &out).await?;
        out.clear();
    }
    if startup
        .get("replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(ClientError::unsupported_startup("replication").into());
    }
    let runtime = deps.runtime.load_full();
    let config = &runtime.config;
    let user = startup.user();
    let limits = &config.limits;
    let (max_failures, window) = (limits.max_auth_failures, limits.auth_failure_window);
    if let Err(left) = deps.throttle.check(peer, max_failures, window) {
        tracing::warn!(%peer, user, "login refused unchecked: too many failed logins from this address");
        return Err(ClientError::login_throttled(left).into());
    }
    let admin = config
        .admin_users
        .get(user)
        .filter(|_| startup.database() == ADMIN_DATABASE);
    let credential = resolve::credential(config, user);
    let secret = match admin {
        Some(admin) => Some(&admin.secret),
        None => credential.as_ref().map(|c| c.secret),
    };
    authenticate(stream, buf, user, secret, &deps.mock_seed, end_point)
        .await
        .map_err(|e| {
            tracing::info!(target: "pgtenant::audit", event = "login", outcome = "failed", %peer, user, reason = %e);
            match e {
                LoginError::Refused(_) => {
                    deps.throttle.failed(peer, max_failures, window);
                    LoginError::Refused(ClientError::auth_failed(user))
                }
                other => other,
            }
        })?;
    if let Some(admin) = admin {
        greet(stream, &mut out, ADMIN_PARAMS.iter().copied(), cancel_key).await?;
        tracing::info!(target: "pgtenant::audit", event = "login", outcome = "ok", %peer, user, role = admin.role.name(), "admin console login");
        return Ok(Login::Admin(AdminLogin {
            user: user.to_owned(),
            role: admin.role,
        }));
    }
    let credential = credential.expect("authentication succeeded, so the user exists");

    let tenant = resolve::tenant(config, &credential.tenant_id).inspect_err(|e| {
        tracing::info!(target: "pgtenant::audit", event = "login", outcome = "refused", %peer, user, reason = %e);
    })?;
    let cluster = &config.clusters[&tenant.cluster];
    if startup.database() != cluster.database {
        return Err(ClientError::unknown_database(startup.database()).into());
    }
    let tier = Arc::clone(&config.tiers[&tenant.tier]);
    let tenant_key: Arc<str> = Arc::from(tenant.id.as_str());
    let client_slot = deps
        .clients
        .acquire(&tenant_key, tier.max_client_connections)
        .ok_or_else(|| ClientError::too_many_clients(&tenant.id, tier.max_client_connections))?;
    let pool = Arc::clone(
        runtime
            .pools
            .for_tenant(&tenant)
            .expect("every tenant has a pool"),
    );
    let member = pool.member(&tenant_key);
    let params = server_params(&member, tier.queue_timeout).await?;
    let policy = Policy {
        tenant_setting: &runtime.tenant_setting,
        statement_timeout: tier.statement_timeout,
        session: false,
    };
    let settings = settings::from_startup(&startup.params, &params, &policy)?;

    // The client's own values, as PostgreSQL would report them.
    let shown = params.iter().map(|(name, value)| {
        let value = match settings.get(&name.to_ascii_lowercase()) {
            Some(own) => own.as_str(),
            None if name == "application_name" => "",
            None => value.as_str(),
        };
        (name.as_str(), value)
    });
    greet(stream, &mut out, shown, cancel_key).await?;

    let context = Arc::clone(&runtime.contexts[&tenant.id]);
    let logged_in = LoggedIn {
        member,
        stats: deps.metrics.tenants.stats(&tenant.id),
        tenant_setting: Arc::clone(&runtime.tenant_setting),
        session_mode: credential
            .pool_mode
            .or(tenant.pool_mode)
            .unwrap_or(tier.pool_mode)
            == PoolMode::Session,
        tenant_key,
        context,
        _client_slot: client_slot,
        tenant,
        tier,
    };
    Ok(Login::Tenant(logged_in, settings))
}

/// The end of a successful login, in one write: `AuthenticationOk`, the
/// `ParameterStatus` messages, `BackendKeyData` and `ReadyForQuery`.
async fn greet<'a, S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
    params: impl Iterator<Item = (&'a str, &'a str)>,
    cancel_key: (i32, &[u8]),
) -> std::io::Result<()> {
    build::authentication_ok(out);
    for (name, value) in params {
        build::parameter_status(out, name, value);
    }
    build::backend_key_data(out, cancel_key.0, cancel_key.1);
    build::ready_for_query(out, TxStatus::Idle);
    send(stream, out).await
}

/// What the admin console tells clients about itself at login.
const ADMIN_PARAMS: &[(&str, &str)] = &[
    (
        "server_version",
        concat!("15.0 (pgtenant ", env!("CARGO_PKG_VERSION"), ")"),
    ),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("application_name", ""),
];

/// The parameters shown at login come from a real server of the tenant's pool;
/// the first login on a pool opens one to learn them.
async fn server_params(
    member: &PoolMember,
    wait: std::time::Duration,
) -> Result<Arc<Vec<(String, String)>>, ClientError> {
    let pool = member.pool();
    if let Some(params) = pool.server_params() {
        return Ok(params);
    }
    match member.checkout(Instant::now() + wait).await {
        Ok(mut lease) => {
            let params = Arc::clone(&lease.server().params);
            lease.release();
            Ok(params)
        }
        Err(e) => {
            let cluster = pool.cluster();
            tracing::warn!(cluster = %cluster.name, error = %e, "no server for a login");
            Err(ClientError::server_connect_failed(&cluster.name).fatal())
        }
    }
}

/// Runs the exchange for the user's secret kind; unknown users get a mock SCRAM
/// exchange that always fails, so they look like a wrong password.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    secret: Option<&Secret>,
    mock_seed: &[u8; 32],
    end_point: Option<&[u8]>,
) -> Result<(), LoginError> {
    let keys = match secret {
        Some(Secret::Md5 { hash }) => return md5(stream, buf, hash).await,
        Some(Secret::Scram {
            iterations,
            salt,
            stored_key,
            server_key,
        }) => scram::ScramKeys {
            iterations: *iterations,
            salt: salt.clone(),
            stored_key: *stored_key,
            server_key: *server_key,
        },
        None => scram::ScramKeys::mock(mock_seed, user),
    };
    let mut out = BytesMut::new();
    let mechanisms: &[&str] = match end_point {
        Some(_) => &[scram::MECHANISM_PLUS, scram::MECHANISM],
        None => &[scram::MECHANISM],
    };
    build::authentication_sasl(&mut out, mechanisms);
    send(stream, &out).await?;

    let mut initial = password_message(stream, buf).await?;
    let (mechanism, rest) =
        read_cstr(&initial).ok_or(refused(AuthError::Malformed("SASL mechanism")))?;
    let offered = match end_point {
        Some(end_point) if mechanisms.iter().any(|m| m.as_bytes() == mechanism) => {
            scram::Binding::Tls {
                plus: mechanism == scram::MECHANISM_PLUS.as_bytes(),
                end_point,
            }
        }
        None if mechanism == scram::MECHANISM.as_bytes() => scram::Binding::Unavailable,
        _ => return Err(refused(AuthError::Malformed("SASL mechanism"))),
    };
    // The initial response's length word must match what follows it.
    if rest
        .get(..4)
        .map(|l| i32::from_be_bytes(l.try_into().expect("4 bytes")))
        != Some(rest.len() as i32 - 4)
    {
        return Err(refused(AuthError::Malformed(
            "SASL initial response length",
        )));
    }
    initial.advance(mechanism.len() + 1 + 4);
    let (exchange, server_first) = scram::server_first(keys, &initial, offered).map_err(refused)?;
    out.clear();
    build::authentication_sasl_continue(&mut out, server_first.as_bytes());
    send(stream, &out).await?;

    let client_final = password_message(stream, buf).await?;
    let server_final = exchange.finish(&client_final).map_err(refused)?;
    out.clear();
    build::authentication_sasl_final(&mut out, server_final.as_bytes());
    send(stream, &out).await?;
    Ok(())
}

async fn md5<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    hash: &[u8; 32],
) -> Result<(), LoginError> {
    let salt: [u8; 4] = rand::random();
    let mut out = BytesMut::new();
    build::authentication_md5(&mut out, salt);
    send(stream, &out).await?;
    let body = password_message(stream, buf).await?;
    auth::md5::verify(hash, salt, &body).map_err(refused)
}

async fn password_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, LoginError> {
    // An oversized or malformed message fails the login like a wrong password
    // (and counts toward the address's failures), rather than a silent close.
    let (tag, body) = match read_message(stream, buf, MAX_AUTH_MESSAGE).await {
        Ok(message) => message,
        Err(SessionIoError::Frame(e)) => return Err(refused(e)),
        Err(e) => return Err(e.into()),
    };
    if tag != b'p' {
        return Err(refused(AuthError::Malformed("expected a password message")));
    }
    Ok(body)
}

/// The specific reason is only logged; the caller turns it into 28P01.
fn refused(e: impl std::fmt::Display) -> LoginError {
    LoginError::Refused(ClientError::protocol_violation(e))
}
