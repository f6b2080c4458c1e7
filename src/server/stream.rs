//! A server connection's socket: plain TCP, TLS over TCP, or a Unix-domain
//! socket. Dispatch is one match per poll; a plain connection pays nothing else.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;

use crate::net::{WriteNow, send_now};
use crate::workers::Socket;

pub enum ServerStream {
    /// TCP or Unix-domain.
    Plain(Socket),
    Tls(Box<TlsStream<TlsSocket>>),
}

/// Dispatches one expression over the two kinds of stream.
macro_rules! each {
    ($stream:expr, $s:ident => $e:expr) => {
        match $stream {
            ServerStream::Plain($s) => $e,
            ServerStream::Tls($s) => $e,
        }
    };
}

impl ServerStream {
    /// Whether the socket has nothing to read and is not closed, as an idle
    /// server's must be (see [`Socket::quiet`]).
    pub fn quiet(&self) -> bool {
        match self {
            ServerStream::Plain(s) => s.quiet(),
            ServerStream::Tls(s) => s.get_ref().0.0.as_ref().is_some_and(Socket::quiet),
        }
    }

    /// The same socket, in the epoll set of the worker this runs on (see
    /// [`crate::workers`]). An error leaves the connection unusable.
    pub fn rehome(self) -> io::Result<ServerStream> {
        Ok(match self {
            ServerStream::Plain(s) => ServerStream::Plain(s.rehome()?),
            ServerStream::Tls(mut s) => {
                // The TLS session stays; only the socket under it moves.
                let socket = &mut s.get_mut().0.0;
                let moved = match socket.take() {
                    Some(tcp) => tcp.rehome()?,
                    None => return Err(gone()),
                };
                *socket = Some(moved);
                ServerStream::Tls(s)
            }
        })
    }

    /// Reads what has arrived into `buf`, waiting until something has: `0`
    /// at EOF.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            ServerStream::Plain(s) => s.poll_read_into(cx, buf),
            ServerStream::Tls(s) => crate::net::poll_read_into(s, cx, buf),
        }
    }

    /// Writes all of `bytes` and flushes: TLS may keep the tail of a write
    /// buffered when the socket is full. A plain socket first tries one
    /// non-blocking write ([`WriteNow`]).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        send_now(self, bytes).await
    }
}

impl WriteNow for ServerStream {
    fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            ServerStream::Plain(s) => s.write_now(bytes),
            ServerStream::Tls(_) => Ok(0),
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// The TCP socket under a server's TLS session. An `Option` so that the
/// socket can be moved to another worker's reactor without ending the
/// session (`None` only if that move failed).
pub struct TlsSocket(pub Option<Socket>);

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "server socket was lost moving between workers",
    )
}

/// Polls the socket under a TLS session; a socket lost in a move fails.
macro_rules! live {
    ($socket:expr, $s:ident => $poll:expr) => {
        match &mut $socket.get_mut().0 {
            Some($s) => $poll,
            None => Poll::Ready(Err(gone())),
        }
    };
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        live!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        live!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        live!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
