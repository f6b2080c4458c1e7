//! Named prepared statements under transaction pooling (DESIGN "Prepared
//! statements").
//!
//! A client's statement names mean nothing on the servers it borrows. Each
//! statement gets a proxy-wide name instead: a digest of the tenant namespace
//! (role and `search_path`), the query text and the parameter types. The same
//! statement therefore has the same name on every server and for every client of
//! the same namespace, and a statement prepared under one tenant's `search_path`
//! can never be bound under another's. Each client maps its own names to these
//! ([`ClientStatements`]); each server remembers which it has prepared, least
//! recently used first out ([`ServerStatements`]).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

/// Server-side names start with this; clients cannot create server statements
/// of their own, so nothing else on a server carries it.
const PREFIX: &str = "pgtenant_";

/// A statement as servers know it.
#[derive(Debug, PartialEq, Eq)]
pub struct Statement {
    /// The digest, also the key of [`ServerStatements`].
    pub id: u128,
    /// `pgtenant_<32 hex digits>`.
    pub name: Bytes,
    /// The `Parse` message that creates it under `name`, ready to write.
    pub parse: Bytes,
    /// What executing it does to session state.
    pub effect: Effect,
}

/// What a statement does to session state beyond its transaction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effect {
    /// It may change settings, which the proxy then learns from the server.
    pub settings: bool,
    /// It may leave state the proxy cannot follow: reset the server after.
    pub reset: bool,
    /// Custom settings it may set, asked for by name.
    pub custom: Vec<String>,
}

impl Effect {
    /// Adds what another statement does.
    pub fn merge(&mut self, other: &Effect) {
        self.reset |= other.reset;
        self.settings |= other.settings;
        for name in &other.custom {
            if !self.custom.contains(name) {
                self.custom.push(name.clone());
            }
        }
    }
}

impl Statement {
    /// `namespace` identifies what names resolve to (the tenant's role and
    /// `search_path`); `rest` is the client's `Parse` body after its name: the
    /// query, then the parameter type count and OIDs.
    pub fn new(namespace: &[u8], rest: &[u8], effect: Effect) -> Statement {
        let mut h = Sha256::new();
        h.update((namespace.len() as u64).to_be_bytes());
        h.update(namespace);
        h.update(rest);
        let digest = h.finalize();
        let id = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
        let name = Bytes::from(format!("{PREFIX}{id:032x}"));
        let mut parse = BytesMut::with_capacity(6 + name.len() + rest.len());
        parse.put_u8(b'P');
        parse.put_i32((4 + name.len() + 1 + rest.len()) as i32);
        parse.put_slice(&name);
        parse.put_u8(0);
        parse.put_slice(rest);
        Statement {
            id,
            name,
            parse: parse.freeze(),
            effect,
        }
    }

    /// Bytes held for this statement, for the memory bound in the README.
    pub fn size(&self) -> usize {
        std::mem::size_of::<Statement>() + self.name.len() + self.parse.len()
    }
}

/// One client's named statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    named: HashMap<Bytes, Arc<Statement>>,
    /// The body after the name of the client's last unnamed `Parse`, to re-parse
    /// it on another server (the buffer is reused: no allocation per `Parse`).
    unnamed: Vec<u8>,
    has_unnamed: bool,
    /// The keyword scan found nothing in `unnamed`'s query: the same bytes
    /// again need no judging (a verdict of the parser, which depends on the
    /// policy of the moment, is never reused).
    unnamed_clean: bool,
    unnamed_effect: Effect,
}

impl ClientStatements {
    /// `clean`: the keyword scan passed the query (`effect` is then empty).
    pub fn set_unnamed(&mut self, rest: &[u8], effect: Effect, clean: bool) {
        self.unnamed.clear();
        self.unnamed.extend_from_slice(rest);
        self.has_unnamed = true;
        self.unnamed_clean = clean;
        self.unnamed_effect = effect;
    }

    /// An unnamed `Parse` of the same body as the last one, whose query the
    /// keyword scan passed: it stands again, with no scan and no copy (drivers
    /// that do not prepare send the same text with every execution).
    pub fn reuse_unnamed(&mut self, rest: &[u8]) -> bool {
        let same = self.unnamed_clean && self.unnamed[..] == *rest;
        if same {
            self.has_unnamed = true;
        }
        same
    }

    pub fn unnamed_effect(&self) -> &Effect {
        &self.unnamed_effect
    }

    pub fn unnamed(&self) -> Option<&[u8]> {
        self.has_unnamed.then_some(&self.unnamed[..])
    }

    pub fn forget_unnamed(&mut self) {
        self.has_unnamed = false;
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.named.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.named.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.named.len()
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    pub fn insert(&mut self, name: Bytes, statement: Arc<Statement>) {
        self.named.insert(name, statement);
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.named.remove(name);
    }

    pub fn clear(&mut self) {
        self.named.clear();
    }
}

type DigestMap<V> = HashMap<u128, V, BuildHasherDefault<DigestHasher>>;

/// Statements whose result type changed under a pool's servers (DDL; the
/// server says `cached plan must not change result type`). Every server's copy
/// prepared before that is re-prepared at its next use, so the error met on
/// one server is not met again on the others.
#[derive(Debug, Default)]
pub struct Invalidations {
    /// Bumped at each invalidation; servers note it when they prepare.
    epoch: AtomicU64,
    /// Statement → the epoch it was invalidated at.
    at: Mutex<DigestMap<u64>>,
}

/// More invalidated statements than this and the oldest records go: a server
/// still holding such a statement then meets the error once more, and the
/// proxy re-prepares it then.
const MAX_INVALIDATIONS: usize = 4096;

impl Invalidations {
    fn now(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn invalidate(&self, id: u128) {
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if at.len() >= MAX_INVALIDATIONS {
            at.retain(|_, e| *e + (MAX_INVALIDATIONS as u64) / 2 > epoch);
        }
        at.insert(id, epoch);
    }

    /// Checks a copy of `id` known good as of epoch `checked`: `None` if `id`
    /// was invalidated since, else the epoch it is now known good as of. The
    /// lock is taken only when some statement was invalidated since `checked`,
    /// and the caller stores the new epoch, so each copy pays it once.
    fn check(&self, id: u128, checked: u64) -> Option<u64> {
        let now = self.now();
        if now == checked {
            return Some(now);
        }
        let at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        match at.get(&id) {
            Some(&e) if e > checked => None,
            _ => Some(now),
        }
    }
}

/// One statement prepared on a server.
#[derive(Debug)]
struct Prepared {
    last_use: u64,
    name: Bytes,
    /// [`Invalidations`] epoch as of which it is known usable.
    epoch: u64,
}

/// The statements one server has prepared, by digest.
#[derive(Debug, Default)]
pub struct ServerStatements {
    prepared: DigestMap<Prepared>,
    clock: u64,
    /// Prepared on the server but no longer usable (its result type changed):
    /// to close before the next use of this server, or before preparing again.
    stale: Vec<Bytes>,
    invalidations: Arc<Invalidations>,
}

impl ServerStatements {
    /// A server's set, sharing its pool's record of invalidated statements.
    pub fn new(invalidations: Arc<Invalidations>) -> Self {
        ServerStatements {
            invalidations,
            ..Self::default()
        }
    }

    /// Whether the server has `id`, usable; marks it used. A copy invalidated
    /// since it was prepared is noted stale and reported missing.
    pub fn touch(&mut self, id: u128) -> bool {
        self.clock += 1;
        let Some(entry) = self.prepared.get_mut(&id) else {
            return false;
        };
        let Some(good_as_of) = self.invalidations.check(id, entry.epoch) else {
            self.mark_stale(id);
            return false;
        };
        entry.epoch = good_as_of;
        entry.last_use = self.clock;
        true
    }

    /// Records `statement` as prepared. When that goes over `limit`, the least
    /// recently used one is forgotten and returned, for the caller to close.
    pub fn insert(&mut self, statement: &Statement, limit: usize) -> Option<(u128, Bytes)> {
        let evicted = if self.prepared.len() >= limit.max(1) {
            let oldest = self
                .prepared
                .iter()
                .min_by_key(|(_, p)| p.last_use)
                .map(|(&id, _)| id)
                .expect("limit is at least 1");
            self.prepared.remove(&oldest).map(|p| (oldest, p.name))
        } else {
            None
        };
        self.restore(statement.id, statement.name.clone());
        evicted
    }

    /// Records a statement the server has (again, when its `Close` was skipped
    /// by an earlier error).
    pub fn restore(&mut self, id: u128, name: Bytes) {
        self.clock += 1;
        let entry = Prepared {
            last_use: self.clock,
            name,
            epoch: self.invalidations.now(),
        };
        self.prepared.insert(id, entry);
    }

    pub fn remove(&mut self, id: u128) {
        self.prepared.remove(&id);
    }

    /// The server said `id`'s result type changed: every server of the pool
    /// re-prepares it, this one after closing its copy.
    pub fn invalidate(&mut self, id: u128) {
        self.invalidations.invalidate(id);
        self.mark_stale(id);
    }

    /// Forgets `id` and notes its name for closing.
    fn mark_stale(&mut self, id: u128) {
        if let Some(p) = self.prepared.remove(&id) {
            self.stale.push(p.name);
        }
    }

    pub fn take_stale(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.stale)
    }

    pub fn restore_stale(&mut self, name: Bytes) {
        self.stale.push(name);
    }

    /// After `DISCARD ALL`: the server has none left.
    pub fn clear(&mut self) {
        self.prepared.clear();
        self.stale.clear();
    }

    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }
}

/// The keys are SHA-256 prefixes, already uniform: their low bits are the hash.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// `Close` of a server statement.
pub fn close_message(buf: &mut BytesMut, name: &[u8]) {
    buf.put_u8(b'C');
    buf.put_i32((4 + 1 + name.len() + 1) as i32);
    buf.put_u8(b'S');
    buf.put_slice(name);
    buf.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    const REST: &[u8] = b"SELECT * FROM products WHERE id = $1\0\0\x01\0\0\0\x17";

    #[test]
    fn names_depend_on_namespace_query_and_types() {
        let a = Statement::new(b"acme", REST, Effect::default());
        assert_eq!(a, Statement::new(b"acme", REST, Effect::default()));
        assert_ne!(a.id, Statement::new(b"globex", REST, Effect::default()).id);
        assert_ne!(
            a.id,
            Statement::new(b"acme", b"SELECT 1\0\0\0", Effect::default()).id
        );
        let untyped = b"SELECT * FROM products WHERE id = $1\0\0\0";
        assert_ne!(a.id, Statement::new(b"acme", untyped, Effect::default()).id);
        // The namespace length is hashed, so shifting bytes between the two differs.
        assert_ne!(
            Statement::new(b"ab", b"c\0\0\0", Effect::default()).id,
            Statement::new(b"a", b"bc\0\0\0", Effect::default()).id
        );
        assert!(a.name.starts_with(PREFIX.as_bytes()));
        assert!(a.name.len() < 64, "fits NAMEDATALEN");
    }

    #[test]
    fn parse_message_is_well_formed() {
        let s = Statement::new(b"acme", REST, Effect::default());
        let mut buf = BytesMut::from(&s.parse[..]);
        let msg = postgres_protocol::message::frontend::parse;
        let mut expected = BytesMut::new();
        let name = std::str::from_utf8(&s.name).unwrap();
        msg(
            name,
            "SELECT * FROM products WHERE id = $1",
            [23],
            &mut expected,
        )
        .unwrap();
        assert_eq!(buf.split(), expected);
    }

    #[test]
    fn server_statements_evict_the_least_recently_used() {
        let s: Vec<Statement> = (0..3)
            .map(|i| {
                Statement::new(
                    b"ns",
                    format!("SELECT {i}\0\0\0").as_bytes(),
                    Effect::default(),
                )
            })
            .collect();
        let mut server = ServerStatements::default();
        assert_eq!(server.insert(&s[0], 2), None);
        assert_eq!(server.insert(&s[1], 2), None);
        assert!(server.touch(s[0].id));
        let evicted = server.insert(&s[2], 2).unwrap();
        assert_eq!(evicted, (s[1].id, s[1].name.clone()));
        assert!(!server.touch(s[1].id));
        assert!(server.touch(s[0].id) && server.touch(s[2].id));
        assert_eq!(server.len(), 2);
        server.clear();
        assert!(server.is_empty());
    }

    #[test]
    fn an_invalidated_statement_is_stale_on_every_server_of_the_pool() {
        let [a, b] = ["SELECT 1\0\0\0", "SELECT 2\0\0\0"]
            .map(|q| Statement::new(b"ns", q.as_bytes(), Effect::default()));
        let shared = Arc::new(Invalidations::default());
        let [mut one, mut two] = [0, 1].map(|_| ServerStatements::new(Arc::clone(&shared)));
        for server in [&mut one, &mut two] {
            server.insert(&a, 10);
            server.insert(&b, 10);
        }
        one.invalidate(a.id);
        assert_eq!(one.take_stale(), std::slice::from_ref(&a.name));
        // The other server learns it at its next use, and only for `a`.
        assert!(two.touch(b.id));
        assert_eq!(
            two.prepared[&b.id].epoch,
            shared.now(),
            "checked once, stamped"
        );
        assert!(!two.touch(a.id));
        assert_eq!(two.take_stale(), std::slice::from_ref(&a.name));
        // Prepared again after the invalidation: usable.
        two.insert(&a, 10);
        assert!(two.touch(a.id));
    }
}
