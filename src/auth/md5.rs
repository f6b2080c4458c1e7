//! md5 password authentication against a stored `md5<hex>` hash: the client sends
//! `"md5" + hex(md5(hex(md5(password + user)) + salt))`.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::AuthError;

/// What the client must send for `stored_hex` (the 32 hex digits after `md5`).
pub fn expected_response(stored_hex: &[u8; 32], salt: [u8; 4]) -> [u8; 35] {
    let mut h = Md5::new();
    h.update(stored_hex);
    h.update(salt);
    let digest = h.finalize();
    let mut out = [0u8; 35];
    out[..3].copy_from_slice(b"md5");
    for (i, b) in digest.iter().enumerate() {
        out[3 + 2 * i] = HEX[(b >> 4) as usize];
        out[4 + 2 * i] = HEX[(b & 0xf) as usize];
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Checks a `PasswordMessage` body (the response, NUL-terminated) in constant time.
pub fn verify(stored_hex: &[u8; 32], salt: [u8; 4], body: &[u8]) -> Result<(), AuthError> {
    let response = body
        .strip_suffix(&[0])
        .ok_or(AuthError::Malformed("password message"))?;
    let expected = expected_response(stored_hex, salt);
    if response.len() == expected.len() && bool::from(response.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(AuthError::WrongPassword)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_libpq_would_send() {
        let stored = postgres_protocol::password::md5(b"pw", "alice");
        let stored_hex: [u8; 32] = stored.as_bytes()[3..].try_into().unwrap();
        let salt = [1, 2, 3, 4];
        let client = postgres_protocol::authentication::md5_hash(b"alice", b"pw", salt);
        let mut body = client.into_bytes();
        body.push(0);
        assert_eq!(verify(&stored_hex, salt, &body), Ok(()));
        let wrong = postgres_protocol::authentication::md5_hash(b"alice", b"nope", salt);
        let mut body = wrong.into_bytes();
        body.push(0);
        assert_eq!(
            verify(&stored_hex, salt, &body),
            Err(AuthError::WrongPassword)
        );
        assert!(verify(&stored_hex, salt, b"md5").is_err());
    }
}
