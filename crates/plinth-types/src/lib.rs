//! plinth-types: the vocabulary every plinth crate shares.
//!
//! Owns typed values (`MacAddr`), the machine lifecycle (`MachineState`, `Verb` and the one
//! transition table), roles, the REST API's request and response types, and the
//! transport-neutral [`Error`]. It does no I/O: no sockets, no files, no SQL.

pub mod api;
pub mod error;
pub mod lifecycle;
pub mod mac;
pub mod role;

pub use error::{Error, ErrorKind};
pub use lifecycle::{MachineState, Verb};
pub use mac::MacAddr;
pub use role::Role;
