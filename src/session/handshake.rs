//! The first packets of a connection, before authentication: SSL and GSSAPI
//! encryption requests (answered `N` for now), then a StartupMessage or a
//! CancelRequest. Length-checked before anything is allocated.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::startup::{self, Initial, StartupError, StartupMessage};

pub enum Handshake {
    Startup(StartupMessage),
    Cancel { process_id: i32, secret: Vec<u8> },
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("client sent more than two encryption requests")]
    TooManyRequests,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads packets until a StartupMessage or CancelRequest arrives.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    max_len: usize,
) -> Result<Handshake, HandshakeError> {
    // A client may ask for SSL, then for GSSAPI (or the reverse), before starting.
    for _ in 0..3 {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let mut body = vec![0u8; startup::body_len(len, max_len)?];
        stream.read_exact(&mut body).await?;
        match startup::parse(&body)? {
            Initial::SslRequest | Initial::GssEncRequest => stream.write_all(b"N").await?,
            Initial::Cancel { process_id, secret } => {
                return Ok(Handshake::Cancel { process_id, secret });
            }
            Initial::Startup(msg) => return Ok(Handshake::Startup(msg)),
        }
    }
    Err(HandshakeError::TooManyRequests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::startup::{PROTOCOL_3_0, SSL_REQUEST_CODE};

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut p = ((rest.len() + 8) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(rest);
        p
    }

    #[tokio::test]
    async fn ssl_request_is_declined_then_startup_read() {
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        let mut bytes = packet(SSL_REQUEST_CODE, b"");
        bytes.extend(packet(PROTOCOL_3_0, b"user\0u\0\0"));
        client.write_all(&bytes).await.unwrap();
        let Handshake::Startup(m) = handshake(&mut proxy, 10_000).await.unwrap() else {
            panic!()
        };
        assert_eq!(m.user(), "u");
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
    }

    #[tokio::test]
    async fn oversized_and_garbage_packets_are_refused() {
        for bytes in [
            vec![0x7f, 0xff, 0xff, 0xff],
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            vec![0, 0, 0, 2],
        ] {
            let (mut client, mut proxy) = tokio::io::duplex(1024);
            client.write_all(&bytes).await.unwrap();
            drop(client);
            assert!(
                handshake(&mut proxy, 10_000).await.is_err(),
                "{bytes:?} accepted"
            );
        }
    }
}
