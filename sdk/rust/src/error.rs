//! The SDK's error type: API errors carry the broker's code; the rest say which side failed.

use crate::protocol::ErrorCode;

/// Anything the SDK can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker refused, with one of DESIGN.md's codes.
    #[error("{status} {}: {message}", code.as_str())]
    Api {
        /// HTTP status.
        status: u16,
        /// The stable code (match on this).
        code: ErrorCode,
        /// The broker's message (names the failed check, the schema violation, …).
        message: String,
    },
    /// The broker could not be reached or the connection broke.
    #[error("cannot reach the broker: {}", crate::tls::describe(.0))]
    Transport(#[from] reqwest::Error),
    /// The client's TLS set-up failed (an unusable CA certificate).
    #[error("TLS set-up: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The broker answered something that is not the protocol.
    #[error("unexpected answer from the broker: {0}")]
    Protocol(String),
    /// No approver decided in time.
    #[error("approval {approval_id} was not decided within the timeout")]
    ApprovalTimeout {
        /// The approval still pending.
        approval_id: String,
    },
    /// The task was not activated (denied, or its approval expired).
    #[error("task {task_id} was not activated: it is {state}")]
    NotActivated {
        /// The task.
        task_id: String,
        /// Its final state.
        state: String,
    },
    /// A token could not be parsed or attenuated.
    #[error("token: {0}")]
    Token(String),
}

impl Error {
    /// The API error code, if the broker refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Result type of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;
