//! A server connection's socket: plain TCP, TLS over TCP, or a Unix-domain
//! socket. Dispatch is one match per poll; a plain connection pays nothing else.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use crate::session::io::write_now;

pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TlsSocket>>),
    Unix(UnixStream),
}

/// Dispatches one expression over the three kinds of socket.
macro_rules! each {
    ($stream:expr, $s:ident => $e:expr) => {
        match $stream {
            ServerStream::Plain($s) => $e,
            ServerStream::Tls($s) => $e,
            ServerStream::Unix($s) => $e,
        }
    };
}

impl ServerStream {
    /// Whether the socket has nothing to read and is not closed, as an idle
    /// server's must be: a pending byte is a FATAL (terminated backend) and a
    /// zero-byte read is EOF. Costs a syscall only when tokio already saw the
    /// socket become readable.
    pub fn quiet(&self) -> bool {
        fn quiet(ready: io::Result<()>, read: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> bool {
            let would_block = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
            match ready {
                Err(e) if would_block(&e) => true,
                _ => matches!(read(&mut [0u8; 1]), Err(e) if would_block(&e)),
            }
        }
        let probe = || Ok(());
        match self {
            ServerStream::Plain(s) => quiet(s.try_io(Interest::READABLE, probe), |b| s.try_read(b)),
            ServerStream::Tls(s) => match &s.get_ref().0.0 {
                Some(s) => quiet(s.try_io(Interest::READABLE, probe), |b| s.try_read(b)),
                None => false,
            },
            ServerStream::Unix(s) => quiet(s.try_io(Interest::READABLE, probe), |b| s.try_read(b)),
        }
    }

    /// The same socket, registered with the reactor of the worker this runs
    /// on (see [`crate::workers`]): two `epoll_ctl` calls. An error leaves
    /// the connection unusable.
    pub fn rehome(self) -> io::Result<ServerStream> {
        Ok(match self {
            ServerStream::Plain(s) => ServerStream::Plain(TcpStream::from_std(s.into_std()?)?),
            ServerStream::Unix(s) => ServerStream::Unix(UnixStream::from_std(s.into_std()?)?),
            ServerStream::Tls(mut s) => {
                // The TLS session stays; only the socket under it moves.
                let socket = &mut s.get_mut().0.0;
                let moved = match socket.take() {
                    Some(tcp) => TcpStream::from_std(tcp.into_std()?)?,
                    None => return Err(gone()),
                };
                *socket = Some(moved);
                ServerStream::Tls(s)
            }
        })
    }

    /// Writes all of `bytes` and flushes: TLS may keep the tail of a write
    /// buffered when the socket is full. On plain TCP the flush is a no-op.
    /// A plain socket first tries a non-blocking write (see
    /// [`crate::session::io::write_now`]).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let done = match self {
            ServerStream::Plain(s) => write_now(s.try_write(bytes))?,
            ServerStream::Unix(s) => write_now(s.try_write(bytes))?,
            ServerStream::Tls(_) => 0,
        };
        if done == bytes.len() {
            return Ok(());
        }
        self.write_all(&bytes[done..]).await?;
        self.flush().await
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
pub struct TlsSocket(pub Option<TcpStream>);

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
