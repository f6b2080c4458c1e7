//! The steady state of a logged-in client: idle until its next message, then one
//! transaction on a leased server, until the server is provably at a clean
//! boundary (see DESIGN "Transaction boundaries"): every `Query`, `Sync` and
//! `FunctionCall` forwarded has had its `ReadyForQuery`, no extended-protocol
//! message is waiting for a `Sync`, the tenant context's own replies are all
//! swallowed, and the last status was `I`. Anything else at the moment the client
//! goes away means the server is closed, never reused.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::cancel::CancelGuard;
use super::io::{SessionIoError, fill_message, send_error};
use super::login::LoggedIn;
use crate::error::ClientError;
use crate::pool::{CheckoutError, Lease};
use crate::protocol::frame::{FrameError, Frames, read_cstr};
use crate::protocol::{TxStatus, build};
use crate::tenant::{context, scan};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("client left in the middle of a transaction")]
    ClientGone,
    #[error("server connection lost: {0}")]
    ServerLost(std::io::Error),
    #[error("tenant context failed on the server: {0}")]
    ContextFailed(String),
    #[error("{0}")]
    Refused(ClientError),
    #[error("client connection: {0}")]
    Client(#[from] SessionIoError),
}

impl From<FrameError> for RelayError {
    fn from(e: FrameError) -> Self {
        RelayError::Refused(ClientError::protocol_violation(e))
    }
}

fn client_io(e: std::io::Error) -> RelayError {
    RelayError::Client(e.into())
}

/// Where one transaction stands, from the messages seen in both directions.
#[derive(Debug)]
struct Tracker {
    /// `ReadyForQuery` replies owed for forwarded `Query`/`Sync`/`FunctionCall`.
    pending: usize,
    /// Extended-protocol messages forwarded since the last `Sync`.
    unsynced: bool,
    status: TxStatus,
    /// `ReadyForQuery` replies of the proxy's own injected queries still to swallow.
    swallow: usize,
    /// A forwarded statement may have changed session state.
    dirty: bool,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            pending: 0,
            unsynced: false,
            status: TxStatus::Idle,
            swallow: 0,
            dirty: false,
        }
    }

    fn at_boundary(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.swallow == 0 && self.status == TxStatus::Idle
    }

    /// Accounts for the complete client messages at the front of `buf`. Returns
    /// how many bytes to forward and whether the client sent `Terminate` there.
    fn client_messages(&mut self, buf: &[u8], max_len: usize) -> Result<(usize, bool), RelayError> {
        let mut frames = Frames::new(buf, max_len);
        for frame in &mut frames {
            let frame = frame?;
            let body = frame.body(buf);
            match frame.tag {
                b'Q' => {
                    self.pending += 1;
                    self.dirty |= scan::may_change_session(body);
                }
                b'P' => {
                    self.unsynced = true;
                    let query = read_cstr(body)
                        .and_then(|(_, rest)| read_cstr(rest))
                        .map(|(q, _)| q);
                    self.dirty |= query.is_none_or(scan::may_change_session);
                }
                b'B' | b'D' | b'E' | b'C' => self.unsynced = true,
                b'S' => {
                    self.pending += 1;
                    self.unsynced = false;
                }
                b'F' => self.pending += 1,
                b'H' | b'd' | b'c' | b'f' => {}
                b'X' => return Ok((frame.start, true)),
                other => {
                    return Err(RelayError::Refused(ClientError::protocol_violation(
                        format!("invalid frontend message type {}", other as char),
                    )));
                }
            }
        }
        Ok((frames.consumed(), false))
    }
}

pub struct Relay<S> {
    client: S,
    /// Bytes read from the client and not yet forwarded.
    cbuf: BytesMut,
    /// Bytes read from the server and not yet forwarded.
    sbuf: BytesMut,
    /// What the proxy composes for one write to a server (context + client bytes).
    out: BytesMut,
    session: LoggedIn,
    cancel: CancelGuard,
    max_message: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Relay<S> {
    pub fn new(
        client: S,
        cbuf: BytesMut,
        session: LoggedIn,
        cancel: CancelGuard,
        max_message: usize,
    ) -> Self {
        Relay {
            client,
            cbuf,
            sbuf: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::new(),
            session,
            cancel,
            max_message,
        }
    }

    /// Serves transactions until the client leaves. Errors meant for the client
    /// are sent to it here, once.
    pub async fn run(mut self) -> Result<(), RelayError> {
        let result = self.serve().await;
        let shown = match &result {
            Err(RelayError::Refused(e)) => Some(e.clone()),
            // A bad length read while idle: as much a protocol violation as mid-transaction.
            Err(RelayError::Client(SessionIoError::Frame(e))) => {
                Some(ClientError::protocol_violation(e))
            }
            Err(RelayError::ServerLost(_)) => {
                Some(ClientError::server_lost(&self.session.pool.cluster.name))
            }
            Err(RelayError::ContextFailed(_)) => {
                Some(ClientError::context_failed(&self.session.pool.cluster.name))
            }
            _ => None,
        };
        if let Some(e) = shown {
            let _ = send_error(&mut self.client, &e).await;
        }
        result
    }

    async fn serve(&mut self) -> Result<(), RelayError> {
        loop {
            let Some((tag, len)) =
                fill_message(&mut self.client, &mut self.cbuf, self.max_message).await?
            else {
                return Ok(());
            };
            match tag {
                b'X' => return Ok(()),
                // Nothing is pending while idle: answer a lone Sync ourselves and
                // drop what PostgreSQL would ignore outside COPY.
                b'S' => {
                    self.cbuf.advance(len);
                    self.ready_for_query().await?;
                    continue;
                }
                b'H' | b'd' | b'c' | b'f' => {
                    self.cbuf.advance(len);
                    continue;
                }
                _ => {}
            }
            let started = Instant::now();
            let Some(checkout) = self.checkout(started).await? else {
                return Ok(());
            };
            match checkout {
                Ok(lease) => self.transaction(lease).await?,
                Err(CheckoutError::QueueTimeout) => {
                    let label = self.session.pool.settings.label.clone();
                    self.refuse_request(ClientError::queue_timeout(
                        &label,
                        started.elapsed().as_millis(),
                    ))
                    .await?;
                }
                Err(CheckoutError::Connect(e)) => {
                    tracing::warn!(cluster = %self.session.pool.cluster.name, error = %e, "server connect failed");
                    let err = ClientError::server_connect_failed(&self.session.pool.cluster.name);
                    self.refuse_request(err).await?;
                }
            }
        }
    }

    /// Waits for a server, reading ahead from the client meanwhile so that a
    /// client that goes away leaves the queue at once (`None`), not at its
    /// queue timeout. Read-ahead stops at [`READ_AHEAD_LIMIT`] bytes.
    async fn checkout(
        &mut self,
        started: Instant,
    ) -> Result<Option<Result<Lease, CheckoutError>>, RelayError> {
        let pool = Arc::clone(&self.session.pool);
        let checkout = pool.checkout(
            &self.session.tenant_key,
            started + self.session.tier.queue_timeout,
        );
        tokio::pin!(checkout);
        loop {
            tokio::select! {
                result = &mut checkout => return Ok(Some(result)),
                read = self.client.read_buf(&mut self.cbuf), if self.cbuf.len() < READ_AHEAD_LIMIT => {
                    if read.map_err(client_io)? == 0 {
                        return Ok(None);
                    }
                }
            }
        }
    }

    async fn ready_for_query(&mut self) -> Result<(), RelayError> {
        let mut buf = BytesMut::new();
        build::ready_for_query(&mut buf, TxStatus::Idle);
        self.client.write_all(&buf).await.map_err(client_io)
    }

    /// Fails the client's next request without a server, as PostgreSQL fails a
    /// statement: the error, then (for extended protocol) everything up to its
    /// `Sync` is dropped, then `ReadyForQuery`. The session stays usable.
    async fn refuse_request(&mut self, err: ClientError) -> Result<(), RelayError> {
        send_error(&mut self.client, &err)
            .await
            .map_err(client_io)?;
        loop {
            let Some((tag, len)) =
                fill_message(&mut self.client, &mut self.cbuf, self.max_message).await?
            else {
                return Ok(());
            };
            self.cbuf.advance(len);
            match tag {
                b'Q' | b'F' | b'S' => break,
                b'X' => return Ok(()),
                _ => {}
            }
        }
        self.ready_for_query().await
    }

    /// One transaction on `lease`: context first (only if the server lacks it),
    /// in the same write as the client's messages; then relay to the boundary.
    async fn transaction(&mut self, mut lease: Lease) -> Result<(), RelayError> {
        let mut t = Tracker::new();
        let server = lease.server();
        let wanted = &self.session.context;
        let reset = server.needs_reset;
        let send_context = reset
            || !server
                .context
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, wanted) || c == wanted);
        let (n, terminated) = t.client_messages(&self.cbuf, self.max_message)?;
        if terminated {
            return Err(RelayError::ClientGone);
        }
        // Until this write is done, the server's recorded context stays as it was;
        // any failure from here on closes the server (the lease is dropped).
        let write = if send_context {
            // Context and the client's first messages go out in one write.
            self.out.clear();
            if reset {
                self.out.extend_from_slice(context::RESET);
                t.swallow += 1;
            }
            self.out.extend_from_slice(&wanted.wire);
            t.swallow += wanted.replies;
            self.out.extend_from_slice(&self.cbuf[..n]);
            server.stream.write_all(&self.out).await
        } else {
            server.stream.write_all(&self.cbuf[..n]).await
        };
        write.map_err(RelayError::ServerLost)?;
        self.cbuf.advance(n);
        if send_context {
            server.context = Some(Arc::clone(wanted));
            server.needs_reset = false;
        }
        self.cancel.slot.attach(server.cancel);
        let result = self.relay(&mut lease, &mut t).await;
        self.cancel.slot.detach();
        result?;
        let server = lease.server();
        server.needs_reset |= t.dirty;
        if self.sbuf.is_empty() {
            lease.release();
        } else {
            // Bytes after the final ReadyForQuery: not a state we can vouch for.
            self.sbuf.clear();
        }
        Ok(())
    }

    /// Forwards both ways until the tracker says the transaction is over.
    async fn relay(&mut self, lease: &mut Lease, t: &mut Tracker) -> Result<(), RelayError> {
        let max = self.max_message;
        while !t.at_boundary() {
            reserve(&mut self.cbuf);
            reserve(&mut self.sbuf);
            let server = &mut lease.server().stream;
            tokio::select! {
                read = self.client.read_buf(&mut self.cbuf) => {
                    if read.map_err(client_io)? == 0 {
                        return Err(RelayError::ClientGone);
                    }
                    let (n, terminated) = t.client_messages(&self.cbuf, max)?;
                    if n > 0 {
                        server.write_all(&self.cbuf[..n]).await.map_err(RelayError::ServerLost)?;
                        self.cbuf.advance(n);
                    }
                    if terminated {
                        return Err(RelayError::ClientGone);
                    }
                }
                read = server.read_buf(&mut self.sbuf) => {
                    if read.map_err(RelayError::ServerLost)? == 0 {
                        return Err(RelayError::ServerLost(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    self.forward_server(t).await?;
                }
            }
        }
        Ok(())
    }

    /// Forwards the complete server messages in `sbuf`, swallowing the replies to
    /// the proxy's own context queries (always the first ones) and tracking
    /// `ReadyForQuery`.
    async fn forward_server(&mut self, t: &mut Tracker) -> Result<(), RelayError> {
        let mut frames = Frames::new(&self.sbuf, self.max_message);
        let mut skip = 0;
        let mut context_error = None;
        for frame in &mut frames {
            let frame = frame.map_err(|e| RelayError::ServerLost(std::io::Error::other(e)))?;
            let body = frame.body(&self.sbuf);
            if t.swallow > 0 {
                match frame.tag {
                    b'Z' => t.swallow -= 1,
                    b'E' => context_error = Some(error_text(body)),
                    _ => {}
                }
                skip = frame.end;
                continue;
            }
            if frame.tag == b'Z' {
                t.pending = t.pending.saturating_sub(1);
                t.status = body
                    .first()
                    .copied()
                    .and_then(TxStatus::from_byte)
                    .ok_or_else(|| {
                        RelayError::ServerLost(std::io::Error::other("malformed ReadyForQuery"))
                    })?;
            }
        }
        if let Some(text) = context_error {
            return Err(RelayError::ContextFailed(text));
        }
        let consumed = frames.consumed();
        if consumed > skip {
            self.client
                .write_all(&self.sbuf[skip..consumed])
                .await
                .map_err(client_io)?;
        }
        self.sbuf.advance(consumed);
        Ok(())
    }
}

/// Most client bytes buffered while waiting for a server.
const READ_AHEAD_LIMIT: usize = 1 << 20;

/// Keeps room for a large read so big results do not trickle in 64-byte steps.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

/// `SQLSTATE: message` of an ErrorResponse body, for the log.
fn error_text(body: &[u8]) -> String {
    let (mut code, mut message) = ("", String::new());
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, next)) = read_cstr(after) else {
            break;
        };
        match field {
            b'C' => code = std::str::from_utf8(value).unwrap_or("?????"),
            b'M' => message = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
        rest = next;
    }
    format!("{code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::encode as msg;

    fn tracker() -> Tracker {
        Tracker::new()
    }

    #[test]
    fn pipelined_queries_and_syncs_are_counted() {
        let mut t = tracker();
        let mut buf = msg(b'Q', b"SELECT 1\0");
        buf.extend(msg(b'P', b"\0SELECT 2\0\0\0"));
        buf.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        buf.extend(msg(b'E', b"\0\0\0\0\0"));
        assert_eq!(t.client_messages(&buf, 1024).unwrap(), (buf.len(), false));
        assert_eq!((t.pending, t.unsynced), (1, true));
        assert!(!t.at_boundary());
        let sync = msg(b'S', b"");
        t.client_messages(&sync, 1024).unwrap();
        assert_eq!((t.pending, t.unsynced, t.dirty), (2, false, false));
    }

    #[test]
    fn terminate_stops_forwarding_and_unknown_tags_are_violations() {
        let mut t = tracker();
        let mut buf = msg(b'Q', b"SELECT 1\0");
        let q_len = buf.len();
        buf.extend(msg(b'X', b""));
        assert_eq!(t.client_messages(&buf, 1024).unwrap(), (q_len, true));
        assert!(matches!(
            tracker().client_messages(&msg(b'?', b""), 1024),
            Err(RelayError::Refused(_))
        ));
    }

    #[test]
    fn session_changing_statements_mark_the_server_for_reset() {
        let mut t = tracker();
        t.client_messages(&msg(b'Q', b"SET work_mem = '1GB'\0"), 1024)
            .unwrap();
        assert!(t.dirty);
        let mut t = tracker();
        t.client_messages(
            &msg(b'P', b"s1\0SELECT set_config('a.b', 'c', false)\0\0\0"),
            1024,
        )
        .unwrap();
        assert!(t.dirty);
    }

    #[test]
    fn error_text_reads_code_and_message() {
        let body = b"SERROR\0C42704\0Mrole \"x\" does not exist\0\0";
        assert_eq!(error_text(body), "42704: role \"x\" does not exist");
    }
}
