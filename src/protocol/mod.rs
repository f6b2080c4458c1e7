//! The PostgreSQL wire protocol, pure: bytes in, typed values or bytes out.
//!
//! Nothing here does IO, reads configuration or knows about tenants. The proxy
//! forwards most traffic by header only ([`frame`]); it decodes just the startup
//! packet ([`startup`]) and builds the few messages it answers itself ([`build`]).
//! Spec: <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

pub mod build;
pub mod frame;
pub mod startup;

/// Transaction status carried by `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block; the only status at which a server may be released.
    Idle,
    /// `T`: inside a transaction block.
    InTransaction,
    /// `E`: inside a failed transaction block.
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}
