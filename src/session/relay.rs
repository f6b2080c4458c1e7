//! The steady state of a logged-in client: idle until its next message, then one
//! transaction on a leased server, until the server is provably at a clean
//! boundary (see DESIGN "Transaction boundaries"): every `Query`, `Sync` and
//! `FunctionCall` forwarded has had its `ReadyForQuery`, no extended-protocol
//! message is waiting for a `Sync`, the tenant context's own replies are all
//! swallowed, and the last status was `I`. Anything else at the moment the client
//! goes away means the server is closed, never reused.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::Deps;
use super::cancel::CancelGuard;
use super::control::{ClientState, Registered};
use super::io::{
    ClientStream, SessionIoError, close_with_error, fill_message, send_error, whole_message,
};
use super::login::LoggedIn;
use super::settings::{self, Settings};
use super::spares::{self, Work};
use super::tracker::{Action, Statements, error_code};
use crate::config::Limits;
use crate::error::ClientError;
use crate::net::send_now;
use crate::pool::{CheckoutError, Lease, Pending};
use crate::prepared::ClientStatements;
use crate::protocol::frame::{FrameError, Frames};
use crate::protocol::{TxStatus, build};
use crate::server::Server;
use crate::tenant::context;
use crate::tenant::guard::Policy;
use crate::workers;

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

/// Which side of a transaction's relay had bytes, and how many.
enum Read {
    Server(std::io::Result<usize>),
    Client(std::io::Result<usize>),
}

fn client_io(e: std::io::Error) -> RelayError {
    RelayError::Client(e.into())
}

/// The client's and the server's statements, borrowed for one batch (a macro
/// so the borrows stay field by field, leaving the buffers free).
macro_rules! statements {
    ($relay:ident, $server:ident) => {
        Statements {
            client: &mut $relay.statements,
            server: &mut $server.statements,
            namespace: &$relay.session.context.namespace,
            server_limit: $relay.server_statements as usize,
            client_limit: $relay.client_statements as usize,
            policy: Policy {
                tenant_setting: &$relay.session.tenant_setting,
                statement_timeout: $relay.session.tier.statement_timeout,
                session: $relay.session.session_mode,
            },
        }
    };
}
pub struct Relay<S> {
    client: S,
    /// Bytes read from the client and not yet forwarded.
    cbuf: BytesMut,
    session: LoggedIn,
    cancel: CancelGuard,
    statements: ClientStatements,
    /// The client's session settings (see [`settings`]).
    settings: Settings,
    /// Those from its startup packet, which `DISCARD ALL` goes back to.
    startup_settings: Settings,
    /// Custom settings the client has set, read back by name (boxed: few
    /// clients set any, and `None` is 8 bytes where a `Vec` is 24).
    #[allow(clippy::box_collection)]
    custom: Option<Box<Vec<String>>>,
    /// In `pool_mode: session`, the server held between transactions (boxed:
    /// transaction mode, the common case, pays one pointer for it).
    held: Option<Box<Lease>>,
    // The limits as `u32` (saturated), and `custom` boxed: with them the
    // relay's state fits jemalloc's 384-byte size class, not the 448 one.
    max_message: u32,
    server_statements: u32,
    client_statements: u32,
    deps: Arc<Deps>,
    /// This client in the admin console's list.
    registered: Registered,
    /// The config generation `session` was resolved in.
    generation: u32,
}

impl<S: ClientStream> Relay<S> {
    #[allow(clippy::too_many_arguments)] // the parts of one login, put together once
    pub fn new(
        client: S,
        cbuf: BytesMut,
        session: LoggedIn,
        settings: Settings,
        cancel: CancelGuard,
        limits: &Limits,
        deps: &Arc<Deps>,
        registered: Registered,
    ) -> Self {
        Relay {
            startup_settings: settings.clone(),
            settings,
            custom: None,
            held: None,
            client,
            cbuf,
            session,
            cancel,
            statements: ClientStatements::default(),
            max_message: saturate(limits.max_message_size),
            server_statements: saturate(limits.max_prepared_statements),
            client_statements: saturate(limits.max_client_prepared_statements),
            generation: deps.control.generation(),
            deps: Arc::clone(deps),
            registered,
        }
    }

    /// Serves transactions until the client leaves. Errors meant for the client
    /// are sent to it here, once, and logged.
    pub async fn run(mut self: Box<Self>) {
        let result = self.serve().await;
        // Boxed: the end is a rare state, and a session's future is as big
        // as its biggest state (most sessions sit idle in the smallest).
        if let Err(e) = boxed(|| self.end(result)).await {
            let peer = self.registered.entry.addr;
            tracing::info!(%peer, error = %e, "client session ended with an error");
        }
    }

    /// After the last transaction: puts a held server back and tells the
    /// client why it is closed, if it is an error.
    async fn end(&mut self, result: Result<(), RelayError>) -> Result<(), RelayError> {
        if let Some(lease) = self.held.take()
            && result.is_ok()
        {
            let mut lease = *lease;
            // The client left between transactions: its session state goes
            // with DISCARD ALL before anyone else uses the server.
            lease.server().needs_reset = true;
            lease.release();
        }
        let shown = match &result {
            Err(RelayError::Refused(e)) => Some(e.clone()),
            // A bad length read while idle: as much a protocol violation as mid-transaction.
            Err(RelayError::Client(SessionIoError::Frame(e))) => {
                Some(ClientError::protocol_violation(e))
            }
            Err(RelayError::ServerLost(_)) => Some(ClientError::server_lost(
                &self.session.pool().cluster().name,
            )),
            Err(RelayError::ContextFailed(_)) => Some(ClientError::context_failed(
                &self.session.pool().cluster().name,
            )),
            _ => None,
        };
        if let Some(e) = shown {
            self.count_error(e.code.as_bytes());
            close_with_error(&mut self.client, &e).await;
        }
        result
    }

    /// The next whole client message, waiting while idle; closes the session
    /// (as an error for the client) when operators ended it meanwhile.
    /// Cancel-safe: bytes read stay in `cbuf`.
    async fn next_message(&mut self) -> Result<Option<(u8, usize)>, RelayError> {
        loop {
            self.check_standing()?;
            if self.cbuf.is_empty() {
                // Idle: wait for the client without holding any buffer.
                spares::give(&mut self.cbuf);
                let wake = &self.registered.entry.wake;
                let client = &mut self.client;
                let ready = poll_fn(|cx| match client.poll_read_ready(cx) {
                    Poll::Ready(ready) => Poll::Ready(Some(ready)),
                    Poll::Pending => wake.poll_notified(cx).map(|()| None),
                })
                .await;
                match ready {
                    Some(ready) => ready.map_err(client_io)?,
                    // Operators: look at the session's standing again.
                    None => continue,
                }
            }
            spares::take(&mut self.cbuf);
            // Mostly the whole request is there at once: no futures to set up.
            self.client.read_now(&mut self.cbuf).map_err(client_io)?;
            if let Some(message) = whole_message(&self.cbuf, self.max_message as usize)? {
                return Ok(Some(message));
            }
            tokio::select! {
                biased;
                message = fill_message(&mut self.client, &mut self.cbuf, self.max_message as usize) => {
                    return Ok(message?);
                }
                () = self.registered.entry.wake.notified() => {}
            }
        }
    }

    /// At a transaction boundary: may this session go on? Killed, shutting
    /// down, or its tenant removed by a reload: no. A reload that kept the
    /// tenant moves the session to the tenant's new tier, pool and context.
    fn check_standing(&mut self) -> Result<(), RelayError> {
        let refuse = |e| Err(RelayError::Refused(e));
        if self.registered.entry.killed() {
            return refuse(ClientError::killed_by_admin());
        }
        if self.deps.control.draining() {
            return refuse(ClientError::shutting_down());
        }
        let generation = self.deps.control.generation();
        if generation == self.generation {
            return Ok(());
        }
        let runtime = self.deps.runtime.load_full();
        let id = &self.session.tenant.id;
        let tenant = match runtime.config.tenants.get(id) {
            None => {
                return refuse(ClientError::tenant_closed(
                    id,
                    "was removed from the configuration",
                ));
            }
            Some(t) if t.disabled => return refuse(ClientError::tenant_closed(id, "was disabled")),
            Some(t) => Arc::clone(t),
        };
        if self.held.is_some() {
            // Session mode keeps its server (and pool) until the client leaves.
            return Ok(());
        }
        self.generation = generation;
        let tier = Arc::clone(&runtime.config.tiers[&tenant.tier]);
        let pool = runtime
            .pools
            .for_tenant(&tenant)
            .expect("every tenant has a pool");
        if !Arc::ptr_eq(pool, self.session.pool()) {
            self.session.member = pool.member(&self.session.tenant_key);
        }
        self.session.context = Arc::clone(&runtime.contexts[id]);
        self.registered.entry.set_tier(&tier);
        self.session.tier = tier;
        self.session.tenant = tenant;
        Ok(())
    }

    /// While operators pause the tenant (or its tier, or everything), its new
    /// transactions wait here, without a timeout. `false`: the client left.
    async fn wait_while_paused(&mut self) -> Result<bool, RelayError> {
        let paused = |r: &Self| {
            r.deps
                .control
                .is_paused(&r.session.tenant.id, &r.session.tier.name)
        };
        if !paused(self) {
            return Ok(true);
        }
        self.registered.entry.wait_from(workers::now());
        while paused(self) {
            let wake = &self.registered.entry.wake;
            let (client, cbuf) = (&mut self.client, &mut self.cbuf);
            let woken =
                poll_fn(|cx| poll_reading_ahead(cx, client, cbuf, |cx| wake.poll_notified(cx)))
                    .await?;
            if woken.is_none() {
                return Ok(false);
            }
            self.check_standing()?;
        }
        Ok(true)
    }

    fn count_error(&self, sqlstate: &[u8]) {
        self.session.pool().metrics.error(sqlstate);
        self.session.stats.errors.inc();
    }

    async fn serve(&mut self) -> Result<(), RelayError> {
        loop {
            let Some((tag, len)) = self.next_message().await? else {
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
            // Boxed: a session's future is as big as its biggest state, and
            // most sessions sit idle in the smallest one, waiting above.
            if !boxed(|| self.request()).await? {
                return Ok(());
            }
        }
    }

    /// The client's next request: a server for it (waiting while paused or
    /// for capacity), then its transaction. `false`: the client left meanwhile.
    async fn request(&mut self) -> Result<bool, RelayError> {
        if let Some(lease) = self.held.take() {
            self.transaction(*lease, workers::now()).await?;
            return Ok(true);
        }
        if !self.wait_while_paused().await? {
            return Ok(false);
        }
        let started = workers::now();
        self.registered.entry.wait_from(started);
        // KILL may have looked at this client just before it left idle.
        self.check_standing()?;
        // An idle server at once, or a wait (boxed: waiting may mean
        // connecting, a big state no transaction should carry).
        // The end of a wait is the start of the transaction (no wait: no
        // second clock read).
        let (checkout, began, waited) = match self
            .session
            .member
            .checkout_now(started + self.session.tier.queue_timeout)
        {
            Ok(lease) => (Ok(lease), started, Duration::ZERO),
            Err(pending) => match boxed(|| self.checkout(pending)).await? {
                Some(checkout) => {
                    let began = workers::now();
                    (checkout, began, began - started)
                }
                None => return Ok(false),
            },
        };
        let entry = &self.registered.entry;
        match checkout {
            Ok(mut lease) => {
                self.session.pool().metrics.queue_wait.observe(waited);
                self.session
                    .stats
                    .queue_wait_micros
                    .add(waited.as_micros() as u64);
                let server = lease.server();
                entry.set_server(server.id, server.cancel.process_id);
                entry.set_state(ClientState::Active);
                let result = self.transaction(lease, began).await;
                let entry = &self.registered.entry;
                entry.set_server(0, 0);
                entry.set_state(ClientState::Idle);
                result?;
            }
            Err(CheckoutError::QueueTimeout) => {
                entry.set_state(ClientState::Idle);
                self.session.pool().metrics.queue_timeouts.inc();
                let label = self.session.pool().identity.label.clone();
                let err = ClientError::queue_timeout(&label, waited.as_millis());
                self.refuse_request(err).await?;
            }
            Err(CheckoutError::Connect(e)) => {
                entry.set_state(ClientState::Idle);
                let cluster = self.session.pool().cluster();
                tracing::warn!(cluster = %cluster.name, error = %e, "server connect failed");
                let err = ClientError::server_connect_failed(&cluster.name);
                self.refuse_request(err).await?;
            }
        }
        Ok(true)
    }

    /// Waits for a server, reading ahead from the client meanwhile so that a
    /// client that goes away leaves the queue at once (`None`), not at its
    /// queue timeout. Read-ahead stops at [`READ_AHEAD_LIMIT`] bytes.
    async fn checkout(
        &mut self,
        pending: Pending,
    ) -> Result<Option<Result<Lease, CheckoutError>>, RelayError> {
        let mut checkout = pin!(pending.finish());
        let (client, cbuf) = (&mut self.client, &mut self.cbuf);
        poll_fn(|cx| poll_reading_ahead(cx, client, cbuf, |cx| checkout.as_mut().poll(cx))).await
    }

    async fn ready_for_query(&mut self) -> Result<(), RelayError> {
        let mut buf = BytesMut::new();
        build::ready_for_query(&mut buf, TxStatus::Idle);
        send_now(&mut self.client, &buf).await.map_err(client_io)
    }

    /// Fails the client's next request without a server, as PostgreSQL fails a
    /// statement: the error, then (for extended protocol) everything up to its
    /// `Sync` is dropped, then `ReadyForQuery`. The session stays usable.
    async fn refuse_request(&mut self, err: ClientError) -> Result<(), RelayError> {
        self.count_error(err.code.as_bytes());
        send_error(&mut self.client, &err)
            .await
            .map_err(client_io)?;
        loop {
            let Some((tag, len)) =
                fill_message(&mut self.client, &mut self.cbuf, self.max_message as usize).await?
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

    /// One transaction on `lease`, begun at `began`, with state lent by the
    /// worker ([`Work`]): reused, so its queue and buffers are not allocated
    /// per transaction. Its counts go to the metrics once, at its end (the lease
    /// is from the session's pool: the pool only changes between transactions).
    async fn transaction(&mut self, lease: Lease, began: Instant) -> Result<(), RelayError> {
        let mut w = spares::work();
        let result = self.run_transaction(lease, &mut w).await;
        // One time for the server's idle time and the transaction's.
        let ended = workers::now();
        let result = match result {
            Ok(Some(lease)) if self.session.session_mode => {
                self.held = Some(Box::new(lease));
                Ok(())
            }
            Ok(Some(lease)) => {
                lease.release_at(ended);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        let counts = std::mem::take(&mut w.counts);
        spares::give_work(w);
        let metrics = &self.session.pool().metrics;
        metrics.transactions.inc();
        metrics
            .transaction_time
            .observe(ended.duration_since(began));
        metrics.queries.add(counts.queries);
        metrics.bytes_received.add(counts.received);
        metrics.bytes_sent.add(counts.sent);
        let stats = &self.session.stats;
        stats.transactions.inc();
        stats.queries.add(counts.queries);
        result
    }

    /// Context first (only if the server lacks it), in the same write as the
    /// client's messages; then relay to the boundary. The lease comes back if
    /// its server ended the transaction clean, to be released or (session
    /// mode) kept; otherwise it is dropped here, closing the server.
    async fn run_transaction(
        &mut self,
        mut lease: Lease,
        w: &mut Work,
    ) -> Result<Option<Lease>, RelayError> {
        let server = lease.server();
        let wanted = Arc::clone(&self.session.context);
        let reset = server.needs_reset;
        let carried = server.context.as_deref().filter(|_| !reset);
        let switch = wanted.switch_from(carried);
        let send_context = switch.replies > 0;
        w.out.clear();
        if send_context {
            self.session.pool().metrics.context_switches.inc();
            // Context and the client's first messages go out in one write.
            if reset {
                w.out.extend_from_slice(context::RESET);
                server.statements.clear();
                server.settings.clear();
                w.t.own_query();
            }
            w.out.extend_from_slice(switch.wire);
            for _ in 0..switch.replies {
                w.t.own_query();
            }
            if switch.sets_owned {
                for (name, _) in &wanted.owned {
                    server.settings.remove(name);
                }
            }
        }
        let apply = settings::apply_sql(&server.settings, &self.settings, &wanted.owned);
        if let Some(sql) = &apply {
            build::query(&mut w.out, sql);
            w.t.own_query();
        }
        // Until this write is done, the server's recorded context stays as it was;
        // any failure from here on closes the server (the lease is dropped).
        let terminated = self.forward_client(w, server).await?;
        if terminated {
            return Err(RelayError::ClientGone);
        }
        if send_context {
            server.context = Some(wanted);
            server.needs_reset = false;
        }
        if apply.is_some() {
            server.settings.clone_from(&self.settings);
        }
        self.cancel.slot.attach(server.cancel.clone());
        let result = self.relay(&mut lease, w).await;
        self.cancel.slot.detach();
        result?;
        let server = lease.server();
        if self.session.session_mode {
            // Session state stays with its client until it leaves; only the
            // tenant context is put back, in case a statement wiped it.
            if w.t.effect.reset {
                server.context = None;
            }
        } else {
            server.needs_reset |= w.t.effect.reset;
        }
        if !w.sbuf.is_empty() {
            // Bytes after the final ReadyForQuery: not a state we can vouch for.
            w.sbuf.clear();
            return Ok(None);
        }
        if w.t.discarded {
            self.settings.clone_from(&self.startup_settings);
            self.custom = None;
        }
        if w.t.effect.settings {
            self.learn_settings(server, &w.t.effect.custom).await?;
        }
        Ok(Some(lease))
    }

    /// Reads back the session settings of a server whose client may have changed
    /// some; they become the client's, and what the server is known to carry.
    async fn learn_settings(
        &mut self,
        server: &mut Server,
        custom: &[String],
    ) -> Result<(), RelayError> {
        if !custom.is_empty() {
            let known = self.custom.get_or_insert_default();
            for name in custom {
                if !known.contains(name) && known.len() < settings::MAX_CUSTOM {
                    known.push(name.clone());
                }
            }
        }
        let known = self.custom.as_deref().map_or(&[][..], Vec::as_slice);
        let rows = server
            .simple_query(&settings::learn_sql(known))
            .await
            .map_err(|e| RelayError::ServerLost(std::io::Error::other(e)))?;
        self.settings = settings::learned(rows, &self.session.tenant_setting);
        server.settings.clone_from(&self.settings);
        Ok(())
    }

    /// Forwards the complete client messages in `cbuf` (after whatever the proxy
    /// put in `out`), translating statement names, and writes the replies the
    /// proxy makes itself that are due. Returns whether the client terminated.
    async fn forward_client(
        &mut self,
        w: &mut Work,
        server: &mut Server,
    ) -> Result<bool, RelayError> {
        if w.t.holding() {
            // A segment is being run again: what follows must come after it.
            return Ok(false);
        }
        let mut st = statements!(self, server);
        let (n, terminated) =
            w.t.client_messages(&self.cbuf, self.max_message as usize, &mut st, &mut w.out)?;
        let bytes = if w.out.is_empty() {
            &self.cbuf[..n]
        } else {
            &w.out[..]
        };
        w.counts.received += n as u64;
        if !bytes.is_empty() {
            server
                .stream
                .send(bytes)
                .await
                .map_err(RelayError::ServerLost)?;
        }
        w.out.clear();
        self.cbuf.advance(n);
        w.cout.clear();
        w.t.due_fakes(&mut w.cout);
        if !w.cout.is_empty() {
            send_now(&mut self.client, &w.cout)
                .await
                .map_err(client_io)?;
        }
        Ok(terminated)
    }

    /// Forwards both ways until the tracker says the transaction is over.
    async fn relay(&mut self, lease: &mut Lease, w: &mut Work) -> Result<(), RelayError> {
        while !w.t.at_boundary() {
            reserve(&mut self.cbuf);
            reserve(&mut w.sbuf);
            let server = lease.server();
            // Server first: its replies are drained before more client input
            // is pushed at it. Polled by hand: `select!` adds a budget check
            // and branch bookkeeping to every turn.
            let (sbuf, cbuf, client) = (&mut w.sbuf, &mut self.cbuf, &mut self.client);
            let read = poll_fn(|cx| match server.stream.poll_read_into(cx, sbuf) {
                Poll::Ready(read) => Poll::Ready(Read::Server(read)),
                Poll::Pending => client.poll_read_into(cx, cbuf).map(Read::Client),
            })
            .await;
            match read {
                Read::Server(read) => {
                    if read.map_err(RelayError::ServerLost)? == 0 {
                        return Err(RelayError::ServerLost(
                            std::io::ErrorKind::UnexpectedEof.into(),
                        ));
                    }
                    let holding = w.t.holding();
                    self.forward_server(w, server).await?;
                    if holding && !w.t.holding() && self.forward_client(w, server).await? {
                        return Err(RelayError::ClientGone);
                    }
                }
                Read::Client(read) => {
                    if read.map_err(client_io)? == 0 {
                        return Err(RelayError::ClientGone);
                    }
                    if self.forward_client(w, server).await? {
                        return Err(RelayError::ClientGone);
                    }
                }
            }
        }
        Ok(())
    }

    /// Forwards the complete server messages in `sbuf`, leaving out the replies
    /// to the proxy's own messages and putting in the replies it makes itself.
    /// When nothing is left out or put in, the bytes go as they are.
    async fn forward_server(
        &mut self,
        w: &mut Work,
        server: &mut Server,
    ) -> Result<(), RelayError> {
        let mut st = statements!(self, server);
        let buf = &w.sbuf[..];
        let mut frames = Frames::new(buf, self.max_message as usize);
        // `buf[..run]` is accounted for in `cout` once `edited`.
        let (mut run, mut edited) = (0, false);
        // SQLSTATEs of errors shown to the client (rare: no allocation otherwise).
        let mut errors: Vec<Box<[u8]>> = Vec::new();
        w.cout.clear();
        for frame in &mut frames {
            let frame = frame.map_err(|e| RelayError::ServerLost(std::io::Error::other(e)))?;
            // Rows (and a simple query's description and tags) skip the
            // tracker's call altogether: checked inside it, they still paid for
            // its `Result<Action>` and the loop's checks after it (200-row
            // SELECT: 16,055 instructions a transaction this way, 32,121 with
            // the check at the top of `server_message`). Nothing is popped, so
            // no reply of the proxy's own falls due.
            if w.t.passes(frame.tag) {
                continue;
            }
            match w.t.server_message(frame.tag, frame.body(buf), &mut st)? {
                Action::Forward => match frame.tag {
                    b'Z' => w.counts.queries += 1,
                    b'E' => errors.push(error_code(frame.body(buf)).unwrap_or(b"XX").into()),
                    _ => {}
                },
                Action::Swallow => {
                    w.cout.extend_from_slice(&buf[run..frame.start]);
                    (run, edited) = (frame.end, true);
                }
                Action::Replace(shown) => {
                    if shown.first() == Some(&b'E') {
                        errors.push(error_code(&shown[5..]).unwrap_or(b"XX").into());
                    }
                    w.cout.extend_from_slice(&buf[run..frame.start]);
                    w.cout.extend_from_slice(&shown);
                    (run, edited) = (frame.end, true);
                }
            }
            if w.t.fake_due() {
                w.cout.extend_from_slice(&buf[run..frame.end]);
                (run, edited) = (frame.end, true);
                w.t.due_fakes(&mut w.cout);
            }
        }
        if let Some(text) = w.t.context_error.take() {
            return Err(RelayError::ContextFailed(text));
        }
        for code in errors {
            self.count_error(&code);
        }
        let consumed = frames.consumed();
        if edited {
            w.cout.extend_from_slice(&buf[run..consumed]);
            w.counts.sent += w.cout.len() as u64;
            if !w.cout.is_empty() {
                send_now(&mut self.client, &w.cout)
                    .await
                    .map_err(client_io)?;
            }
        } else if consumed > 0 {
            w.counts.sent += consumed as u64;
            send_now(&mut self.client, &buf[..consumed])
                .await
                .map_err(client_io)?;
        }
        w.sbuf.advance(consumed);
        if let Some(again) = w.t.resend() {
            server
                .stream
                .send(&again)
                .await
                .map_err(RelayError::ServerLost)?;
        }
        Ok(())
    }
}

/// `make()`'s value on the heap, pinned. The allocation comes first, so the
/// compiler can build the value in place (it does for the futures here, per
/// callgrind); `Box::pin(self.request())` built the request's future (about
/// 850 bytes) on the stack and copied it, about 110 instructions a
/// transaction. The one way this file boxes a future.
fn boxed<T>(make: impl FnOnce() -> T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

fn saturate(limit: usize) -> u32 {
    u32::try_from(limit).unwrap_or(u32::MAX)
}

/// Most client bytes buffered while waiting for a server.
const READ_AHEAD_LIMIT: usize = 1 << 20;

/// Polls `wanted` (a server, or the end of a pause) for a client that waits
/// for it, reading ahead from the client meanwhile so that one that goes away
/// is let go at once: `Some` with what was wanted, `None` when the client has
/// gone. Reads go straight into `cbuf`; past [`READ_AHEAD_LIMIT`] bytes it
/// reads no more, and only `wanted` wakes the wait.
fn poll_reading_ahead<S: ClientStream, T>(
    cx: &mut Context<'_>,
    client: &mut S,
    cbuf: &mut BytesMut,
    mut wanted: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> Poll<Result<Option<T>, RelayError>> {
    loop {
        if let Poll::Ready(got) = wanted(cx) {
            return Poll::Ready(Ok(Some(got)));
        }
        if cbuf.len() >= READ_AHEAD_LIMIT {
            return Poll::Pending;
        }
        match std::task::ready!(client.poll_read_into(cx, cbuf)) {
            Ok(0) => return Poll::Ready(Ok(None)),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(client_io(e))),
        }
    }
}

/// Keeps room for a large read so big results do not trickle in 64-byte steps.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle client keeps its relay's state: it stays within jemalloc's
    /// 384-byte size class (the next is 448).
    #[test]
    fn an_idle_clients_relay_fits_384_bytes() {
        let size = std::mem::size_of::<Relay<tokio::net::TcpStream>>();
        assert!(size <= 384, "{size} bytes");
    }
}
