//! Reading whole messages and writing errors on the client stream.

use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::server::TlsStream;

use crate::error::ClientError;
use crate::net::{WriteNow, send};
use crate::protocol::frame::{FrameError, HEADER_LEN, peek_header};
use crate::workers::Socket;

/// A client connection the relay can wait on without a buffer.
pub trait ClientStream: AsyncRead + AsyncWrite + WriteNow + Unpin + Send {
    /// Ready when a read may return something (or EOF). An idle session waits
    /// here holding no buffer, and takes one only when its client speaks.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;

    /// Reads what has arrived into `buf`'s spare room without waiting, as
    /// [`WriteNow`] writes. `0` also at EOF: the async read that follows
    /// reports it.
    fn read_now(&mut self, buf: &mut BytesMut) -> std::io::Result<usize>;

    /// Reads what has arrived into `buf`, waiting until something has: `0`
    /// at EOF.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<std::io::Result<usize>>;
}

impl ClientStream for Socket {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Socket::poll_read_ready(self, cx)
    }

    fn read_now(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        Socket::read_now(self, buf)
    }

    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<std::io::Result<usize>> {
        Socket::poll_read_into(self, cx, buf)
    }
}

/// TLS may hold decrypted bytes the socket no longer shows, so a TLS session
/// reads at once, keeping its buffer (rustls keeps its own buffers anyway).
impl ClientStream for Box<TlsStream<Socket>> {
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn read_now(&mut self, _: &mut BytesMut) -> std::io::Result<usize> {
        Ok(0)
    }

    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<std::io::Result<usize>> {
        crate::net::poll_read_into(self, cx, buf)
    }
}

impl WriteNow for Box<TlsStream<Socket>> {
    fn write_now(&self, _: &[u8]) -> std::io::Result<usize> {
        Ok(0)
    }
}

/// The tag and length of the complete message `buf` starts with, if it does.
pub fn whole_message(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, FrameError> {
    Ok(peek_header(buf, max_len)?.filter(|&(_, len)| buf.len() >= len))
}

/// Reads until `buf` starts with one complete message no longer than `max_len`.
/// Returns its tag and length, or `None` at a clean EOF between messages.
pub async fn fill_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<(u8, usize)>, SessionIoError> {
    loop {
        match peek_header(buf, max_len)? {
            Some((tag, len)) if buf.len() >= len => return Ok(Some((tag, len))),
            Some((_, len)) => buf.reserve(len - buf.len()),
            None => buf.reserve(HEADER_LEN),
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(SessionIoError::Truncated)
            };
        }
    }
}

/// Reads one whole message and removes it from `buf`: tag and body.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<(u8, BytesMut), SessionIoError> {
    let (tag, len) = fill_message(stream, buf, max_len)
        .await?
        .ok_or(SessionIoError::Truncated)?;
    let mut msg = buf.split_to(len);
    msg.advance(HEADER_LEN);
    Ok((tag, msg))
}

/// Writes a client-facing error. The one way errors reach clients.
pub async fn send_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    err: &ClientError,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    err.encode(&mut buf);
    send(stream, &buf).await
}

/// Sends a fatal error and closes so the client reads it: the write side is shut
/// first and the client's unread bytes are drained (for at most a second), since
/// closing a socket with unread input resets it and the error would be lost.
pub async fn close_with_error<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    err: &ClientError,
) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        send_error(stream, err).await?;
        stream.shutdown().await?;
        // On the heap: a session's future is sized by its largest state.
        let mut sink = vec![0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[derive(Debug, thiserror::Error)]
pub enum SessionIoError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
