//! Client authentication against stored secrets: SCRAM-SHA-256 (RFC 5802/7677, as
//! PostgreSQL speaks it) and md5. Pure state machines: the session does the IO.
//!
//! Unknown users go through a mock SCRAM exchange with a stable fake salt, so a
//! client cannot tell "no such user" from "wrong password" by the flow, the salt
//! or the error (PostgreSQL does the same).

pub mod md5;
pub mod scram;

/// Why an exchange failed. The client sees one uniform 28P01 either way; the
/// variants are for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    #[error("client asked for channel binding that this connection cannot give")]
    ChannelBindingUnsupported,
    #[error("client supports channel binding but thinks the server does not (downgrade?)")]
    ChannelBindingDowngrade,
    #[error("wrong password")]
    WrongPassword,
}
