//! Writes that skip the readiness wait when the socket can take them at
//! once, for client and server sockets alike, and reads through `ReadBuf`.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::workers::Socket;

/// A socket that can take a write at once, past the event loop: a reply
/// that fits the socket's send buffer (nearly all of them) goes out in one
/// `send` without readiness bookkeeping. TLS never can (`0`): rustls must
/// see every byte.
pub trait WriteNow {
    /// How much of `bytes` the socket took; `0` when it would block.
    fn write_now(&self, bytes: &[u8]) -> io::Result<usize>;
}

impl WriteNow for Socket {
    fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        Socket::write_now(self, bytes)
    }
}

/// One read of `stream` appended to `buf` (at most [`crate::workers::CHUNK`]
/// bytes, the same stack chunk a [`Socket`] reads into): `0` at EOF. For
/// streams that only read through `ReadBuf` (TLS); a [`Socket`] reads
/// straight into the buffer ([`Socket::poll_read_into`]).
pub fn poll_read_into<R: AsyncRead + Unpin>(
    stream: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut chunk = [MaybeUninit::<u8>::uninit(); crate::workers::CHUNK];
    let mut read = ReadBuf::uninit(&mut chunk);
    std::task::ready!(Pin::new(stream).poll_read(cx, &mut read))?;
    buf.extend_from_slice(read.filled());
    Poll::Ready(Ok(read.filled().len()))
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpStream, UnixStream};

    /// A connected pair of loopback sockets: (client, accepted side). Also
    /// for the session layer's tests.
    pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap());
        let (near, far) = tokio::join!(near, listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    #[tokio::test]
    async fn a_full_socket_takes_nothing_now_and_the_rest_waits_for_room() {
        let (near, mut far) = UnixStream::pair().unwrap();
        let mut near = Socket::from_unix(near).unwrap();
        // More than any socket buffer: the first try takes part, then 0.
        let bytes: Vec<u8> = (0..4 << 20).map(|i| i as u8).collect();
        let took = near.write_now(&bytes).unwrap();
        assert!(took > 0 && took < bytes.len(), "took {took}");
        assert_eq!(near.write_now(&bytes[took..]).unwrap(), 0);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        send_now(&mut near, &bytes).await.unwrap();
        drop(near);
        let got = reader.await.unwrap();
        // What the first two tries took, then all of it again.
        assert_eq!(got.len(), took + bytes.len());
        assert_eq!(&got[..took], &bytes[..took]);
        assert_eq!(&got[took..], &bytes[..]);
    }

    #[tokio::test]
    async fn a_closed_peer_fails_the_send_as_a_broken_pipe() {
        let (near, far) = UnixStream::pair().unwrap();
        let mut near = Socket::from_unix(near).unwrap();
        drop(far);
        let e = near.write_now(b"Z").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
        let e = send_now(&mut near, b"Z").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    }

    #[tokio::test]
    async fn a_reset_connection_fails_the_first_send() {
        let (mut near, far) = tcp_pair().await;
        // Closing with unread bytes and a zero linger sends a reset.
        near.write_all(b"unread").await.unwrap();
        far.set_zero_linger().unwrap();
        drop(far);
        // The reset arrives with the loopback's next turn.
        let mut byte = [0u8; 1];
        let _ = near.read(&mut byte).await;
        let mut near = Socket::from_tcp(near).unwrap();
        let e = near.write_now(b"Z").unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        );
        assert!(send_now(&mut near, b"Z").await.is_err());
    }
}
