//! Every error a client can be shown, built in one place with its SQLSTATE.
//!
//! Anything that reaches a client goes through [`ClientError`]: its text is written
//! for the client and never carries secrets, server internals or another tenant's
//! name. Internal failures are logged and mapped to one of these constructors.
//! SQLSTATEs: <https://www.postgresql.org/docs/current/errcodes-appendix.html>.

use bytes::BytesMut;

use crate::protocol::build::{self, Fields};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The connection ends after this message.
    Fatal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (SQLSTATE {code})")]
pub struct ClientError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl ClientError {
    fn new(severity: Severity, code: &'static str, message: String) -> ClientError {
        ClientError {
            severity,
            code,
            message,
            hint: None,
        }
    }

    fn with_hint(mut self, hint: impl Into<String>) -> ClientError {
        self.hint = Some(hint.into());
        self
    }

    /// Wrong password and unknown user look the same, as in PostgreSQL.
    pub fn auth_failed(user: &str) -> ClientError {
        Self::new(
            Severity::Fatal,
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
    }

    pub fn unknown_tenant(tenant: &str) -> ClientError {
        Self::new(
            Severity::Fatal,
            "28000",
            format!("tenant \"{tenant}\" does not exist"),
        )
        .with_hint(
            "Log in as a user of an existing tenant, or as <shared user><separator><tenant id>.",
        )
    }

    pub fn tenant_disabled(tenant: &str) -> ClientError {
        Self::new(
            Severity::Fatal,
            "28000",
            format!("tenant \"{tenant}\" is disabled"),
        )
        .with_hint("The tenant's status in the proxy configuration is \"disabled\".")
    }

    pub fn unknown_database(database: &str) -> ClientError {
        Self::new(
            Severity::Fatal,
            "3D000",
            format!("database \"{database}\" does not exist"),
        )
        .with_hint("Connect to the database your tenant is configured for.")
    }

    pub fn too_many_clients(tenant: &str, limit: u32) -> ClientError {
        Self::new(
            Severity::Fatal,
            "53300",
            format!("too many client connections for tenant \"{tenant}\" (limit {limit})"),
        )
        .with_hint("Close idle connections or raise the tier's max_client_connections.")
    }

    /// `max_client_connections` of the whole proxy.
    pub fn proxy_full(limit: u32) -> ClientError {
        Self::new(
            Severity::Fatal,
            "53300",
            format!("too many client connections to pgtenant (limit {limit})"),
        )
        .with_hint("Retry later; the proxy's limits.max_client_connections is reached.")
    }

    /// Logins from an address that failed too often are refused unchecked for a while.
    pub fn login_throttled(retry_after: std::time::Duration) -> ClientError {
        Self::new(
            Severity::Fatal,
            "28000",
            format!(
                "too many failed logins from this address; try again in {} s",
                retry_after.as_secs().max(1)
            ),
        )
    }

    pub fn tls_required() -> ClientError {
        Self::new(
            Severity::Fatal,
            "28000",
            "pgtenant accepts only TLS connections".to_owned(),
        )
        .with_hint("Connect with sslmode=require (or verify-ca / verify-full).")
    }

    pub fn queue_timeout(tier: &str, waited_ms: u128) -> ClientError {
        Self::new(
            Severity::Error,
            "53300",
            format!("no server connection available in pool of tier \"{tier}\" after {waited_ms} ms"),
        )
        .with_hint("The pool is busy: retry, shorten transactions, or raise the tier's pool_size or queue_timeout.")
    }

    pub fn server_connect_failed(cluster: &str) -> ClientError {
        Self::new(
            Severity::Error,
            "08001",
            format!("could not connect to PostgreSQL cluster \"{cluster}\""),
        )
        .with_hint(
            "The proxy will retry; check that the cluster is up and its credentials are right.",
        )
    }

    pub fn server_lost(cluster: &str) -> ClientError {
        Self::new(
            Severity::Fatal,
            "08006",
            format!(
                "lost the connection to PostgreSQL cluster \"{cluster}\" during the transaction"
            ),
        )
    }

    pub fn context_failed(cluster: &str) -> ClientError {
        Self::new(
            Severity::Fatal,
            "08006",
            format!("could not set the tenant context on cluster \"{cluster}\""),
        )
        .with_hint("Reconnect and retry. The proxy log has the server's error.")
    }

    pub fn protocol_violation(what: impl std::fmt::Display) -> ClientError {
        Self::new(
            Severity::Fatal,
            "08P01",
            format!("protocol violation: {what}"),
        )
    }

    pub fn unsupported_startup(what: &str) -> ClientError {
        Self::new(
            Severity::Fatal,
            "0A000",
            format!("{what} is not supported by this proxy"),
        )
    }

    pub fn shutting_down() -> ClientError {
        Self::new(
            Severity::Fatal,
            "57P01",
            "the proxy is shutting down".to_owned(),
        )
    }

    /// A reload removed or disabled the tenant; sent at its next transaction boundary.
    pub fn tenant_closed(tenant: &str, why: &str) -> ClientError {
        Self::new(
            Severity::Fatal,
            "57P01",
            format!("terminating connection: tenant \"{tenant}\" {why}"),
        )
        .with_hint("The proxy configuration changed; ask its operators whether the tenant moved.")
    }

    /// `KILL` from the admin console, in PostgreSQL's words.
    pub fn killed_by_admin() -> ClientError {
        Self::new(
            Severity::Fatal,
            "57P01",
            "terminating connection due to administrator command".to_owned(),
        )
    }

    pub fn admin_denied(user: &str) -> ClientError {
        Self::new(
            Severity::Error,
            "42501",
            format!("permission denied: \"{user}\" is a stats user and may only run SHOW"),
        )
    }

    pub fn admin_syntax(text: &str) -> ClientError {
        Self::new(
            Severity::Error,
            "42601",
            format!("unknown admin command: {text}"),
        )
        .with_hint("Try SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS, SHOW TENANTS, SHOW TIERS, SHOW CONFIG, SHOW VERSION, RELOAD, PAUSE, RESUME, DRAIN <tenant> or KILL <tenant>.")
    }

    pub fn admin_no_such(kind: &str, name: &str) -> ClientError {
        Self::new(
            Severity::Error,
            "42704",
            format!("{kind} \"{name}\" does not exist"),
        )
    }

    pub fn admin_simple_only() -> ClientError {
        Self::new(
            Severity::Error,
            "0A000",
            "the admin console takes simple queries only".to_owned(),
        )
        .with_hint("Use psql, or a driver's simple-query call.")
    }

    /// `RELOAD` found errors; the running configuration stays.
    pub fn reload_failed(errors: &str) -> ClientError {
        Self::new(
            Severity::Error,
            "F0000",
            format!("configuration not reloaded, the running one stays:\n{errors}"),
        )
    }

    /// As PostgreSQL words it; `name` is empty for the unnamed statement.
    pub fn statement_missing(name: &[u8]) -> ClientError {
        let message = if name.is_empty() {
            "unnamed prepared statement does not exist".to_owned()
        } else {
            format!(
                "prepared statement \"{}\" does not exist",
                String::from_utf8_lossy(name)
            )
        };
        Self::new(Severity::Error, "26000", message)
    }

    pub fn statement_exists(name: &[u8]) -> ClientError {
        Self::new(
            Severity::Error,
            "42P05",
            format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(name)
            ),
        )
    }

    pub fn too_many_statements(limit: usize) -> ClientError {
        Self::new(
            Severity::Error,
            "53400",
            format!("too many prepared statements: this connection already has {limit}"),
        )
        .with_hint("Close statements that are no longer needed, or raise limits.max_client_prepared_statements.")
    }

    /// A feature that needs a session of its own, refused in transaction pooling.
    pub fn session_only(what: &str, hint: &str) -> ClientError {
        Self::new(
            Severity::Error,
            "0A000",
            format!("{what} do not survive transaction pooling"),
        )
        .with_hint(hint)
    }

    /// As PostgreSQL says it; also when earlier pipelined results are pending.
    pub fn discard_in_transaction() -> ClientError {
        Self::new(
            Severity::Error,
            "25001",
            "DISCARD ALL cannot run inside a transaction block".to_owned(),
        )
        .with_hint("Send DISCARD ALL on its own, outside a transaction, after earlier results have arrived.")
    }

    pub fn must_be_alone() -> ClientError {
        Self::new(
            Severity::Error,
            "0A000",
            "DEALLOCATE and DISCARD ALL must be sent alone, as a simple query".to_owned(),
        )
        .with_hint(
            "The proxy answers them itself for your connection; send them in a query of their own.",
        )
    }

    pub fn timeout_above_cap(cap: std::time::Duration) -> ClientError {
        Self::new(
            Severity::Error,
            "42501",
            format!(
                "statement_timeout cannot be raised above this tier's cap of {} ms",
                cap.as_millis()
            ),
        )
        .with_hint("Set a lower, non-zero statement_timeout, or ask for a tier with a higher cap.")
    }

    /// The escape guard: a statement would change a setting the proxy owns.
    pub fn protected_setting(name: &str) -> ClientError {
        Self::new(
            Severity::Error,
            "42501",
            format!("permission denied to change \"{}\": pgtenant sets it for your tenant", name.to_ascii_lowercase()),
        )
        .with_hint("The tenant setting, search_path and role come from the credentials you logged in with; log in as the tenant you need.")
    }

    /// The escape guard: a statement would wipe the tenant context, or change
    /// settings in a way the proxy cannot check.
    pub fn context_wipe(what: &str) -> ClientError {
        Self::new(
            Severity::Error,
            "42501",
            format!("permission denied for {what}: it could change the tenant context pgtenant sets"),
        )
        .with_hint("Set or reset other settings by name (SET x = ...; RESET x), or send DISCARD ALL on its own.")
    }

    /// The escape guard: code it cannot read through (a `DO` block or a
    /// function body) that might change the tenant context.
    pub fn opaque_code(what: &str) -> ClientError {
        Self::new(
            Severity::Error,
            "42501",
            format!("permission denied for a DO block or function that uses {what}: pgtenant cannot check what it would change"),
        )
        .with_hint("Create such functions as the database owner on a direct connection, and call them through pgtenant.")
    }

    /// A setting in the startup packet (a parameter or `options=-c …`) that the
    /// proxy cannot accept.
    pub fn bad_startup_setting(name: &str, why: &str) -> ClientError {
        Self::new(
            Severity::Fatal,
            "22023",
            format!("startup setting \"{name}\" {why}"),
        )
    }

    /// The same error, ending the connection (for failures during login).
    pub fn fatal(mut self) -> ClientError {
        self.severity = Severity::Fatal;
        self
    }

    pub fn is_fatal(&self) -> bool {
        self.severity == Severity::Fatal
    }

    /// Appends this error as an `ErrorResponse`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let severity = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        build::error_response(
            buf,
            &Fields {
                severity,
                code: self.code,
                message: &self.message,
                detail: None,
                hint: self.hint.as_deref(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_carry_their_sqlstate_and_severity() {
        let table = [
            (ClientError::auth_failed("u"), "28P01", true),
            (ClientError::unknown_tenant("t"), "28000", true),
            (ClientError::tenant_disabled("t"), "28000", true),
            (ClientError::unknown_database("d"), "3D000", true),
            (ClientError::too_many_clients("t", 1), "53300", true),
            (ClientError::queue_timeout("free", 5), "53300", false),
            (ClientError::server_connect_failed("main"), "08001", false),
            (ClientError::server_lost("main"), "08006", true),
            (ClientError::context_failed("main"), "08006", true),
            (ClientError::protocol_violation("x"), "08P01", true),
            (
                ClientError::unsupported_startup("replication"),
                "0A000",
                true,
            ),
            (ClientError::shutting_down(), "57P01", true),
            (
                ClientError::tenant_closed("a", "was removed"),
                "57P01",
                true,
            ),
            (ClientError::killed_by_admin(), "57P01", true),
            (ClientError::admin_denied("u"), "42501", false),
            (ClientError::admin_syntax("x"), "42601", false),
            (ClientError::admin_no_such("tenant", "x"), "42704", false),
            (ClientError::admin_simple_only(), "0A000", false),
            (ClientError::reload_failed("e"), "F0000", false),
            (ClientError::proxy_full(1), "53300", true),
            (
                ClientError::login_throttled(std::time::Duration::ZERO),
                "28000",
                true,
            ),
            (ClientError::tls_required(), "28000", true),
        ];
        for (err, code, fatal) in table {
            assert_eq!((err.code, err.is_fatal()), (code, fatal), "{err}");
        }
    }

    #[test]
    fn wrong_password_and_unknown_user_read_the_same() {
        assert_eq!(
            ClientError::auth_failed("x").message,
            "password authentication failed for user \"x\""
        );
    }

    #[test]
    fn queue_timeout_names_the_tier() {
        assert!(
            ClientError::queue_timeout("free", 100)
                .message
                .contains("\"free\"")
        );
    }
}
