//! Writes that go past tokio's reactor when the socket can take them at once,
//! for client and server sockets alike.

use std::io;
use std::os::fd::AsFd;

use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

/// A socket that can take a write at once, past the reactor: a reply that
/// fits the socket's send buffer (nearly all of them) goes out in one `send`
/// without tokio's readiness bookkeeping, about 300 instructions a
/// transaction. TLS never can (`0`): rustls must see every byte.
pub trait WriteNow {
    /// How much of `bytes` the socket took; `0` when it would block.
    fn write_now(&self, bytes: &[u8]) -> io::Result<usize>;
}

impl WriteNow for TcpStream {
    fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        zero_if_blocked(self.try_io(Interest::WRITABLE, || send_raw(self, bytes)))
    }
}

impl WriteNow for UnixStream {
    fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        zero_if_blocked(self.try_io(Interest::WRITABLE, || send_raw(self, bytes)))
    }
}

/// One `send` system call, made directly (rustix), not through glibc's
/// wrapper, which as a thread cancellation point costs two calls around the
/// system call (about 40 instructions). `EAGAIN` comes back as `WouldBlock`,
/// which `try_io` needs to see to clear tokio's readiness.
fn send_raw(socket: impl AsFd, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(
        socket,
        bytes,
        rustix::net::SendFlags::NOSIGNAL,
    )?)
}

/// A non-blocking try's count, `0` when it would block (the async path takes over).
fn zero_if_blocked(tried: io::Result<usize>) -> io::Result<usize> {
    match tried {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        other => other,
    }
}

/// Writes all of `bytes` and flushes: TLS may keep the tail of a write buffered
/// when the socket is full. On plain TCP the flush is a no-op.
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// [`send`], trying [`WriteNow::write_now`] first.
pub async fn send_now<S: AsyncWrite + WriteNow + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> io::Result<()> {
    let done = stream.write_now(bytes)?;
    if done == bytes.len() {
        return Ok(());
    }
    send(stream, &bytes[done..]).await
}
