//! The first packets of a connection, before authentication: TLS (after an
//! SSLRequest, or at once for PostgreSQL 17's direct TLS), a GSSAPI encryption
//! request (declined), then a StartupMessage or a CancelRequest. Length-checked
//! before anything is allocated.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::net::send;
use crate::protocol::startup::{self, Initial, StartupError, StartupMessage};
use crate::tls::{ALPN, ClientTls, Listener};
use crate::workers::Socket;

/// The first byte of a TLS ClientHello record; a length word never starts so.
const TLS_HANDSHAKE: u8 = 0x16;

pub enum Handshake {
    Plain(Socket, StartupMessage),
    /// With the `tls-server-end-point` data of the certificate this handshake used.
    Tls(Box<TlsStream<Socket>>, StartupMessage, Arc<[u8]>),
    Cancel {
        process_id: i32,
        secret: Vec<u8>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("client sent more than two encryption requests")]
    TooManyRequests,
    #[error("direct TLS connection, but TLS is not configured")]
    TlsOff,
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("direct TLS connection without ALPN \"postgresql\"")]
    NoAlpn,
    #[error("encryption request inside TLS")]
    RequestInsideTls,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads packets until a StartupMessage or CancelRequest arrives, switching to
/// TLS when asked and configured.
pub async fn handshake(
    mut tcp: Socket,
    tls: &ClientTls,
    max_len: usize,
) -> Result<Handshake, HandshakeError> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    if first[0] == TLS_HANDSHAKE {
        let listener = tls.listener().ok_or(HandshakeError::TlsOff)?;
        return over_tls(tcp, &listener, true, max_len).await;
    }
    // A client may ask for SSL, then for GSSAPI (or the reverse), before starting.
    for _ in 0..3 {
        match read_initial(&mut tcp, max_len).await? {
            Initial::SslRequest => match tls.listener() {
                Some(listener) => {
                    // Packets are read exactly, so bytes sent after the request in
                    // the clear go into the handshake and fail it, never into the session.
                    send(&mut tcp, b"S").await?;
                    return over_tls(tcp, &listener, false, max_len).await;
                }
                None => send(&mut tcp, b"N").await?,
            },
            Initial::GssEncRequest => send(&mut tcp, b"N").await?,
            Initial::Cancel { process_id, secret } => {
                return Ok(Handshake::Cancel { process_id, secret });
            }
            Initial::Startup(msg) => return Ok(Handshake::Plain(tcp, msg)),
        }
    }
    Err(HandshakeError::TooManyRequests)
}

/// The TLS handshake, then the startup packet or cancel request inside it.
async fn over_tls(
    tcp: Socket,
    listener: &Listener,
    direct: bool,
    max_len: usize,
) -> Result<Handshake, HandshakeError> {
    let mut stream = listener
        .acceptor
        .accept(tcp)
        .await
        .map_err(HandshakeError::Tls)?;
    // PostgreSQL requires ALPN on direct TLS, so a TLS connection meant for
    // another protocol is not taken for a PostgreSQL one.
    if direct && stream.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(HandshakeError::NoAlpn);
    }
    match read_initial(&mut stream, max_len).await? {
        Initial::Startup(msg) => Ok(Handshake::Tls(
            Box::new(stream),
            msg,
            Arc::clone(&listener.end_point),
        )),
        Initial::Cancel { process_id, secret } => Ok(Handshake::Cancel { process_id, secret }),
        Initial::SslRequest | Initial::GssEncRequest => Err(HandshakeError::RequestInsideTls),
    }
}

/// One length-prefixed packet, its length checked before the body is allocated.
async fn read_initial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    max_len: usize,
) -> Result<Initial, HandshakeError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let mut body = vec![0u8; startup::body_len(len, max_len)?];
    stream.read_exact(&mut body).await?;
    Ok(startup::parse(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tests::tcp_pair;
    use crate::protocol::startup::{PROTOCOL_3_0, SSL_REQUEST_CODE};
    use tokio::io::AsyncWriteExt;

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut p = ((rest.len() + 8) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(rest);
        p
    }

    #[tokio::test]
    async fn ssl_request_is_declined_without_tls_then_startup_read() {
        let (mut client, proxy) = tcp_pair().await;
        let mut bytes = packet(SSL_REQUEST_CODE, b"");
        bytes.extend(packet(PROTOCOL_3_0, b"user\0u\0\0"));
        client.write_all(&bytes).await.unwrap();
        let Handshake::Plain(_, m) = handshake(
            Socket::from_tcp(proxy).unwrap(),
            &ClientTls::disabled(),
            10_000,
        )
        .await
        .unwrap() else {
            panic!()
        };
        assert_eq!(m.user(), "u");
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
    }

    #[tokio::test]
    async fn oversized_garbage_and_tls_without_a_certificate_are_refused() {
        for bytes in [
            vec![0x7f, 0xff, 0xff, 0xff],
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            vec![0, 0, 0, 2],
            vec![TLS_HANDSHAKE, 3, 1, 0, 5, 1, 2, 3, 4, 5],
        ] {
            let (mut client, proxy) = tcp_pair().await;
            client.write_all(&bytes).await.unwrap();
            drop(client);
            assert!(
                handshake(
                    Socket::from_tcp(proxy).unwrap(),
                    &ClientTls::disabled(),
                    10_000
                )
                .await
                .is_err(),
                "{bytes:?} accepted"
            );
        }
    }
}
