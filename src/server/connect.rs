//! Opening and authenticating a server connection.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::stream::TlsSocket;
use super::{CancelTarget, Server, ServerAddr, ServerError, ServerStream};
use crate::config::Cluster;
use crate::protocol::build;
use crate::workers::Socket;

/// Opens, authenticates and readies one server connection within the cluster's
/// `connect_timeout`. Cancel-safe: dropping the future just drops the socket.
pub async fn connect(cluster: &Cluster) -> Result<Server, ServerError> {
    tokio::time::timeout(cluster.connect_timeout, connect_inner(cluster))
        .await
        .map_err(|_| ServerError::Timeout(cluster.connect_timeout))?
}

/// A socket to the cluster (on this worker's epoll set, if this is a
/// worker), TLS not yet negotiated. Also the health probe's
/// reachability check.
pub async fn open(cluster: &Cluster) -> Result<(Socket, ServerAddr), ServerError> {
    let failed = |addr: String| move |source| ServerError::Connect { addr, source };
    if let Some(path) = cluster.socket_path() {
        let socket = UnixStream::connect(&path)
            .await
            .map_err(failed(path.display().to_string()))?;
        return Ok((Socket::from_unix(socket)?, ServerAddr::Unix(path.into())));
    }
    let addr = format!("{}:{}", cluster.host, cluster.port);
    let socket = TcpStream::connect(&addr).await.map_err(failed(addr))?;
    socket.set_nodelay(true)?;
    let peer = socket.peer_addr()?;
    Ok((Socket::from_tcp(socket)?, ServerAddr::Tcp(peer)))
}

async fn connect_inner(cluster: &Cluster) -> Result<Server, ServerError> {
    let (socket, peer) = open(cluster).await?;
    let mut stream = match peer {
        ServerAddr::Tcp(_) => negotiate_tls(socket, cluster).await?,
        // As libpq: no TLS on a Unix-domain socket (config allows only
        // `disable` and `prefer` there).
        ServerAddr::Unix(_) => ServerStream::Plain(socket),
    };

    let mut out = BytesMut::new();
    let params = [
        ("user", cluster.user.as_str()),
        ("database", cluster.database.as_str()),
        ("application_name", "pgtenant"),
        ("client_encoding", "UTF8"),
    ];
    frontend::startup_message(params.iter().copied(), &mut out)?;
    stream.send(&out).await?;

    let mut conn = Reader {
        stream: &mut stream,
        buf: BytesMut::with_capacity(4096),
    };
    authenticate(&mut conn, cluster).await?;

    let mut server_params = Vec::new();
    let mut key = None;
    loop {
        match conn.next().await? {
            Message::ParameterStatus(p) => server_params.push((
                p.name().map_err(proto)?.to_owned(),
                p.value().map_err(proto)?.to_owned(),
            )),
            Message::BackendKeyData(k) => key = Some((k.process_id(), k.secret_key())),
            Message::ReadyForQuery(_) => break,
            Message::NoticeResponse(_) => {}
            Message::ErrorResponse(e) => return Err(server_error(&e)),
            _ => {
                return Err(ServerError::Protocol(
                    "unexpected message during startup".into(),
                ));
            }
        }
    }
    let (process_id, secret) =
        key.ok_or_else(|| ServerError::Protocol("no BackendKeyData".into()))?;
    Ok(Server::new(
        stream,
        CancelTarget {
            addr: peer,
            process_id,
            secret,
        },
        server_params,
    ))
}

/// Asks for TLS when the cluster's mode wants it (an SSLRequest, then the
/// handshake on `S`). One byte is read, so nothing sent in the clear before the
/// handshake can be taken for part of it.
async fn negotiate_tls(mut tcp: Socket, cluster: &Cluster) -> Result<ServerStream, ServerError> {
    if !cluster.tls.requested() {
        return Ok(ServerStream::Plain(tcp));
    }
    let mut out = BytesMut::new();
    build::ssl_request(&mut out);
    tcp.write_all(&out).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let tls = cluster
                .tls
                .connect(TlsSocket(Some(tcp)))
                .await
                .map_err(|e| ServerError::Tls(e.to_string()))?;
            Ok(ServerStream::Tls(Box::new(tls)))
        }
        b'N' if !cluster.tls.required() => Ok(ServerStream::Plain(tcp)),
        b'N' => Err(ServerError::Tls(format!(
            "the server does not accept TLS (tls.mode is {:?})",
            cluster.tls.mode
        ))),
        _ => Err(ServerError::Protocol(
            "unexpected answer to SSLRequest".into(),
        )),
    }
}

async fn authenticate(conn: &mut Reader<'_>, cluster: &Cluster) -> Result<(), ServerError> {
    let password = cluster.password.as_deref().map(str::as_bytes);
    let mut out = BytesMut::new();
    match conn.next().await? {
        Message::AuthenticationOk => return Ok(()),
        Message::AuthenticationCleartextPassword => {
            let pw = password.ok_or(ServerError::PasswordNeeded("cleartext"))?;
            frontend::password_message(pw, &mut out)?;
        }
        Message::AuthenticationMd5Password(body) => {
            let pw = password.ok_or(ServerError::PasswordNeeded("md5"))?;
            let hash = md5_hash(cluster.user.as_bytes(), pw, body.salt());
            frontend::password_message(hash.as_bytes(), &mut out)?;
        }
        Message::AuthenticationSasl(body) => {
            let pw = password.ok_or(ServerError::PasswordNeeded("SCRAM-SHA-256"))?;
            let mut mechanisms = body.mechanisms();
            let mut found = false;
            while let Some(m) = mechanisms.next().map_err(proto)? {
                found |= m == SCRAM_SHA_256;
            }
            if !found {
                return Err(ServerError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
            }
            return scram(conn, pw).await;
        }
        Message::ErrorResponse(e) => return Err(server_error(&e)),
        _ => return Err(ServerError::UnsupportedAuth("requested by the server")),
    }
    conn.stream.send(&out).await?;
    expect_auth_ok(conn).await
}

async fn scram(conn: &mut Reader<'_>, password: &[u8]) -> Result<(), ServerError> {
    let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
    let mut out = BytesMut::new();
    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out)?;
    conn.stream.send(&out).await?;
    match conn.next().await? {
        // The salted password is 4,096 rounds of PBKDF2 (milliseconds): off
        // the worker, whose other sessions would wait meanwhile.
        Message::AuthenticationSaslContinue(body) => {
            let data = body.data().to_vec();
            scram = tokio::task::spawn_blocking(move || scram.update(&data).map(|()| scram))
                .await
                .map_err(std::io::Error::other)??;
        }
        Message::ErrorResponse(e) => return Err(server_error(&e)),
        _ => return Err(ServerError::Protocol("expected SASL continue".into())),
    }
    out.clear();
    frontend::sasl_response(scram.message(), &mut out)?;
    conn.stream.send(&out).await?;
    match conn.next().await? {
        Message::AuthenticationSaslFinal(body) => scram.finish(body.data())?,
        Message::ErrorResponse(e) => return Err(server_error(&e)),
        _ => return Err(ServerError::Protocol("expected SASL final".into())),
    }
    expect_auth_ok(conn).await
}

async fn expect_auth_ok(conn: &mut Reader<'_>) -> Result<(), ServerError> {
    match conn.next().await? {
        Message::AuthenticationOk => Ok(()),
        Message::ErrorResponse(e) => Err(server_error(&e)),
        _ => Err(ServerError::Protocol("expected AuthenticationOk".into())),
    }
}

/// Reads whole backend messages during login, where speed does not matter.
pub(super) struct Reader<'a> {
    pub stream: &'a mut ServerStream,
    pub buf: BytesMut,
}

impl Reader<'_> {
    pub async fn next(&mut self) -> Result<Message, ServerError> {
        loop {
            if let Some(msg) = Message::parse(&mut self.buf)? {
                return Ok(msg);
            }
            self.buf.reserve(4096);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ServerError::Protocol("server closed the connection".into()));
            }
        }
    }
}

fn proto(e: std::io::Error) -> ServerError {
    ServerError::Protocol(e.to_string())
}

/// The server's own words, `SQLSTATE: message`, for the log (never for clients).
pub(super) fn server_error(e: &ErrorResponseBody) -> ServerError {
    let mut fields = e.fields();
    let (mut code, mut message) = (String::new(), String::new());
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    ServerError::Server(format!("{code}: {message}"))
}
