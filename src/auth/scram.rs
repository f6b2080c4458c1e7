//! SCRAM-SHA-256 server side against a stored verifier, with SCRAM-SHA-256-PLUS
//! (`tls-server-end-point` channel binding) on TLS connections: the proof then
//! covers the certificate the client saw, so a man in the middle with another
//! certificate cannot relay the login.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;

pub const MECHANISM: &str = "SCRAM-SHA-256";
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
const END_POINT: &str = "tls-server-end-point";

/// What the connection offers for channel binding.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// Plain TCP: SCRAM-SHA-256 only.
    Unavailable,
    /// TLS: both mechanisms were offered; `plus` is the client's choice and
    /// `end_point` the hash of the certificate its handshake used.
    Tls { plus: bool, end_point: &'a [u8] },
}

/// The parts of a verifier an exchange needs.
#[derive(Clone)]
pub struct ScramKeys {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramKeys {
    /// Keys no password matches, with a salt that is stable per user name, for
    /// unknown users. `seed` is a per-process random value.
    pub fn mock(seed: &[u8; 32], user: &str) -> ScramKeys {
        let salt = hmac(seed, user.as_bytes())[..16].to_vec();
        ScramKeys {
            iterations: 4096,
            salt,
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }
}

/// An exchange after the server-first message was sent.
pub struct Exchange {
    keys: ScramKeys,
    /// What `c=` must decode to: the GS2 header, then any channel binding data.
    binding: Vec<u8>,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

/// Handles `client-first-message`; returns the exchange and `server-first-message`.
pub fn server_first(
    keys: ScramKeys,
    client_first: &[u8],
    offered: Binding<'_>,
) -> Result<(Exchange, String), AuthError> {
    let msg = std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed("not UTF-8"))?;
    let (cbind, rest) = msg
        .split_once(',')
        .ok_or(AuthError::Malformed("gs2 header"))?;
    let binding_data = match (cbind, offered) {
        ("n", Binding::Unavailable | Binding::Tls { plus: false, .. }) => None,
        ("y", Binding::Unavailable) => None,
        // RFC 5802: the server offered -PLUS, so a client that could bind but
        // did not was shown a list without it.
        ("y", Binding::Tls { plus: false, .. }) => return Err(AuthError::ChannelBindingDowngrade),
        (
            c,
            Binding::Tls {
                plus: true,
                end_point,
            },
        ) if c.strip_prefix("p=") == Some(END_POINT) => Some(end_point),
        (c, _) if c.starts_with("p=") => return Err(AuthError::ChannelBindingUnsupported),
        (_, Binding::Tls { plus: true, .. }) => {
            return Err(AuthError::Malformed(
                "SCRAM-SHA-256-PLUS without tls-server-end-point binding",
            ));
        }
        _ => return Err(AuthError::Malformed("channel binding flag")),
    };
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(AuthError::Malformed("gs2 header"))?;
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(AuthError::Malformed("authzid"));
    }
    let mut attrs = bare.split(',');
    // PostgreSQL ignores the SCRAM user name and uses the startup packet's.
    if !attrs.next().is_some_and(|a| a.starts_with("n=")) {
        return Err(AuthError::Malformed("user name attribute"));
    }
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
        .ok_or(AuthError::Malformed("client nonce"))?;
    let server_nonce = STANDARD.encode(rand::random::<[u8; 18]>());
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        STANDARD.encode(&keys.salt),
        keys.iterations
    );
    let mut binding = format!("{cbind},{authzid},").into_bytes();
    binding.extend_from_slice(binding_data.unwrap_or_default());
    let exchange = Exchange {
        keys,
        binding,
        nonce,
        client_first_bare: bare.to_owned(),
        server_first: server_first.clone(),
    };
    Ok((exchange, server_first))
}

impl Exchange {
    /// Checks `client-final-message`; on success returns `server-final-message`.
    pub fn finish(self, client_final: &[u8]) -> Result<String, AuthError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(AuthError::Malformed("proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(AuthError::Malformed("channel binding"))?;
        let sent = STANDARD.decode(cbind).unwrap_or_default();
        if !bool::from(sent.ct_eq(&self.binding)) {
            return Err(AuthError::Malformed("channel binding data"));
        }
        if attrs.next().and_then(|a| a.strip_prefix("r=")) != Some(self.nonce.as_str()) {
            return Err(AuthError::Malformed("nonce mismatch"));
        }
        let proof: [u8; 32] = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(AuthError::Malformed("proof encoding"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.keys.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.iter())
            .map(|(p, s)| p ^ s)
            .collect();
        let computed: [u8; 32] = Sha256::digest(&client_key).into();
        if !bool::from(computed.ct_eq(&self.keys.stored_key)) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn keys_for(password: &str) -> ScramKeys {
        match Secret::parse(&postgres_protocol::password::scram_sha_256(
            password.as_bytes(),
        ))
        .unwrap()
        {
            Secret::Scram {
                iterations,
                salt,
                stored_key,
                server_key,
            } => ScramKeys {
                iterations,
                salt,
                stored_key,
                server_key,
            },
            Secret::Md5 { .. } => unreachable!(),
        }
    }

    /// Runs a whole exchange with rust-postgres's client implementation.
    fn run(keys: ScramKeys, password: &str) -> Result<(), AuthError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (exchange, server_first) = server_first(keys, client.message(), Binding::Unavailable)?;
        client.update(server_first.as_bytes()).unwrap();
        let server_final = exchange.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .expect("client accepts server signature");
        Ok(())
    }

    #[test]
    fn right_password_succeeds_and_server_proves_itself() {
        assert_eq!(run(keys_for("s3cret"), "s3cret"), Ok(()));
    }

    #[test]
    fn wrong_password_and_mock_keys_fail() {
        assert_eq!(
            run(keys_for("s3cret"), "guess"),
            Err(AuthError::WrongPassword)
        );
        assert_eq!(
            run(ScramKeys::mock(&[7; 32], "nobody"), "guess"),
            Err(AuthError::WrongPassword)
        );
    }

    #[test]
    fn mock_salt_is_stable_per_user() {
        let seed = [9; 32];
        assert_eq!(
            ScramKeys::mock(&seed, "a").salt,
            ScramKeys::mock(&seed, "a").salt
        );
        assert_ne!(
            ScramKeys::mock(&seed, "a").salt,
            ScramKeys::mock(&seed, "b").salt
        );
    }

    #[test]
    fn hostile_messages_are_refused() {
        let bad: &[&[u8]] = &[
            b"",
            b"n",
            b"x,,n=,r=abc",
            b"p=tls-server-end-point,,n=,r=a",
            b"n,,r=abc",
            b"n,,n=,r=",
            b"\xff\xfe",
        ];
        for msg in bad {
            assert!(
                server_first(keys_for("p"), msg, Binding::Unavailable).is_err(),
                "{msg:?} accepted"
            );
        }
        let (exchange, _) =
            server_first(keys_for("p"), b"n,,n=,r=abc", Binding::Unavailable).unwrap();
        assert!(exchange.finish(b"c=biws,r=wrong,p=AAAA").is_err());
    }

    /// A -PLUS exchange with rust-postgres's client, binding to `client_sees`
    /// while the server's certificate hashes to `server_has`.
    fn run_plus(client_sees: &[u8], server_has: &[u8]) -> Result<(), AuthError> {
        let mut client = ScramSha256::new(
            b"pw",
            ChannelBinding::tls_server_end_point(client_sees.to_vec()),
        );
        let offered = Binding::Tls {
            plus: true,
            end_point: server_has,
        };
        let (exchange, first) = server_first(keys_for("pw"), client.message(), offered)?;
        client.update(first.as_bytes()).unwrap();
        exchange.finish(client.message()).map(drop)
    }

    #[test]
    fn channel_binding_must_match_the_certificate() {
        assert_eq!(run_plus(&[1; 32], &[1; 32]), Ok(()));
        assert_eq!(
            run_plus(&[1; 32], &[2; 32]),
            Err(AuthError::Malformed("channel binding data"))
        );
    }

    #[test]
    fn binding_flags_are_checked_against_what_was_offered() {
        let tls = |plus| Binding::Tls {
            plus,
            end_point: &[7; 32],
        };
        let first = |msg: &[u8], offered| server_first(keys_for("p"), msg, offered).map(drop);
        assert_eq!(first(b"n,,n=,r=a", tls(false)), Ok(()));
        assert_eq!(first(b"y,,n=,r=a", Binding::Unavailable), Ok(()));
        assert_eq!(
            first(b"y,,n=,r=a", tls(false)),
            Err(AuthError::ChannelBindingDowngrade)
        );
        assert_eq!(
            first(b"p=tls-server-end-point,,n=,r=a", Binding::Unavailable),
            Err(AuthError::ChannelBindingUnsupported)
        );
        assert_eq!(
            first(b"p=tls-unique,,n=,r=a", tls(true)),
            Err(AuthError::ChannelBindingUnsupported)
        );
        assert!(
            first(b"n,,n=,r=a", tls(true)).is_err(),
            "-PLUS without binding"
        );
        assert!(first(b"p=tls-server-end-point,,n=,r=a", tls(true)).is_ok());
    }
}
