//! The transport-neutral error: what went wrong, said once for clients.
//!
//! plinth-api is the one place that turns an [`ErrorKind`] into an HTTP status. The
//! `message` is safe to show to a client; internal causes are logged where they happen
//! and never interpolated here.

use std::fmt;

use crate::MachineState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or violates a rule (400).
    InvalidInput,
    /// No credentials, or credentials that are unknown or revoked (401).
    Unauthorized,
    /// The credentials are valid but their role does not allow this (403).
    Forbidden,
    /// The thing does not exist, or the caller may not see it (404).
    NotFound,
    /// The request conflicts with the current state: a lifecycle rule, a stale version,
    /// a duplicate, too little capacity (409).
    Conflict,
    /// Something failed inside plinth (500). The details are in the log.
    Internal,
    /// A dependency (the database) is unavailable, or plinth is too busy for this (503).
    Unavailable,
    /// This client has asked too often; it may try again later (429).
    TooMany,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    /// A stable machine-readable code, such as `invalid_transition` or `duplicate_mac`.
    pub code: &'static str,
    pub message: String,
    /// For lifecycle conflicts: the state the machine is in now.
    pub current_state: Option<MachineState>,
    /// For lifecycle conflicts: the machine's current state_version.
    pub current_version: Option<i64>,
}

impl Error {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Error {
            kind,
            code,
            message: message.into(),
            current_state: None,
            current_version: None,
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, "forbidden", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, "unauthorized", message)
    }

    /// An internal failure. Log the cause where it happens; clients see only this.
    pub fn internal() -> Self {
        Self::new(
            ErrorKind::Internal,
            "internal",
            "internal error; see the server log",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, "unavailable", message)
    }

    pub fn with_state(mut self, state: MachineState, version: i64) -> Self {
        self.current_state = Some(state);
        self.current_version = Some(version);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}
