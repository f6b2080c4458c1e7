//! Where one transaction stands, from the messages seen both ways, and the
//! rewriting of client messages that name prepared statements.
//!
//! Every message written to the server that gets replies has an entry in a
//! queue, in write order ([`Reply`]). Server messages are matched against the
//! queue's front: that is how the proxy knows which replies are its own (to
//! swallow), where to put replies it makes itself (a `ParseComplete` for a
//! statement the server already had), and when the transaction is over. After an
//! error in extended protocol the server skips everything up to `Sync`; so does
//! the queue, undoing what the skipped messages would have done.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::relay::RelayError;
use crate::error::ClientError;
use crate::prepared::{self, ClientStatements, Effect, ServerStatements, Statement};
use crate::protocol::TxStatus;
use crate::protocol::frame::{Frame, Frames, read_cstr};
use crate::tenant::guard::{self, Policy, Verdict};
use crate::tenant::scan;

const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";
/// A `Parse` of the unnamed statement that always fails (a syntax error), put
/// where a client message must fail the way PostgreSQL would fail it: the server
/// then skips to `Sync` and fails an open transaction block, exactly as for a
/// real error, and the proxy shows the client its own error instead.
const FAILING_PARSE: &[u8] = b"P\0\0\0\x18\0pgtenant refused\0\0\0";
/// The same for a simple `Query`.
const FAILING_QUERY: &[u8] = b"Q\0\0\0\x15pgtenant refused\0";
/// An empty query, in place of a statement the proxy answers itself: the
/// server's `EmptyQueryResponse` is replaced by the proxy's answer, and its
/// `ReadyForQuery` carries the real transaction status.
const EMPTY_QUERY: &[u8] = b"Q\0\0\0\x06;\0";

/// What the server's replies to one written message mean to the proxy.
#[derive(Debug)]
enum Reply {
    /// A client `Query` or `FunctionCall`: everything up to its `ReadyForQuery`.
    Query,
    /// The [`FAILING_QUERY`] in place of a refused one: its error is replaced.
    FailQuery(Bytes),
    /// The [`EMPTY_QUERY`] in place of one the proxy answers: its
    /// `EmptyQueryResponse` is replaced by this `CommandComplete`.
    Answered(Bytes),
    /// The proxy's own `Query` (context, reset): swallowed up to its `ReadyForQuery`.
    Own,
    Sync,
    /// A client `Parse`, forwarded; undone if it fails.
    Parse(Option<Undo>),
    /// A `Bind` or `Describe` of the server statement `id`, if named.
    Bind(Option<u128>),
    Describe(Option<u128>),
    Execute,
    Close,
    /// A `Parse` the proxy put in front of a client's `Bind` or `Describe`.
    OwnParse(Option<Arc<Statement>>),
    /// A `Close` of a statement evicted from the server (or of a stale one: `None`).
    OwnClose(Option<u128>, Bytes),
    /// A reply the proxy writes itself, in its place in the stream.
    Fake(&'static [u8], Option<Bytes>),
    /// The [`FAILING_PARSE`]: its error is replaced by this one.
    Fail(Bytes),
    /// No reply: where the client ended a COPY IN (`CopyDone`/`CopyFail`).
    CopyEnd,
}

/// What to take back when a client's `Parse` fails or is skipped.
#[derive(Debug)]
enum Undo {
    Named(Bytes, u128),
    Unnamed,
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Forward,
    Swallow,
    Replace(Bytes),
}

/// A client's statements and the server's, borrowed for one batch.
pub struct Statements<'a> {
    pub client: &'a mut ClientStatements,
    pub server: &'a mut ServerStatements,
    /// Tenant namespace that keys server statements.
    pub namespace: &'a [u8],
    pub server_limit: usize,
    pub client_limit: usize,
    pub policy: Policy<'a>,
}

#[derive(Debug)]
pub struct Tracker {
    replies: VecDeque<Reply>,
    /// Extended-protocol messages forwarded since the last `Sync`.
    unsynced: bool,
    /// The server hit an error and ignores messages until `Sync`.
    skipping: bool,
    pub status: TxStatus,
    /// What the forwarded statements may have done to session state: state the
    /// proxy cannot follow (reset after), settings to learn, custom settings.
    pub effect: Effect,
    /// The client sent `DISCARD ALL`: its settings go back to its startup ones.
    pub discarded: bool,
    /// The server holds the client's current unnamed statement.
    unnamed_ready: bool,
    /// The first error of the proxy's own queries.
    pub context_error: Option<String>,
    /// The server is in COPY IN and the client has not ended it yet: its
    /// `Sync`s are ignored by the server, so they get no entry.
    copy_in: bool,
    /// The segment being written may be run again (see [`Retry`]).
    draft: Option<Retry>,
    /// The first `Sync` owed ends a segment that may be run again.
    armed: Option<Retry>,
    /// Messages for the server that the proxy wrote while reading its replies.
    resend: BytesMut,
    /// The armed segment as written, from the `Bind` to the `Sync` (reused).
    replay: BytesMut,
    /// The last statement the scan passed, kept across transactions.
    memo: scan::Memo,
}

/// A pipeline segment (up to `Sync`) that begins by binding a named statement,
/// outside any transaction block, and describes the portal. If the server says
/// the statement's result type changed (DDL: `cached plan must not change
/// result type`), nothing in the segment ran: the proxy prepares the statement
/// again and runs the segment once more, and the client never sees the error.
/// Only when the client describes the portal (libpq, psycopg, pgbench,
/// node-postgres do each time) does it read the new row shape; a client that
/// decodes by the description it cached at prepare time (tokio-postgres,
/// pgjdbc) would misread the rows, so it gets the error, as from PostgreSQL.
#[derive(Debug)]
struct Retry {
    statement: Arc<Statement>,
    /// Where the translated `Bind` starts in the bytes for the server.
    start: usize,
    described: bool,
    /// It failed and runs again at its `Sync`'s `ReadyForQuery`: the client's
    /// next messages wait until it is rewritten.
    failed: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker {
            replies: VecDeque::new(),
            unsynced: false,
            skipping: false,
            status: TxStatus::Idle,
            effect: Effect::default(),
            discarded: false,
            unnamed_ready: false,
            context_error: None,
            copy_in: false,
            draft: None,
            armed: None,
            resend: BytesMut::new(),
            replay: BytesMut::new(),
            memo: scan::Memo::default(),
        }
    }

    /// Ready for the next transaction; the queue and buffers keep their
    /// capacity, so a tracker's transactions allocate nothing here.
    pub fn reset(&mut self) {
        // Every field by name: a new one that is not reset here fails to compile.
        let Tracker {
            replies,
            unsynced,
            skipping,
            status,
            effect,
            discarded,
            unnamed_ready,
            context_error,
            copy_in,
            draft,
            armed,
            resend,
            replay,
            // Kept: it describes statements, not a transaction.
            memo: _,
        } = self;
        replies.clear();
        *unsynced = false;
        *skipping = false;
        *status = TxStatus::Idle;
        effect.settings = false;
        effect.reset = false;
        effect.custom.clear();
        *discarded = false;
        *unnamed_ready = false;
        *context_error = None;
        *copy_in = false;
        *draft = None;
        *armed = None;
        resend.clear();
        replay.clear();
    }

    /// Bytes of buffers it holds, to decide whether it is worth keeping.
    pub fn footprint(&self) -> usize {
        self.resend.capacity()
            + self.replay.capacity()
            + self.replies.capacity() * std::mem::size_of::<Reply>()
    }

    /// A failed segment is being run again: client messages must wait.
    pub fn holding(&self) -> bool {
        self.armed.as_ref().is_some_and(|r| r.failed)
    }

    /// What the proxy must write to the server now, if anything.
    pub fn resend(&mut self) -> Option<BytesMut> {
        (!self.resend.is_empty()).then(|| self.resend.split())
    }

    /// Whether a server message with `tag` now belongs to a client's result
    /// and goes as it came, with nothing to track: its rows (once per row),
    /// and a simple query's row description and command tags. What
    /// [`Tracker::server_message`] would answer, without its call. The tag
    /// is looked at first: most other messages need that call anyway.
    pub fn passes(&self, tag: u8) -> bool {
        let front = self.replies.front();
        match tag {
            b'D' => matches!(front, Some(Reply::Query | Reply::Execute)),
            // An Execute's command tag ends what it owes.
            b'T' | b'C' => matches!(front, Some(Reply::Query)),
            _ => false,
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.replies.iter().all(|r| matches!(r, Reply::CopyEnd))
            && !self.unsynced
            && self.status == TxStatus::Idle
    }

    /// Notes one of the proxy's own `Query` messages, written before the client's.
    pub fn own_query(&mut self) {
        self.replies.push_back(Reply::Own);
    }

    /// Takes the complete client messages at the front of `buf`, translating
    /// statement names. Returns how many bytes were taken and whether the client
    /// sent `Terminate` there. What to write to the server is then `out` if
    /// non-empty (it may already hold the proxy's own messages), else `buf[..n]`.
    pub fn client_messages(
        &mut self,
        buf: &[u8],
        max_len: usize,
        st: &mut Statements<'_>,
        out: &mut BytesMut,
    ) -> Result<(usize, bool), RelayError> {
        let mut w = Splicer {
            buf,
            out,
            copied: 0,
            copying: false,
        };
        w.copying = !w.out.is_empty();
        if !self.skipping {
            for name in st.server.take_stale() {
                w.copying = true;
                prepared::close_message(w.out, &name);
                self.replies.push_back(Reply::OwnClose(None, name));
            }
        }
        let mut frames = Frames::new(buf, max_len);
        for frame in &mut frames {
            let frame = frame?;
            let body = frame.body(buf);
            // Only Describe (portal), Execute and Flush may follow the Bind of
            // a segment that can be run again: they are written as they came.
            if let Some(retry) = &mut self.draft {
                match (frame.tag, body.first()) {
                    (b'D', Some(b'P')) => retry.described = true,
                    (b'E' | b'H' | b'S', _) => {}
                    _ => self.draft = None,
                }
            }
            if self.skipping && !matches!(frame.tag, b'S' | b'X') {
                // The server ignores these until Sync: forward them as they are.
                continue;
            }
            match frame.tag {
                b'Q' => {
                    self.unnamed_ready = false;
                    // The body is the SQL and its NUL: no search for the end. A
                    // body with a NUL inside is refused by PostgreSQL ("invalid
                    // message format"); scanning past that NUL only adds bytes.
                    let sql = body.strip_suffix(&[0]).unwrap_or(body);
                    match judge(sql, &st.policy, &mut self.memo) {
                        Ok(Judged::Clean) => self.replies.push_back(Reply::Query),
                        Ok(Judged::Run(effect)) => {
                            self.effect.merge(&effect);
                            self.replies.push_back(Reply::Query);
                        }
                        Ok(Judged::Deallocate(name)) => self.deallocate(frame, name, st, &mut w),
                        Ok(Judged::DiscardAll) => self.discard_all(frame, st, &mut w),
                        Err(e) => self.fail_query(frame, &mut w, &e),
                    }
                }
                b'F' => self.replies.push_back(Reply::Query),
                b'S' if self.copy_in => {}
                b'S' => {
                    if let Some(retry) = self.draft.take().filter(|r| r.described) {
                        w.finish(frame.end);
                        self.replay.clear();
                        self.replay.extend_from_slice(&w.out[retry.start..]);
                        self.armed = Some(retry);
                    }
                    self.replies.push_back(Reply::Sync);
                    self.unsynced = false;
                    self.skipping = false;
                }
                b'c' | b'f' => {
                    self.copy_in = false;
                    self.replies.push_back(Reply::CopyEnd);
                }
                b'P' => self.parse(frame, body, st, &mut w)?,
                b'B' => self.bind(frame, body, st, &mut w)?,
                b'D' => self.describe(frame, body, st, &mut w)?,
                b'C' => self.close(frame, body, st, &mut w)?,
                b'E' => {
                    self.unsynced = true;
                    self.replies.push_back(Reply::Execute);
                }
                b'H' | b'd' => {}
                b'X' => {
                    w.finish(frame.start);
                    return Ok((frame.start, true));
                }
                other => {
                    return Err(RelayError::Refused(ClientError::protocol_violation(
                        format!("invalid frontend message type {}", other as char),
                    )));
                }
            }
        }
        let n = frames.consumed();
        w.finish(n);
        // A segment split across reads is not run again: its start is gone.
        self.draft = None;
        Ok((n, false))
    }

    fn parse(
        &mut self,
        frame: Frame,
        body: &[u8],
        st: &mut Statements<'_>,
        w: &mut Splicer<'_>,
    ) -> Result<(), RelayError> {
        self.unsynced = true;
        let (name, rest) = read_cstr(body).ok_or_else(|| malformed("Parse"))?;
        if name.is_empty() && st.client.reuse_unnamed(rest) {
            self.unnamed_parsed();
            return Ok(());
        }
        let (query, _) = read_cstr(rest).ok_or_else(|| malformed("Parse"))?;
        let (effect, clean) = match judge(query, &st.policy, &mut self.memo) {
            Ok(Judged::Clean) => (Effect::default(), true),
            Ok(Judged::Run(effect)) => (effect, false),
            // DEALLOCATE / DISCARD ALL are answered only as simple queries.
            Ok(_) => {
                self.fail(frame, w, &ClientError::must_be_alone());
                return Ok(());
            }
            Err(e) => {
                self.fail(frame, w, &e);
                return Ok(());
            }
        };
        if name.is_empty() {
            st.client.set_unnamed(rest, effect, clean);
            self.unnamed_parsed();
            return Ok(());
        }
        let refused = if st.client.contains(name) {
            Some(ClientError::statement_exists(name))
        } else if st.client.len() >= st.client_limit {
            Some(ClientError::too_many_statements(st.client_limit))
        } else {
            None
        };
        if let Some(e) = refused {
            self.fail(frame, w, &e);
            return Ok(());
        }
        let statement = Arc::new(Statement::new(st.namespace, rest, effect));
        let name = Bytes::copy_from_slice(name);
        st.client.insert(name.clone(), Arc::clone(&statement));
        w.drop_frame(frame);
        if st.server.touch(statement.id) {
            self.replies
                .push_back(Reply::Fake(PARSE_COMPLETE, Some(name)));
        } else {
            // The Parse written under the server name stands for the client's:
            // its reply is forwarded.
            let reply = Reply::Parse(Some(Undo::Named(name, statement.id)));
            self.write_prepare(&statement, st, w.out, reply);
        }
        Ok(())
    }

    /// An unnamed `Parse` forwarded as it came; its reply is the server's.
    fn unnamed_parsed(&mut self) {
        self.unnamed_ready = true;
        self.replies.push_back(Reply::Parse(Some(Undo::Unnamed)));
    }

    fn bind(
        &mut self,
        frame: Frame,
        body: &[u8],
        st: &mut Statements<'_>,
        w: &mut Splicer<'_>,
    ) -> Result<(), RelayError> {
        self.unsynced = true;
        let (portal, rest) = read_cstr(body).ok_or_else(|| malformed("Bind"))?;
        let (name, after) = read_cstr(rest).ok_or_else(|| malformed("Bind"))?;
        if name.is_empty() {
            if !self.ensure_unnamed(frame, st, w) {
                return Ok(());
            }
            self.effect.merge(st.client.unnamed_effect());
            self.replies.push_back(Reply::Bind(None));
            return Ok(());
        }
        let Some(statement) = self.named(frame, name, st, w) else {
            return Ok(());
        };
        self.effect.merge(&statement.effect);
        if self.may_run_again() {
            self.draft = Some(Retry {
                statement: Arc::clone(&statement),
                start: w.out.len(),
                described: false,
                failed: false,
            });
        }
        let out = &mut *w.out;
        out.put_u8(b'B');
        out.put_i32((4 + portal.len() + 1 + statement.name.len() + 1 + after.len()) as i32);
        out.put_slice(portal);
        out.put_u8(0);
        out.put_slice(&statement.name);
        out.put_u8(0);
        out.put_slice(after);
        self.replies.push_back(Reply::Bind(Some(statement.id)));
        Ok(())
    }

    /// Whether a segment starting here could be run again: outside any
    /// transaction, with nothing owed that runs SQL or ends a segment.
    fn may_run_again(&self) -> bool {
        self.status == TxStatus::Idle
            && self.draft.is_none()
            && self.armed.is_none()
            && !self.skipping
            && !self.copy_in
            && self.replies.iter().all(|r| {
                matches!(
                    r,
                    Reply::Own
                        | Reply::Parse(_)
                        | Reply::OwnParse(_)
                        | Reply::OwnClose(..)
                        | Reply::Describe(_)
                        | Reply::Close
                        | Reply::Fake(..)
                )
            })
    }

    fn describe(
        &mut self,
        frame: Frame,
        body: &[u8],
        st: &mut Statements<'_>,
        w: &mut Splicer<'_>,
    ) -> Result<(), RelayError> {
        self.unsynced = true;
        let (&kind, rest) = body.split_first().ok_or_else(|| malformed("Describe"))?;
        let (name, _) = read_cstr(rest).ok_or_else(|| malformed("Describe"))?;
        if kind != b'S' {
            self.replies.push_back(Reply::Describe(None));
            return Ok(());
        }
        if name.is_empty() {
            if self.ensure_unnamed(frame, st, w) {
                self.replies.push_back(Reply::Describe(None));
            }
            return Ok(());
        }
        let Some(statement) = self.named(frame, name, st, w) else {
            return Ok(());
        };
        let out = &mut *w.out;
        out.put_u8(b'D');
        out.put_i32((4 + 1 + statement.name.len() + 1) as i32);
        out.put_u8(b'S');
        out.put_slice(&statement.name);
        out.put_u8(0);
        self.replies.push_back(Reply::Describe(Some(statement.id)));
        Ok(())
    }

    fn close(
        &mut self,
        frame: Frame,
        body: &[u8],
        st: &mut Statements<'_>,
        w: &mut Splicer<'_>,
    ) -> Result<(), RelayError> {
        self.unsynced = true;
        let (&kind, rest) = body.split_first().ok_or_else(|| malformed("Close"))?;
        let (name, _) = read_cstr(rest).ok_or_else(|| malformed("Close"))?;
        if kind == b'S' && !name.is_empty() {
            // Only the client's name goes: others may use the server statement.
            st.client.remove(name);
            w.drop_frame(frame);
            self.replies.push_back(Reply::Fake(CLOSE_COMPLETE, None));
            return Ok(());
        }
        if kind == b'S' {
            st.client.forget_unnamed();
            self.unnamed_ready = false;
        }
        self.replies.push_back(Reply::Close);
        Ok(())
    }

    /// `DEALLOCATE`: only the client's own names go, answered by the proxy.
    fn deallocate(
        &mut self,
        frame: Frame,
        name: Option<String>,
        st: &mut Statements<'_>,
        w: &mut Splicer<'_>,
    ) {
        let tag = match name {
            None => {
                st.client.clear();
                "DEALLOCATE ALL"
            }
            Some(name) if st.client.contains(name.as_bytes()) => {
                st.client.remove(name.as_bytes());
                "DEALLOCATE"
            }
            Some(name) => {
                return self.fail_query(frame, w, &ClientError::statement_missing(name.as_bytes()));
            }
        };
        self.answer(frame, w, tag);
    }

    /// `DISCARD ALL` would wipe the tenant context and every client's
    /// statements on the server: the proxy does it for this client only.
    fn discard_all(&mut self, frame: Frame, st: &mut Statements<'_>, w: &mut Splicer<'_>) {
        if self.status != TxStatus::Idle || !self.replies.is_empty() {
            let err = ClientError::discard_in_transaction();
            return self.fail_query(frame, w, &err);
        }
        st.client.clear();
        st.client.forget_unnamed();
        self.discarded = true;
        self.answer(frame, w, "DISCARD ALL");
    }

    fn answer(&mut self, frame: Frame, w: &mut Splicer<'_>, tag: &str) {
        w.drop_frame(frame);
        w.out.extend_from_slice(EMPTY_QUERY);
        let mut done = BytesMut::new();
        done.put_u8(b'C');
        done.put_i32((4 + tag.len() + 1) as i32);
        done.put_slice(tag.as_bytes());
        done.put_u8(0);
        self.replies.push_back(Reply::Answered(done.freeze()));
    }

    fn fail_query(&mut self, frame: Frame, w: &mut Splicer<'_>, err: &ClientError) {
        w.drop_frame(frame);
        w.out.extend_from_slice(FAILING_QUERY);
        self.replies.push_back(Reply::FailQuery(encode(err)));
    }

    /// The client's statement `name` for a `Bind` or `Describe` at `frame`:
    /// the frame is left out (the caller writes it under the server name) and
    /// the server gets a `Parse` first if it lacks the statement. An unknown
    /// name fails the message as PostgreSQL would (`None`).
    fn named(
        &mut self,
        frame: Frame,
        name: &[u8],
        st: &mut Statements<'_>,
        w: &mut Splicer<'_>,
    ) -> Option<Arc<Statement>> {
        let Some(statement) = st.client.get(name).cloned() else {
            self.fail(frame, w, &ClientError::statement_missing(name));
            return None;
        };
        w.drop_frame(frame);
        if !st.server.touch(statement.id) {
            let reply = Reply::OwnParse(Some(Arc::clone(&statement)));
            self.write_prepare(&statement, st, w.out, reply);
        }
        Some(statement)
    }

    /// Writes `statement`'s `Parse` to `out`, after closing stale statements
    /// (which may carry the same name) and the least recently used one when
    /// the server is full.
    fn write_prepare(
        &mut self,
        statement: &Statement,
        st: &mut Statements<'_>,
        out: &mut BytesMut,
        reply: Reply,
    ) {
        for name in st.server.take_stale() {
            prepared::close_message(out, &name);
            self.replies.push_back(Reply::OwnClose(None, name));
        }
        if let Some((id, name)) = st.server.insert(statement, st.server_limit) {
            prepared::close_message(out, &name);
            self.replies.push_back(Reply::OwnClose(Some(id), name));
        }
        out.extend_from_slice(&statement.parse);
        self.replies.push_back(reply);
    }

    /// Before a `Bind` or `Describe` of the unnamed statement on a server that
    /// may not have the client's: re-parse it, or fail as PostgreSQL would when
    /// there is none. Returns whether the message goes on to the server.
    fn ensure_unnamed(
        &mut self,
        frame: Frame,
        st: &mut Statements<'_>,
        w: &mut Splicer<'_>,
    ) -> bool {
        if self.unnamed_ready {
            return true;
        }
        let Some(rest) = st.client.unnamed() else {
            self.fail(frame, w, &ClientError::statement_missing(b""));
            return false;
        };
        w.insert_before(frame);
        let out = &mut *w.out;
        out.put_u8(b'P');
        out.put_i32((4 + 1 + rest.len()) as i32);
        out.put_u8(0);
        out.put_slice(rest);
        self.replies.push_back(Reply::OwnParse(None));
        self.unnamed_ready = true;
        true
    }

    /// Replaces the message at `frame` with one that fails on the server, and
    /// shows the client `err` in its place.
    fn fail(&mut self, frame: Frame, w: &mut Splicer<'_>, err: &ClientError) {
        w.drop_frame(frame);
        w.out.extend_from_slice(FAILING_PARSE);
        self.unnamed_ready = false;
        self.replies.push_back(Reply::Fail(encode(err)));
    }

    pub fn fake_due(&self) -> bool {
        matches!(self.replies.front(), Some(Reply::Fake(..)))
    }

    /// Replies the proxy makes itself that are due now (nothing is owed before
    /// them), appended to `out`.
    pub fn due_fakes(&mut self, out: &mut BytesMut) {
        while let Some(Reply::Fake(msg, _)) = self.replies.front() {
            out.extend_from_slice(msg);
            self.replies.pop_front();
        }
    }

    /// Matches one server message against what is owed.
    pub fn server_message(
        &mut self,
        tag: u8,
        body: &[u8],
        st: &mut Statements<'_>,
    ) -> Result<Action, RelayError> {
        while let Some(Reply::CopyEnd) = self.replies.front() {
            self.replies.pop_front();
        }
        let Some(front) = self.replies.front() else {
            return match tag {
                b'N' | b'S' | b'A' => Ok(Action::Forward),
                _ => Err(unexpected(tag)),
            };
        };
        let action = match (front, tag) {
            (Reply::Own, b'Z') => {
                self.replies.pop_front();
                Action::Swallow
            }
            (Reply::Own, b'E') => {
                self.context_error.get_or_insert_with(|| error_text(body));
                Action::Swallow
            }
            (Reply::Own, _) => Action::Swallow,
            (Reply::FailQuery(shown), b'E') | (Reply::Answered(shown), b'I') => {
                Action::Replace(shown.clone())
            }
            (Reply::Query | Reply::FailQuery(_) | Reply::Answered(_) | Reply::Sync, b'Z') => {
                let sync = matches!(front, Reply::Sync);
                self.replies.pop_front();
                self.status = body
                    .first()
                    .copied()
                    .and_then(TxStatus::from_byte)
                    .ok_or_else(|| unexpected(tag))?;
                if sync
                    && let Some(retry) = self.armed.take()
                    && retry.failed
                {
                    self.run_again(retry, st);
                    return Ok(Action::Swallow);
                }
                Action::Forward
            }
            (Reply::Query | Reply::FailQuery(_) | Reply::Answered(_), _)
            | (Reply::Sync, b'E')
            | (_, b'N' | b'S' | b'A') => Action::Forward,
            (_, b'E') => {
                let failed = self.replies.pop_front().expect("front exists");
                let action = match failed {
                    Reply::Fail(shown) => Action::Replace(shown),
                    Reply::Bind(Some(id)) | Reply::Describe(Some(id))
                        if error_code(body) == Some(b"0A000".as_slice()) =>
                    {
                        // "cached plan must not change result type": prepare it
                        // afresh, on every server, and run the segment again if
                        // it is the armed one and nothing follows it.
                        st.server.invalidate(id);
                        self.skip_to_sync(st);
                        let only_owed = self.replies.len() == 1;
                        if let Some(retry) = &mut self.armed
                            && retry.statement.id == id
                            && only_owed
                        {
                            retry.failed = true;
                            return Ok(Action::Swallow);
                        }
                        self.armed = None;
                        return Ok(Action::Forward);
                    }
                    other => {
                        self.undo(other, st);
                        Action::Forward
                    }
                };
                self.skip_to_sync(st);
                action
            }
            (Reply::Parse(_), b'1')
            | (Reply::Bind(_), b'2')
            | (Reply::Close, b'3')
            | (Reply::Describe(_), b'T' | b'n')
            | (Reply::Execute, b'C' | b'I' | b's') => {
                self.replies.pop_front();
                Action::Forward
            }
            (Reply::OwnParse(_), b'1') | (Reply::OwnClose(..), b'3') => {
                self.replies.pop_front();
                Action::Swallow
            }
            (Reply::Execute, b'G') => {
                self.enter_copy_in();
                Action::Forward
            }
            (Reply::Describe(_), b't') | (Reply::Execute, _) => Action::Forward,
            _ => return Err(unexpected(tag)),
        };
        Ok(action)
    }

    /// An `Execute` started COPY IN: the server ignores `Sync` until the client's
    /// `CopyDone` or `CopyFail`, so those already queued before it get no reply.
    fn enter_copy_in(&mut self) {
        let mut i = 1;
        while i < self.replies.len() {
            match self.replies[i] {
                Reply::CopyEnd => return,
                Reply::Sync => {
                    self.replies.remove(i);
                }
                _ => i += 1,
            }
        }
        self.copy_in = true;
    }

    /// Runs an armed segment again (see [`Retry`]) after its statement's
    /// result type changed: a `Close` of the old copy, a fresh `Parse`, then
    /// the segment as the client sent it.
    fn run_again(&mut self, retry: Retry, st: &mut Statements<'_>) {
        let mut out = std::mem::take(&mut self.resend);
        let statement = retry.statement;
        let reply = Reply::OwnParse(Some(Arc::clone(&statement)));
        self.write_prepare(&statement, st, &mut out, reply);
        out.extend_from_slice(&self.replay);
        for frame in Frames::new(&self.replay, usize::MAX).flatten() {
            self.replies.push_back(match frame.tag {
                // Bound once more: a second failure goes to the client.
                b'B' => Reply::Bind(Some(statement.id)),
                b'D' => Reply::Describe(None),
                b'E' => Reply::Execute,
                b'S' => Reply::Sync,
                _ => continue,
            });
        }
        self.resend = out;
    }

    /// The server skips everything up to the next `Sync` after an error.
    fn skip_to_sync(&mut self, st: &mut Statements<'_>) {
        while let Some(front) = self.replies.front() {
            if matches!(front, Reply::Sync) {
                return;
            }
            let skipped = self.replies.pop_front().expect("front exists");
            self.undo(skipped, st);
        }
        self.skipping = true;
    }

    /// Takes back the bookkeeping of a message that failed or was skipped.
    fn undo(&mut self, reply: Reply, st: &mut Statements<'_>) {
        match reply {
            Reply::Parse(Some(Undo::Named(name, id))) => {
                st.client.remove(&name);
                st.server.remove(id);
            }
            Reply::Parse(Some(Undo::Unnamed)) => {
                st.client.forget_unnamed();
                self.unnamed_ready = false;
            }
            Reply::OwnParse(Some(statement)) => st.server.remove(statement.id),
            Reply::OwnParse(None) => self.unnamed_ready = false,
            Reply::OwnClose(Some(id), name) => st.server.restore(id, name),
            Reply::OwnClose(None, name) => st.server.restore_stale(name),
            Reply::Fake(_, Some(name)) => st.client.remove(&name),
            _ => {}
        }
    }
}

/// Builds the bytes for the server when some client messages are rewritten:
/// unchanged runs are copied from the client buffer around the rewritten ones.
struct Splicer<'a> {
    buf: &'a [u8],
    out: &'a mut BytesMut,
    /// `buf[..copied]` is accounted for in `out`.
    copied: usize,
    copying: bool,
}

impl Splicer<'_> {
    /// Copies what precedes `frame`, and leaves `frame` out.
    fn drop_frame(&mut self, frame: Frame) {
        self.out
            .extend_from_slice(&self.buf[self.copied..frame.start]);
        self.copied = frame.end;
        self.copying = true;
    }

    /// Copies what precedes `frame`, so that what is written next goes before it.
    fn insert_before(&mut self, frame: Frame) {
        self.out
            .extend_from_slice(&self.buf[self.copied..frame.start]);
        self.copied = frame.start;
        self.copying = true;
    }

    fn finish(&mut self, end: usize) {
        if self.copying && end > self.copied {
            self.out.extend_from_slice(&self.buf[self.copied..end]);
            self.copied = end;
        }
    }
}

enum Judged {
    /// The keyword scan passed it: no effect, whatever the policy.
    Clean,
    /// The parser's verdict under the policy of the moment.
    Run(Effect),
    Deallocate(Option<String>),
    DiscardAll,
}

/// What a client statement does to session state, or why it is refused. The
/// parser runs only on what the cheap scan flags.
fn judge(sql: &[u8], policy: &Policy, memo: &mut scan::Memo) -> Result<Judged, ClientError> {
    if !memo.may_change_session(sql) {
        return Ok(Judged::Clean);
    }
    let Ok(text) = std::str::from_utf8(sql) else {
        return Ok(Judged::Run(Effect {
            reset: true,
            ..Effect::default()
        }));
    };
    let mut effect = Effect::default();
    match guard::classify(text, policy, &mut effect.custom) {
        Verdict::Clean => {}
        Verdict::Settings => effect.settings = true,
        Verdict::Reset => effect.reset = true,
        Verdict::Refuse(e) => return Err(e),
        Verdict::Deallocate(name) => return Ok(Judged::Deallocate(name)),
        Verdict::DiscardAll => return Ok(Judged::DiscardAll),
    }
    Ok(Judged::Run(effect))
}

fn encode(err: &ClientError) -> Bytes {
    let mut shown = BytesMut::new();
    err.encode(&mut shown);
    shown.freeze()
}

fn malformed(what: &str) -> RelayError {
    RelayError::Refused(ClientError::protocol_violation(format!(
        "malformed {what} message"
    )))
}

fn unexpected(tag: u8) -> RelayError {
    RelayError::ServerLost(std::io::Error::other(format!(
        "unexpected message {:?} from server",
        tag as char
    )))
}

/// The value of one field of an ErrorResponse body.
fn error_field(body: &[u8], wanted: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let (value, next) = read_cstr(after)?;
        if field == wanted {
            return Some(value);
        }
        rest = next;
    }
    None
}

pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    error_field(body, b'C')
}

/// `SQLSTATE: message` of an ErrorResponse body, for the log.
pub fn error_text(body: &[u8]) -> String {
    let code = error_code(body).map_or("?????".into(), String::from_utf8_lossy);
    let message = error_field(body, b'M').map_or("".into(), String::from_utf8_lossy);
    format!("{code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::encode as msg;

    struct Sets {
        client: ClientStatements,
        server: ServerStatements,
        policy: Policy<'static>,
    }

    impl Sets {
        fn new() -> Sets {
            Sets {
                client: ClientStatements::default(),
                server: ServerStatements::default(),
                policy: Policy {
                    tenant_setting: "app.current_tenant",
                    statement_timeout: None,
                    session: false,
                },
            }
        }

        fn st(&mut self) -> Statements<'_> {
            Statements {
                client: &mut self.client,
                server: &mut self.server,
                namespace: b"ns",
                server_limit: 10,
                client_limit: 10,
                policy: self.policy,
            }
        }
    }

    fn feed(t: &mut Tracker, sets: &mut Sets, buf: &[u8]) -> (usize, bool, BytesMut) {
        let mut out = BytesMut::new();
        let (n, x) = t
            .client_messages(buf, 1024, &mut sets.st(), &mut out)
            .unwrap();
        (n, x, out)
    }

    fn reply(t: &mut Tracker, sets: &mut Sets, tag: u8, body: &[u8]) -> Action {
        t.server_message(tag, body, &mut sets.st()).unwrap()
    }

    #[test]
    fn pipelined_queries_and_syncs_end_at_the_last_ready_for_query() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        let mut buf = msg(b'Q', b"SELECT 1\0");
        buf.extend(msg(b'P', b"\0SELECT 2\0\0\0"));
        buf.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        buf.extend(msg(b'E', b"\0\0\0\0\0"));
        let (n, terminated, out) = feed(&mut t, &mut sets, &buf);
        assert_eq!((n, terminated), (buf.len(), false));
        assert!(out.is_empty(), "nothing to rewrite: bytes go as they are");
        feed(&mut t, &mut sets, &msg(b'S', b""));
        for (tag, body) in [
            (b'T', &b""[..]),
            (b'D', b""),
            (b'C', b"SELECT 1\0"),
            (b'Z', b"I"),
        ] {
            assert_eq!(reply(&mut t, &mut sets, tag, body), Action::Forward);
        }
        assert!(!t.at_boundary());
        for (tag, body) in [
            (b'1', &b""[..]),
            (b'2', b""),
            (b'C', b"SELECT 1\0"),
            (b'Z', b"I"),
        ] {
            assert_eq!(reply(&mut t, &mut sets, tag, body), Action::Forward);
        }
        assert!(t.at_boundary());
        assert!(!t.effect.reset);
    }

    #[test]
    fn reset_leaves_nothing_of_the_last_transaction() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        let mut buf = msg(b'Q', b"SET work_mem = '8MB'\0");
        buf.extend(msg(b'E', b"\0\0\0\0\0"));
        feed(&mut t, &mut sets, &buf);
        assert!(!t.at_boundary() && t.effect.settings);
        t.reset();
        assert!(t.at_boundary());
        assert_eq!(t.effect, Effect::default());
        assert!(!t.holding() && t.resend().is_none());
    }

    #[test]
    fn terminate_stops_forwarding_and_unknown_tags_are_violations() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        let mut buf = msg(b'Q', b"SELECT 1\0");
        let q_len = buf.len();
        buf.extend(msg(b'X', b""));
        let (n, terminated, _) = feed(&mut t, &mut sets, &buf);
        assert_eq!((n, terminated), (q_len, true));
        let mut out = BytesMut::new();
        assert!(matches!(
            Tracker::new().client_messages(&msg(b'?', b""), 1024, &mut sets.st(), &mut out),
            Err(RelayError::Refused(_))
        ));
    }

    #[test]
    fn session_changing_statements_mark_the_server_for_reset() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        feed(&mut t, &mut sets, &msg(b'Q', b"SET work_mem = '1GB'\0"));
        assert!(t.effect.settings && !t.effect.reset);
        feed(&mut t, &mut sets, &msg(b'Q', b"DO $$ BEGIN END $$\0"));
        assert!(t.effect.reset);
        // A prepared statement's effect counts when it is bound, not parsed.
        let mut t = Tracker::new();
        let parse = msg(b'P', b"s1\0SELECT set_config('a.b', 'c', false)\0\0\0");
        feed(&mut t, &mut sets, &parse);
        assert!(!t.effect.settings);
        feed(&mut t, &mut sets, &msg(b'B', b"\0s1\0\0\0\0\0\0\0"));
        assert!(t.effect.settings);
        assert_eq!(t.effect.custom, ["a.b"]);
    }

    #[test]
    fn a_query_is_judged_whole_even_past_a_nul_inside() {
        // PostgreSQL refuses such a message; were it ever to run what follows
        // the first NUL, the guard has seen that part too.
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        feed(
            &mut t,
            &mut sets,
            &msg(b'Q', b"SELECT 1\0SELECT pg_advisory_lock(1)\0"),
        );
        assert!(t.effect.reset);
        let mut t = Tracker::new();
        feed(&mut t, &mut sets, &msg(b'Q', b"SELECT 1\0"));
        assert_eq!(t.effect, Effect::default());
        // No NUL at all: the whole body.
        feed(&mut t, &mut sets, &msg(b'Q', b"SET work_mem = '1GB'"));
        assert!(t.effect.settings);
    }

    #[test]
    fn statements_like_the_last_clean_one_but_in_words_are_judged() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        for q in [&b"SELECT 1 FROM t\0"[..], b"SELECT 23 FROM t\0"] {
            feed(&mut t, &mut sets, &msg(b'Q', q));
            assert_eq!(t.effect, Effect::default());
        }
        let set = msg(b'Q', b"SELECT set_config('a.b', '1', false) FROM t\0");
        feed(&mut t, &mut sets, &set);
        assert_eq!(t.effect.custom, ["a.b"], "judged: it sets a setting");
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        feed(&mut t, &mut sets, &msg(b'P', b"\0SELECT $1 FROM t\0\0\0"));
        feed(&mut t, &mut sets, &msg(b'P', b"\0SET work_mem = 1\0\0\0"));
        feed(&mut t, &mut sets, &msg(b'B', b"\0\0\0\0\0\0\0\0"));
        assert!(t.effect.settings, "the second Parse was judged");
    }

    #[test]
    fn an_unnamed_parse_is_judged_again_unless_the_scan_passed_it() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        // Passed by the scan: sent again, it stands as it came.
        let clean = msg(b'P', b"\0SELECT 1\0\0\0");
        for _ in 0..2 {
            let (n, _, out) = feed(&mut t, &mut sets, &clean);
            assert_eq!(n, clean.len());
            assert!(out.is_empty(), "forwarded as it came");
        }
        assert_eq!(sets.client.unnamed(), Some(&b"SELECT 1\0\0\0"[..]));
        // Passed by the parser under one policy: judged again under the next.
        let flagged = msg(b'P', b"\0SELECT set_config('app.other', 'x', false)\0\0\0");
        let (_, _, out) = feed(&mut t, &mut sets, &flagged);
        assert!(out.is_empty());
        sets.policy.tenant_setting = "app.other";
        let (_, _, out) = feed(&mut t, &mut sets, &flagged);
        assert!(
            out.starts_with(FAILING_PARSE),
            "now it sets the tenant setting"
        );
        // A refused Parse leaves the last clean one standing for the next.
        feed(&mut t, &mut sets, &clean);
        assert_eq!(sets.client.unnamed(), Some(&b"SELECT 1\0\0\0"[..]));
    }

    #[test]
    fn an_unnamed_parse_the_server_failed_is_sent_again_in_full() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        let mut buf = msg(b'P', b"\0SELEC 1\0\0\0");
        buf.extend(msg(b'S', b""));
        feed(&mut t, &mut sets, &buf);
        reply(&mut t, &mut sets, b'E', b"C42601\0\0");
        reply(&mut t, &mut sets, b'Z', b"I");
        assert_eq!(sets.client.unnamed(), None, "undone with its error");
        // The same bytes again: the client's statement again, forwarded as it came.
        let (n, _, out) = feed(&mut t, &mut sets, &buf);
        assert_eq!((n, out.is_empty()), (buf.len(), true));
        assert_eq!(sets.client.unnamed(), Some(&b"SELEC 1\0\0\0"[..]));
        assert!(!t.passes(b'D'), "its ParseComplete is owed first");
    }

    #[test]
    fn results_pass_unexamined_only_inside_a_clients_result() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        t.own_query();
        feed(&mut t, &mut sets, &msg(b'Q', b"SELECT 1\0"));
        for tag in [b'T', b'D', b'C'] {
            assert!(
                !t.passes(tag),
                "the result of the proxy's own query is swallowed"
            );
            assert_eq!(reply(&mut t, &mut sets, tag, b"\0\0"), Action::Swallow);
        }
        reply(&mut t, &mut sets, b'Z', b"I");
        for tag in [b'T', b'D', b'C'] {
            assert!(t.passes(tag));
            assert_eq!(reply(&mut t, &mut sets, tag, b"\0\0"), Action::Forward);
        }
        assert!(!t.passes(b'Z') && !t.passes(b'E'), "these end or fail it");
        reply(&mut t, &mut sets, b'Z', b"I");
        let mut buf = msg(b'P', b"\0SELECT 1\0\0\0");
        buf.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        buf.extend(msg(b'E', b"\0\0\0\0\0"));
        buf.extend(msg(b'S', b""));
        feed(&mut t, &mut sets, &buf);
        assert!(!t.passes(b'D'), "a ParseComplete is owed first");
        reply(&mut t, &mut sets, b'1', b"");
        reply(&mut t, &mut sets, b'2', b"");
        assert!(t.passes(b'D'));
        assert_eq!(reply(&mut t, &mut sets, b'D', b"\0\0"), Action::Forward);
        assert!(!t.passes(b'C'), "an Execute's command tag is tracked");
        reply(&mut t, &mut sets, b'C', b"SELECT 1\0");
        assert!(!t.passes(b'D'), "the Sync's ReadyForQuery is owed now");
    }
    #[test]
    fn named_statements_are_translated_and_prepared_once_per_server() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        let mut buf = msg(b'P', b"s1\0SELECT 1\0\0\0");
        buf.extend(msg(b'B', b"\0s1\0\0\0\0\0\0\0"));
        buf.extend(msg(b'S', b""));
        let (_, _, out) = feed(&mut t, &mut sets, &buf);
        let statement = Statement::new(b"ns", b"SELECT 1\0\0\0", Effect::default());
        assert!(
            out.starts_with(&statement.parse),
            "the Parse goes out under the proxy's name"
        );
        assert!(
            !out.windows(3).any(|w| w == b"s1\0"),
            "the client's name never reaches the server"
        );
        // On a second server-side use nothing is prepared again, and the
        // client's own Parse under another name is answered by the proxy.
        let mut t = Tracker::new();
        let (_, _, out) = feed(&mut t, &mut sets, &msg(b'P', b"s2\0SELECT 1\0\0\0"));
        assert!(out.is_empty() || !out.starts_with(b"P"));
        let mut fakes = BytesMut::new();
        t.due_fakes(&mut fakes);
        assert_eq!(&fakes[..], PARSE_COMPLETE);
    }

    #[test]
    fn an_error_skips_to_sync_and_undoes_what_was_skipped() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        let mut buf = msg(b'P', b"bad\0SELEC\0\0\0");
        buf.extend(msg(b'P', b"good\0SELECT 1\0\0\0"));
        feed(&mut t, &mut sets, &buf);
        assert_eq!(sets.client.len(), 2);
        let err = b"SERROR\0C42601\0Msyntax error\0\0";
        assert_eq!(reply(&mut t, &mut sets, b'E', err), Action::Forward);
        assert!(sets.client.is_empty(), "neither Parse took effect");
        assert!(sets.server.is_empty());
        // Until the client's Sync, its messages are ignored by the server.
        feed(&mut t, &mut sets, &msg(b'B', b"\0good\0\0\0\0\0\0\0"));
        feed(&mut t, &mut sets, &msg(b'S', b""));
        assert_eq!(reply(&mut t, &mut sets, b'Z', b"I"), Action::Forward);
        assert!(t.at_boundary());
    }

    #[test]
    fn a_refused_message_fails_on_the_server_with_the_clients_error() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        let mut buf = msg(b'B', b"\0nope\0\0\0\0\0\0\0");
        buf.extend(msg(b'S', b""));
        let (_, _, out) = feed(&mut t, &mut sets, &buf);
        assert!(out.starts_with(FAILING_PARSE));
        let mut frames = Frames::new(FAILING_PARSE, 1024);
        assert_eq!(frames.next().unwrap().unwrap().end, FAILING_PARSE.len());
        let Action::Replace(shown) = reply(&mut t, &mut sets, b'E', b"C42601\0\0") else {
            panic!("the server's syntax error must be replaced");
        };
        assert_eq!(
            error_text(&shown[5..]),
            "26000: prepared statement \"nope\" does not exist"
        );
    }

    #[test]
    fn syncs_sent_during_copy_in_get_no_reply() {
        let (mut t, mut sets) = (Tracker::new(), Sets::new());
        let mut buf = msg(b'P', b"\0COPY t FROM STDIN\0\0\0");
        buf.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        buf.extend(msg(b'E', b"\0\0\0\0\0"));
        buf.extend(msg(b'S', b""));
        feed(&mut t, &mut sets, &buf);
        reply(&mut t, &mut sets, b'1', b"");
        reply(&mut t, &mut sets, b'2', b"");
        reply(&mut t, &mut sets, b'G', b"\0\0\0");
        let mut buf = msg(b'd', b"row\n");
        buf.extend(msg(b'c', b""));
        buf.extend(msg(b'S', b""));
        feed(&mut t, &mut sets, &buf);
        reply(&mut t, &mut sets, b'C', b"COPY 1\0");
        reply(&mut t, &mut sets, b'Z', b"I");
        assert!(t.at_boundary());
    }

    #[test]
    fn error_text_reads_code_and_message() {
        let body = b"SERROR\0C42704\0Mrole \"x\" does not exist\0\0";
        assert_eq!(error_text(body), "42704: role \"x\" does not exist");
    }
}
