//! The client's one error type. The API's own errors keep their body ([`ApiError`]), so a
//! caller matches on the API's stable `code`; everything else says which URL or base it was
//! about and keeps its cause as the `source` (printed by `{err:#}`, never interpolated).

use std::fmt;

use plinth_types::MachineState;
use plinth_types::api::ErrorDetail;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error status and its error body.
    #[error("{0}")]
    Api(ApiError),
    /// An error status without the API's error body (a proxy in between, a server that is not
    /// plinth).
    #[error("HTTP {status}{} from {url}", if reason.is_empty() { String::new() } else { format!(" {reason}") })]
    Status {
        status: u16,
        /// The reason phrase, when known (`Bad Gateway`).
        reason: String,
        url: String,
    },
    /// The API could not be reached: resolving, connecting, TLS, or no answer in time.
    #[error("cannot reach the plinth API at {base}")]
    Transport {
        base: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The answer's body broke off while it was read.
    #[error("reading the answer from {url}")]
    Body {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A success whose body is not what the API's types say.
    #[error("unexpected response from {url}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The client could not be built (a CA bundle without a certificate, a TLS backend that
    /// failed to start), or a request body could not be made. The message is the whole story.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The API's error code (`invalid_transition`, `not_found`, ...), when the API gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api(e) => Some(e.code()),
            _ => None,
        }
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api(e) => Some(e.status),
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the same call may succeed later: no answer, a broken answer, or a server error
    /// (5xx). A 4xx is plinth saying no, and saying it again.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Body { .. } => true,
            Error::Api(ApiError { status, .. }) | Error::Status { status, .. } => *status >= 500,
            Error::Decode { .. } | Error::Config(_) => false,
        }
    }
}

/// An error the API answered with: the status and the API's error body (`{"error": {...}}`).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub detail: ErrorDetail,
}

impl ApiError {
    /// The stable, machine-readable code: match on this.
    pub fn code(&self) -> &str {
        &self.detail.code
    }

    /// The message for people (safe to show; it never holds a secret).
    pub fn message(&self) -> &str {
        &self.detail.message
    }

    /// For a lifecycle conflict: the state the machine is in now.
    pub fn current_state(&self) -> Option<MachineState> {
        self.detail.current_state
    }

    /// For a lifecycle conflict: the machine's state_version now (for a retry with If-Match).
    pub fn current_version(&self) -> Option<i64> {
        self.detail.current_version
    }
}

/// `message (code, HTTP status)`, and the machine's state when the API said it: one line a
/// person can act on (the CLI prints it as it is).
impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, HTTP {})",
            self.detail.message, self.detail.code, self.status
        )?;
        if let Some(s) = self.detail.current_state {
            write!(f, "; the machine is {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}
