//! Builders for the messages the proxy writes itself. Each appends one complete
//! message to a `BytesMut`, so several can be batched into one socket write.

use bytes::{BufMut, BytesMut};

use super::TxStatus;

/// Appends a message: tag, a length placeholder, the body from `f`, then the length.
fn message(buf: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    f(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

pub fn authentication_ok(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(0));
}

pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    message(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    message(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

pub fn backend_key_data(buf: &mut BytesMut, process_id: i32, secret: &[u8]) {
    message(buf, b'K', |b| {
        b.put_i32(process_id);
        b.put_slice(secret);
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    message(buf, b'Z', |b| b.put_u8(status.as_byte()));
}

/// Tells a client asking for a newer 3.x minor, or for `_pq_.` options, which
/// minor we speak and which options we ignored.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: u16, options: &[String]) {
    message(buf, b'v', |b| {
        b.put_i32(super::startup::PROTOCOL_3_0 | i32::from(minor));
        b.put_i32(options.len() as i32);
        for o in options {
            put_cstr(b, o.as_bytes());
        }
    });
}

/// The fields of an `ErrorResponse` or `NoticeResponse` that the proxy fills in.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

pub fn error_response(buf: &mut BytesMut, f: &Fields<'_>) {
    message(buf, b'E', |b| {
        // `S` is localised in PostgreSQL, `V` never is; send both like the server.
        for (tag, value) in [(b'S', f.severity), (b'V', f.severity), (b'C', f.code)] {
            b.put_u8(tag);
            put_cstr(b, value.as_bytes());
        }
        b.put_u8(b'M');
        put_cstr(b, f.message.as_bytes());
        for (tag, value) in [(b'D', f.detail), (b'H', f.hint)] {
            if let Some(v) = value {
                b.put_u8(tag);
                put_cstr(b, v.as_bytes());
            }
        }
        b.put_u8(0);
    });
}

/// A simple `Query` (frontend), used for the tenant context and the proxy's own checks.
pub fn query(buf: &mut BytesMut, sql: &str) {
    message(buf, b'Q', |b| put_cstr(b, sql.as_bytes()));
}

/// `text` in `pg_type`: every column the proxy returns itself is text.
const TEXT_OID: i32 = 25;

/// A RowDescription of text columns in text format.
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    message(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for name in columns {
            put_cstr(b, name.as_bytes());
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(TEXT_OID);
            b.put_i16(-1); // variable length
            b.put_i32(-1); // no type modifier
            b.put_i16(0); // text format
        }
    });
}

/// A DataRow; `None` is NULL.
pub fn data_row<'a>(buf: &mut BytesMut, values: impl ExactSizeIterator<Item = Option<&'a str>>) {
    message(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    message(buf, b'C', |b| put_cstr(b, tag.as_bytes()));
}

pub fn empty_query_response(buf: &mut BytesMut) {
    message(buf, b'I', |_| {});
}

/// A NoticeResponse of severity NOTICE.
pub fn notice(buf: &mut BytesMut, message_text: &str) {
    message(buf, b'N', |b| {
        for (tag, value) in [(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000")] {
            b.put_u8(tag);
            put_cstr(b, value.as_bytes());
        }
        b.put_u8(b'M');
        put_cstr(b, message_text.as_bytes());
        b.put_u8(0);
    });
}

pub fn terminate(buf: &mut BytesMut) {
    message(buf, b'X', |_| {});
}

/// An SSLRequest (frontend), asking the server for TLS.
pub fn ssl_request(buf: &mut BytesMut) {
    buf.put_i32(8);
    buf.put_i32(super::startup::SSL_REQUEST_CODE);
}

/// A CancelRequest (frontend), sent on a fresh connection to the server.
pub fn cancel_request(buf: &mut BytesMut, process_id: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(super::startup::CANCEL_REQUEST_CODE);
    buf.put_i32(process_id);
    buf.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::Frames;

    #[test]
    fn built_messages_frame_correctly() {
        let mut buf = BytesMut::new();
        authentication_sasl(&mut buf, &["SCRAM-SHA-256"]);
        parameter_status(&mut buf, "server_version", "15.0");
        backend_key_data(&mut buf, 1, &2i32.to_be_bytes());
        error_response(
            &mut buf,
            &Fields {
                severity: "FATAL",
                code: "28P01",
                message: "m",
                detail: None,
                hint: Some("h"),
            },
        );
        ready_for_query(&mut buf, TxStatus::Idle);
        let tags: Vec<u8> = Frames::new(&buf, 1 << 16).map(|f| f.unwrap().tag).collect();
        assert_eq!(tags, b"RSKEZ");
        assert_eq!(&buf[buf.len() - 6..], &[b'Z', 0, 0, 0, 5, b'I']);
    }

    #[test]
    fn postgres_protocol_parses_our_error_response() {
        use fallible_iterator::FallibleIterator;
        use postgres_protocol::message::backend::Message;
        let mut buf = BytesMut::new();
        error_response(
            &mut buf,
            &Fields {
                severity: "ERROR",
                code: "53300",
                message: "busy",
                detail: Some("d"),
                hint: None,
            },
        );
        let Some(Message::ErrorResponse(body)) = Message::parse(&mut buf).unwrap() else {
            panic!("not an error")
        };
        let fields: Vec<(u8, String)> = body
            .fields()
            .map(|f| {
                Ok((
                    f.type_(),
                    String::from_utf8_lossy(f.value_bytes()).into_owned(),
                ))
            })
            .collect()
            .unwrap();
        assert!(fields.contains(&(b'C', "53300".into())));
        assert!(fields.contains(&(b'D', "d".into())));
    }
}
