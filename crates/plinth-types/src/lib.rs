//! plinth-types: the vocabulary every plinth crate shares.
//!
//! Owns typed values (`MacAddr`), the machine lifecycle (`MachineState`, `Verb`, the one
//! transition table and the tables of what a transition does and what a state means), the
//! network boot's shared vocabulary (PXE architecture codes, `/boot/` URLs), roles, the REST API's request and response types, and the
//! transport-neutral [`Error`]. It does no I/O: no sockets, no files, no SQL.

pub mod api;
pub mod behaviour;
pub mod de;
pub mod error;
pub mod feed;
pub mod firmware;
pub mod health;
pub mod ids;
pub mod lifecycle;
pub mod logthrottle;
pub mod mac;
pub mod netboot;
pub mod role;
pub mod scan;
#[cfg(feature = "sqlx")]
mod sql;
pub mod terminal;

pub use behaviour::AgentMode;
pub use error::{Error, ErrorKind};
pub use ids::{AllocationId, ImageId, JobId, MachineId};
pub use lifecycle::{MachineState, Verb};
pub use mac::MacAddr;
pub use role::Role;

/// Percent-encodes everything but RFC 3986's unreserved characters: a safe path segment or
/// query value (the CLI's queries, the web UI's links).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
