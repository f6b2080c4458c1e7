//! Buffers and transaction state, lent to sessions only while they work.
//! An idle client holds neither (PgBouncer's discipline): thousands of idle
//! connections cost a few hundred bytes each, not the 16 KiB or more their
//! buffers would. A worker thread keeps what its sessions gave back, so
//! taking one is a `Vec::pop`, not an allocation.

use std::cell::RefCell;

use bytes::BytesMut;

use super::tracker::Tracker;

/// What a lent buffer (a client's, or a transaction's server buffer) starts
/// with: a typical transaction reads and writes in one go within this.
pub const SIZE: usize = 8 * 1024;
/// Bigger buffers (grown by a large result) are freed, not kept.
const KEEP_AT_MOST: usize = 64 * 1024;
/// Spares of each kind per worker thread (about the sessions one worker
/// has in transactions at once).
const SPARES: usize = 32;

thread_local! {
    static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    // Boxed: lent out as a pointer, not copied into and out of each session.
    #[allow(clippy::vec_box)]
    static WORK: RefCell<Vec<Box<Work>>> = const { RefCell::new(Vec::new()) };
}

fn keep<T>(spares: &'static std::thread::LocalKey<RefCell<Vec<T>>>, spare: T) {
    spares.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARES {
            s.push(spare);
        }
    });
}

/// What one transaction works with, beside the client's own buffer.
pub struct Work {
    pub t: Tracker,
    /// Bytes read from the server and not yet forwarded.
    pub sbuf: BytesMut,
    /// What the proxy composes for one write to a server (context + client bytes).
    pub out: BytesMut,
    /// What the proxy composes for one write to the client, when server bytes
    /// cannot be forwarded as they are.
    pub cout: BytesMut,
    /// Counted during the transaction, added to the metrics at its end.
    pub counts: Counts,
}

#[derive(Default)]
pub struct Counts {
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
}

/// Clean state for one transaction.
pub fn work() -> Box<Work> {
    WORK.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| {
        Box::new(Work {
            t: Tracker::new(),
            sbuf: BytesMut::with_capacity(SIZE),
            out: BytesMut::new(),
            cout: BytesMut::new(),
            counts: Counts::default(),
        })
    })
}

/// Takes back a transaction's state once it is over; what a big result grew
/// is freed.
pub fn give_work(mut w: Box<Work>) {
    let held = w.t.footprint() + w.sbuf.capacity() + w.out.capacity() + w.cout.capacity();
    if held > KEEP_AT_MOST {
        return;
    }
    w.t.reset();
    w.sbuf.clear();
    w.counts = Counts::default();
    keep(&WORK, w);
}

/// Gives `buf` room to work in, if it has none.
pub fn take(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = BUFFERS
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(SIZE));
    }
}

/// Takes back `buf`'s memory if it holds no bytes; a buffer with unread bytes
/// stays with its session.
pub fn give(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let mut b = std::mem::take(buf);
    b.clear();
    // Reclaims the space that reads and `advance` left behind the cursor; a
    // buffer too small for that (grown by `extend`) is freed.
    if b.capacity() > KEEP_AT_MOST || !b.try_reclaim(SIZE) {
        return;
    }
    keep(&BUFFERS, b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn a_given_buffer_is_lent_again_whole() {
        let mut a = BytesMut::new();
        take(&mut a);
        assert!(a.capacity() >= SIZE);
        a.extend_from_slice(&[1; 100]);
        a.advance(100);
        let ptr = a.as_ptr() as usize - 100;
        give(&mut a);
        assert_eq!(a.capacity(), 0, "the session keeps nothing");
        let mut b = BytesMut::new();
        take(&mut b);
        assert_eq!(b.as_ptr() as usize, ptr, "the same memory, from the start");
        assert!(b.capacity() >= SIZE);
    }

    #[test]
    fn unread_bytes_and_big_buffers_are_not_taken_back() {
        let mut a = BytesMut::new();
        take(&mut a);
        a.extend_from_slice(b"pending");
        give(&mut a);
        assert_eq!(&a[..], b"pending");
        for size in [KEEP_AT_MOST * 2, 100] {
            let mut b = BytesMut::with_capacity(size);
            b.extend_from_slice(b"x");
            b.advance(1);
            give(&mut b);
            assert_eq!(b.capacity(), 0);
            let mut lent = BytesMut::new();
            take(&mut lent);
            assert_eq!(lent.capacity(), SIZE, "not lent again");
        }
    }
}
