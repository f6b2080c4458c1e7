//! Header-only framing: a message is a tag byte and a big-endian `i32` length that
//! counts itself. The relay walks these headers by offset and forwards raw byte
//! ranges; it never copies a message into a typed value on the hot path.

/// Tag byte plus the length word.
pub const HEADER_LEN: usize = 5;

/// A message's length field is wrong or over the configured limit. Either way the
/// stream cannot be resynchronised and the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("invalid message length {0}")]
    BadLength(i32),
}

/// The header of the first message in `buf`, checked against `max_len` before
/// anything is allocated for its body. `Ok(None)` means the header is incomplete.
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = len as usize + 1;
    if total > max_len {
        return Err(FrameError::TooLarge {
            len: total,
            max: max_len,
        });
    }
    Ok(Some((buf[0], total)))
}

/// One complete message found in a buffer: its tag and the byte range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub start: usize,
    pub end: usize,
}

impl Frame {
    /// The message body, after tag and length.
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start + HEADER_LEN..self.end]
    }
}

/// Iterates over the complete messages at the front of a buffer. It stops at the
/// first incomplete message; [`Frames::consumed`] says how many bytes were covered.
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    max_len: usize,
}

impl<'a> Frames<'a> {
    pub fn new(buf: &'a [u8], max_len: usize) -> Frames<'a> {
        Frames {
            buf,
            pos: 0,
            max_len,
        }
    }

    /// Bytes covered by the complete messages returned so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl Iterator for Frames<'_> {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        match peek_header(&self.buf[self.pos..], self.max_len) {
            Err(e) => Some(Err(e)),
            Ok(None) => None,
            Ok(Some((tag, total))) => {
                if self.buf.len() - self.pos < total {
                    return None;
                }
                let frame = Frame {
                    tag,
                    start: self.pos,
                    end: self.pos + total,
                };
                self.pos += total;
                Some(Ok(frame))
            }
        }
    }
}

/// Reads a NUL-terminated string at the start of `buf`; returns it and the rest.
pub fn read_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    // The unnamed statement and portal (""), in most extended-protocol
    // messages: no search to set up.
    if buf.first() == Some(&0) {
        return Some((&buf[..0], &buf[1..]));
    }
    let nul = memchr::memchr(0, buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// One message with `tag` and `body`, for unit tests.
#[cfg(test)]
pub(crate) fn encode(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::encode as msg;

    #[test]
    fn frames_stop_at_an_incomplete_message() {
        let mut buf = msg(b'Z', b"I");
        buf.extend(msg(b'C', b"SELECT 1\0"));
        buf.extend(&msg(b'D', b"abcdef")[..7]);
        let mut frames = Frames::new(&buf, 1 << 20);
        let tags: Vec<u8> = frames.by_ref().map(|f| f.unwrap().tag).collect();
        assert_eq!(tags, vec![b'Z', b'C']);
        assert_eq!(frames.consumed(), 6 + 14);
    }

    #[test]
    fn lengths_are_checked_before_the_body_arrives() {
        let header = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            peek_header(&header, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        let negative = [b'Q', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(peek_header(&negative, 1024), Err(FrameError::BadLength(-1)));
        let too_short = [b'Q', 0, 0, 0, 3];
        assert_eq!(peek_header(&too_short, 1024), Err(FrameError::BadLength(3)));
    }

    #[test]
    fn body_excludes_header() {
        let buf = msg(b'Z', b"T");
        let f = Frames::new(&buf, 64).next().unwrap().unwrap();
        assert_eq!(f.body(&buf), b"T");
    }

    #[test]
    fn a_cstr_ends_at_its_first_nul() {
        assert_eq!(read_cstr(b"\0rest"), Some((&b""[..], &b"rest"[..])));
        assert_eq!(read_cstr(b"\0"), Some((&b""[..], &b""[..])));
        assert_eq!(read_cstr(b"name\0\0x"), Some((&b"name"[..], &b"\0x"[..])));
        assert_eq!(read_cstr(b"no end"), None);
        assert_eq!(read_cstr(b""), None);
    }
}
