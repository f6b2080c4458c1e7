//! Stored password secrets: SCRAM-SHA-256 verifiers and md5 hashes, in the formats
//! PostgreSQL keeps in `pg_authid.rolpassword`, so they can be copied from there.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A verifier the proxy authenticates clients against. Never a clear-text password.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5803).
    Scram {
        iterations: u32,
        salt: Vec<u8>,
        stored_key: [u8; 32],
        server_key: [u8; 32],
    },
    /// `md5` followed by hex(md5(password || user)).
    Md5 { hash: [u8; 32] },
}

// Secrets must never reach a log line through `{:?}`.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Scram { .. } => f.write_str("Secret::Scram(..)"),
            Secret::Md5 { .. } => f.write_str("Secret::Md5(..)"),
        }
    }
}

impl Secret {
    pub fn parse(s: &str) -> Result<Secret, &'static str> {
        if let Some(rest) = s.strip_prefix("SCRAM-SHA-256$") {
            return parse_scram(rest).ok_or(
                "malformed SCRAM-SHA-256 verifier: expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
            );
        }
        if let Some(hex) = s.strip_prefix("md5") {
            let hash: [u8; 32] = hex
                .as_bytes()
                .try_into()
                .map_err(|_| "md5 secret must be md5 followed by 32 hex digits")?;
            if hash.iter().all(u8::is_ascii_hexdigit) {
                return Ok(Secret::Md5 {
                    hash: hash.map(|c| c.to_ascii_lowercase()),
                });
            }
            return Err("md5 secret must be md5 followed by 32 hex digits");
        }
        Err(
            "password must be a SCRAM-SHA-256 verifier or an md5 hash, never clear text (make one with `pgtenant scram-secret`)",
        )
    }
}

fn parse_scram(rest: &str) -> Option<Secret> {
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    let iterations: u32 = iterations.parse().ok().filter(|&i| i > 0)?;
    let salt = STANDARD.decode(salt).ok().filter(|s| !s.is_empty())?;
    let stored_key = STANDARD.decode(stored).ok()?.try_into().ok()?;
    let server_key = STANDARD.decode(server).ok()?.try_into().ok()?;
    Some(Secret::Scram {
        iterations,
        salt,
        stored_key,
        server_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_postgres_stores() {
        let verifier = postgres_protocol::password::scram_sha_256(b"secret");
        assert!(matches!(
            Secret::parse(&verifier),
            Ok(Secret::Scram {
                iterations: 4096,
                ..
            })
        ));
        let md5 = postgres_protocol::password::md5(b"secret", "alice");
        assert!(matches!(Secret::parse(&md5), Ok(Secret::Md5 { .. })));
    }

    #[test]
    fn refuses_clear_text_and_garbage() {
        for bad in [
            "secret",
            "md5xyz",
            "md5",
            "SCRAM-SHA-256$4096:c2FsdA==$abc",
            "SCRAM-SHA-256$0:c2FsdA==$a:b",
        ] {
            assert!(Secret::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn debug_never_prints_key_material() {
        let s = Secret::parse(&postgres_protocol::password::md5(b"pw", "u")).unwrap();
        assert_eq!(format!("{s:?}"), "Secret::Md5(..)");
    }
}
