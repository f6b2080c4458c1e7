//! The relay's per-message work, without sockets: walking frame headers, and
//! forwarding a typical response batch as it is (one scan, one copy into the
//! client's write buffer, as the relay's unedited path does).
//!
//! Run: `cargo bench --bench hot_path`

use bytes::{BufMut, BytesMut};
use divan::{Bencher, black_box};
use pgtenant::protocol::frame::Frames;

fn main() {
    divan::main();
}

const MAX_MESSAGE: usize = 1 << 30;

fn message(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(body);
}

/// What PostgreSQL answers to a `SELECT` of `rows` rows of two columns:
/// RowDescription, DataRows, CommandComplete, ReadyForQuery.
fn response(rows: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    let mut desc = Vec::new();
    desc.extend_from_slice(&2i16.to_be_bytes());
    for name in [&b"aid"[..], b"abalance"] {
        desc.extend_from_slice(name);
        desc.push(0);
        desc.extend_from_slice(&[0; 18]);
    }
    message(&mut buf, b'T', &desc);
    for i in 0..rows {
        let mut row = Vec::new();
        row.extend_from_slice(&2i16.to_be_bytes());
        for value in [i.to_string(), "-2318".to_string()] {
            row.extend_from_slice(&(value.len() as i32).to_be_bytes());
            row.extend_from_slice(value.as_bytes());
        }
        message(&mut buf, b'D', &row);
    }
    message(&mut buf, b'C', format!("SELECT {rows}\0").as_bytes());
    message(&mut buf, b'Z', b"I");
    buf
}

/// Walking the headers of a response batch (the relay does this for every
/// server read, to find `ReadyForQuery` and errors).
#[divan::bench(args = [1, 10, 100, 1000])]
fn scan_frames(bencher: Bencher, rows: usize) {
    let batch = response(rows);
    bencher
        .counter(divan::counter::BytesCount::new(batch.len()))
        .bench(|| {
            let mut frames = Frames::new(black_box(&batch), MAX_MESSAGE);
            let mut ready = 0;
            for frame in &mut frames {
                if frame.unwrap().tag == b'Z' {
                    ready += 1;
                }
            }
            (ready, frames.consumed())
        });
}

/// A response batch relayed unedited: scanned, then copied once into the
/// client's write buffer (reused, so nothing is allocated per batch).
#[divan::bench(args = [1, 10, 100, 1000])]
fn relay_batch(bencher: Bencher, rows: usize) {
    let batch = response(rows);
    let mut out = BytesMut::with_capacity(batch.len());
    bencher
        .counter(divan::counter::BytesCount::new(batch.len()))
        .bench_local(|| {
            out.clear();
            let buf = black_box(&batch[..]);
            let mut frames = Frames::new(buf, MAX_MESSAGE);
            for frame in &mut frames {
                black_box(frame.unwrap().tag);
            }
            out.extend_from_slice(&buf[..frames.consumed()]);
            out.len()
        });
}
