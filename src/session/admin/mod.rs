//! The admin console: `psql -d pgtenant` as a user under `admin.users`. It
//! speaks the simple query protocol and answers each command itself; no server
//! is involved. Stats users may only `SHOW`. Every command is in the audit log.

mod command;
mod show;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Deps;
use super::control::Target;
use super::io::read_message;
use super::login::AdminLogin;
use crate::config::AdminRole;
use crate::error::ClientError;
use crate::net::send;
use crate::protocol::{TxStatus, build};
use command::Command;

/// Longest query text the console reads.
const MAX_QUERY: usize = 64 * 1024;

pub struct Console<S> {
    stream: S,
    buf: BytesMut,
    out: BytesMut,
    login: AdminLogin,
    deps: Arc<Deps>,
    peer: SocketAddr,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Console<S> {
    pub fn new(
        stream: S,
        buf: BytesMut,
        login: AdminLogin,
        deps: Arc<Deps>,
        peer: SocketAddr,
    ) -> Self {
        Console {
            stream,
            buf,
            out: BytesMut::new(),
            login,
            deps,
            peer,
        }
    }

    /// Serves commands until the client leaves.
    pub async fn run(mut self) {
        // After a refused extended-protocol message, the rest up to `Sync` is ignored.
        let mut skipping = false;
        loop {
            let Ok((tag, body)) = read_message(&mut self.stream, &mut self.buf, MAX_QUERY).await
            else {
                return;
            };
            self.out.clear();
            match tag {
                b'Q' => {
                    let text = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(&body))
                        .into_owned();
                    self.query(&text).await;
                    build::ready_for_query(&mut self.out, TxStatus::Idle);
                }
                b'X' => return,
                b'S' => {
                    skipping = false;
                    build::ready_for_query(&mut self.out, TxStatus::Idle);
                }
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F' => {
                    if !skipping {
                        ClientError::admin_simple_only().encode(&mut self.out);
                        skipping = true;
                    }
                }
                _ => {
                    ClientError::protocol_violation("unexpected message").encode(&mut self.out);
                    let _ = send(&mut self.stream, &self.out).await;
                    return;
                }
            }
            if !self.out.is_empty() && send(&mut self.stream, &self.out).await.is_err() {
                return;
            }
        }
    }

    /// Runs each `;`-separated statement; the first error ends the query.
    async fn query(&mut self, text: &str) {
        let statements: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if statements.is_empty() {
            build::empty_query_response(&mut self.out);
            return;
        }
        for statement in statements {
            if let Err(e) = self.statement(statement).await {
                e.encode(&mut self.out);
                return;
            }
        }
    }

    async fn statement(&mut self, text: &str) -> Result<(), ClientError> {
        let command = Command::parse(text).ok_or_else(|| ClientError::admin_syntax(text))?;
        if command.writes() && self.login.role != AdminRole::Admin {
            tracing::warn!(target: "pgtenant::audit", event = "admin", outcome = "denied", user = %self.login.user, peer = %self.peer, command = text);
            return Err(ClientError::admin_denied(&self.login.user));
        }
        if command.writes() {
            tracing::info!(target: "pgtenant::audit", event = "admin", user = %self.login.user, peer = %self.peer, command = text);
        }
        let control = Arc::clone(&self.deps.control);
        let tag = match command {
            Command::Show(what) => {
                let table = show::table(&self.deps, what);
                build::row_description(&mut self.out, table.columns);
                for row in &table.rows {
                    build::data_row(&mut self.out, row.iter().map(|v| v.as_deref()));
                }
                format!("SHOW {}", table.rows.len())
            }
            Command::Reload => {
                self.deps
                    .reload("admin RELOAD")
                    .await
                    .map_err(|e| ClientError::reload_failed(&e))?;
                "RELOAD".to_owned()
            }
            Command::Pause(target) => {
                self.known(&target)?;
                control.pause(&target);
                build::notice(
                    &mut self.out,
                    &format!(
                        "paused {}: new transactions wait until RESUME",
                        describe(&target)
                    ),
                );
                "PAUSE".to_owned()
            }
            Command::Resume(target) => {
                self.known(&target)?;
                control.resume(&target);
                "RESUME".to_owned()
            }
            Command::Drain(tenant) => {
                let target = Target::Tenant(tenant.clone());
                self.known(&target)?;
                control.pause(&target);
                let left = self.drain(&tenant).await;
                let text = match left {
                    0 => format!(
                        "tenant \"{tenant}\" drained: no transaction running; new ones wait until RESUME"
                    ),
                    n => format!(
                        "tenant \"{tenant}\": {n} transaction(s) still running after shutdown_timeout; new ones wait until RESUME"
                    ),
                };
                build::notice(&mut self.out, &text);
                "DRAIN".to_owned()
            }
            Command::Kill(tenant) => {
                self.known(&Target::Tenant(tenant.clone()))?;
                let n = control.kill(&tenant);
                build::notice(
                    &mut self.out,
                    &format!("closed {n} connection(s) of tenant \"{tenant}\""),
                );
                "KILL".to_owned()
            }
        };
        build::command_complete(&mut self.out, &tag);
        Ok(())
    }

    /// Refuses a tier or tenant the running config does not have.
    fn known(&self, target: &Target) -> Result<(), ClientError> {
        let runtime = self.deps.runtime.load();
        match target {
            Target::All => Ok(()),
            Target::Tier(t) if !runtime.config.tiers.contains_key(t) => {
                Err(ClientError::admin_no_such("tier", t))
            }
            Target::Tenant(t) if !runtime.config.tenants.contains_key(t) => {
                Err(ClientError::admin_no_such("tenant", t))
            }
            _ => Ok(()),
        }
    }

    /// Waits (up to `shutdown_timeout`) until no transaction of `tenant` runs;
    /// returns how many still do.
    async fn drain(&self, tenant: &str) -> usize {
        let limit = self.deps.runtime.load().config.shutdown_timeout;
        let until = Instant::now() + limit;
        loop {
            let busy = self.deps.control.busy(tenant);
            if busy == 0 || Instant::now() >= until {
                return busy;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn describe(target: &Target) -> String {
    match target {
        Target::All => "all tenants".to_owned(),
        Target::Tier(t) => format!("tier \"{t}\""),
        Target::Tenant(t) => format!("tenant \"{t}\""),
    }
}
