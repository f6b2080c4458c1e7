//! The first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest or
//! CancelRequest. Unlike every later message it has no tag byte, only a length.

use super::frame::read_cstr;

/// Protocol 3.0. The proxy also speaks 3.2 (PostgreSQL 18: longer cancel keys);
/// newer 3.x minors are negotiated down to 3.2 with `NegotiateProtocolVersion`.
pub const PROTOCOL_3_0: i32 = 3 << 16;
/// The newest 3.x minor the proxy speaks.
pub const NEWEST_MINOR: u16 = 2;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Smallest legal packet: the length word and the code.
pub const MIN_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("startup packet length {0} is out of range")]
    BadLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
}

/// What the client asked for in its first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initial {
    SslRequest,
    GssEncRequest,
    /// The key is 4 bytes in protocol 3.0 and up to 256 in 3.2.
    Cancel {
        process_id: i32,
        secret: Vec<u8>,
    },
    Startup(StartupMessage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Requested minor version; anything above [`NEWEST_MINOR`] is negotiated down.
    pub minor: u16,
    /// Parameters other than `_pq_.` protocol options, in the client's order.
    pub params: Vec<(String, String)>,
    /// `_pq_.` options we do not support, reported back in `NegotiateProtocolVersion`.
    pub protocol_options: Vec<String>,
}

impl StartupMessage {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> &str {
        self.get("user").unwrap_or_default()
    }

    /// The database the client asked for; like PostgreSQL, it defaults to the user name.
    pub fn database(&self) -> &str {
        match self.get("database") {
            Some(db) if !db.is_empty() => db,
            _ => self.user(),
        }
    }

    /// Whether the proxy must answer with `NegotiateProtocolVersion` before anything else.
    pub fn needs_negotiation(&self) -> bool {
        self.minor > NEWEST_MINOR || !self.protocol_options.is_empty()
    }

    /// The minor version the session speaks.
    pub fn protocol_minor(&self) -> u16 {
        self.minor.min(NEWEST_MINOR)
    }

    /// Length of the cancel key: 4 bytes before 3.2, 32 from 3.2 on (as PostgreSQL 18).
    pub fn cancel_key_len(&self) -> usize {
        if self.protocol_minor() >= 2 { 32 } else { 4 }
    }
}

/// Checks the packet's length word (which counts itself) against the limit and
/// returns the number of bytes that follow it.
pub fn body_len(len_word: [u8; 4], max_len: usize) -> Result<usize, StartupError> {
    let len = i32::from_be_bytes(len_word) as i64;
    if len < MIN_LEN as i64 || len > max_len as i64 {
        return Err(StartupError::BadLength(len));
    }
    Ok(len as usize - 4)
}

/// Decodes the packet body (everything after the length word).
pub fn parse(body: &[u8]) -> Result<Initial, StartupError> {
    let code = i32::from_be_bytes(
        body.get(..4)
            .ok_or(StartupError::Malformed("short packet"))?
            .try_into()
            .expect("4 bytes"),
    );
    let rest = &body[4..];
    match code {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(Initial::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(Initial::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            if rest.len() < 8 || rest.len() > 4 + 256 {
                return Err(StartupError::Malformed("cancel request length"));
            }
            let process_id = i32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
            Ok(Initial::Cancel {
                process_id,
                secret: rest[4..].to_vec(),
            })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            parse_params(minor, rest).map(Initial::Startup)
        }
    }
}

fn parse_params(minor: u16, mut rest: &[u8]) -> Result<StartupMessage, StartupError> {
    let mut msg = StartupMessage {
        minor,
        params: Vec::new(),
        protocol_options: Vec::new(),
    };
    loop {
        let (name, after) = read_cstr(rest).ok_or(StartupError::Malformed("unterminated name"))?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed("bytes after the final terminator"));
            }
            break;
        }
        let (value, after) =
            read_cstr(after).ok_or(StartupError::Malformed("unterminated value"))?;
        let name = std::str::from_utf8(name).map_err(|_| StartupError::Malformed("non-UTF-8"))?;
        let value = std::str::from_utf8(value).map_err(|_| StartupError::Malformed("non-UTF-8"))?;
        if name.starts_with("_pq_.") {
            msg.protocol_options.push(name.to_owned());
        } else if msg.get(name).is_some() {
            return Err(StartupError::Malformed("duplicate parameter"));
        } else {
            msg.params.push((name.to_owned(), value.to_owned()));
        }
        rest = after;
    }
    if msg.user().is_empty() {
        return Err(StartupError::NoUser);
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(code: i32, params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    #[test]
    fn decodes_a_startup_message() {
        let body = startup(PROTOCOL_3_0, &[("user", "app.acme"), ("database", "saas")]);
        let Initial::Startup(m) = parse(&body).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!((m.user(), m.database(), m.minor), ("app.acme", "saas", 0));
        assert!(!m.needs_negotiation());
    }

    #[test]
    fn newer_minor_and_protocol_options_need_negotiation() {
        let native = |minor: i32, params: &[(&str, &str)]| {
            let Initial::Startup(m) = parse(&startup(PROTOCOL_3_0 + minor, params)).unwrap() else {
                panic!("not a startup")
            };
            m
        };
        let m = native(2, &[("user", "u")]);
        assert!(!m.needs_negotiation(), "3.2 is spoken natively");
        assert_eq!(m.cancel_key_len(), 32);
        let m = native(3, &[("user", "u")]);
        assert!(m.needs_negotiation());
        assert_eq!((m.protocol_minor(), m.cancel_key_len()), (2, 32));
        assert_eq!(native(0, &[("user", "u")]).cancel_key_len(), 4);
        let m = native(2, &[("user", "u"), ("_pq_.foo", "1")]);
        assert!(m.needs_negotiation());
        assert_eq!(m.protocol_options, vec!["_pq_.foo".to_owned()]);
        assert_eq!(m.database(), "u");
    }

    #[test]
    fn rejects_bad_packets() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (startup(2 << 16, &[("user", "u")]), "protocol 2"),
            (startup(PROTOCOL_3_0, &[]), "no user"),
            (
                startup(PROTOCOL_3_0, &[("user", "a"), ("user", "b")]),
                "duplicate",
            ),
            (
                PROTOCOL_3_0
                    .to_be_bytes()
                    .iter()
                    .chain(b"user\0u")
                    .copied()
                    .collect(),
                "no nul",
            ),
            (vec![0, 0], "short"),
            (CANCEL_REQUEST_CODE.to_be_bytes().to_vec(), "short cancel"),
        ];
        for (body, what) in cases {
            assert!(parse(&body).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn recognises_requests() {
        assert_eq!(
            parse(&SSL_REQUEST_CODE.to_be_bytes()).unwrap(),
            Initial::SslRequest
        );
        assert_eq!(
            parse(&GSSENC_REQUEST_CODE.to_be_bytes()).unwrap(),
            Initial::GssEncRequest
        );
        let mut cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            parse(&cancel).unwrap(),
            Initial::Cancel {
                process_id: 7,
                secret: vec![1, 2, 3, 4]
            }
        );
    }

    #[test]
    fn length_word_limits() {
        assert!(body_len(3i32.to_be_bytes(), 10_000).is_err());
        assert!(body_len(20_000i32.to_be_bytes(), 10_000).is_err());
        assert_eq!(body_len(16i32.to_be_bytes(), 10_000).unwrap(), 12);
    }
}
