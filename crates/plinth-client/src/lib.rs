//! plinth-client: the one typed HTTP client of plinth's REST API (`/api/v1`).
//!
//! Owns how a program talks to `/api/v1`: every path ([`path`]), every list filter and upload
//! parameter ([`query`]), the bearer token, timeouts, an extra CA for a plinth whose certificate
//! comes from the operator's own CA, and the one [`Error`] that carries the API's error body, so
//! that a caller matches on the API's `code` (`invalid_transition`, `duplicate_mac`, ...) rather
//! than on text. Bodies are plinth-types' [`plinth_types::api`] types, the same ones the server
//! deserializes: a field renamed on one side is a compile error on the other.
//! It must not know about the server's insides (no plinth-core, no sqlx, no axum): it is what an
//! outside program sees.
//!
//! Why one crate: the CLI, the ramdisk agent, the benchmarks and the tests each built their own
//! requests, so a path or a query string was written four times and could drift (the style
//! guide's "a value built in two places drifts").
//!
//! Two transports share the paths, the queries, the error type and the decoding of answers:
//! - [`Client`] (feature `async`, the default): async on reqwest, with rustls. Every operation
//!   the CLI, the benchmarks and the tests use.
//!   A machine's serial console is a WebSocket ([`Client::console`], [`console::Console`]), on
//!   tungstenite with the same rustls trust.
//! - [`blocking::Client`] (feature `blocking`): the agent's endpoints on ureq. The agent runs in a
//!   small initramfs with no async runtime; ureq is what it already used, so the agent's binary
//!   and dependencies stay as they were (no tokio, no hyper).
//!
//! A workspace member picks its feature: `plinth-client = { workspace = true, features =
//! ["async"] }` (the workspace entry has default features off).
//!
//! ```no_run
//! # async fn demo() -> Result<(), plinth_client::Error> {
//! use plinth_client::{Client, Error};
//! use plinth_types::api::ActionRequest;
//!
//! let api = Client::builder("https://plinth.example:8443")
//!     .token("plinth_...")
//!     .build()?;
//! let machine = api.get_machine("0b7c6a43-6c8e-4f5e-9d54-5a4c4e7d1c11".parse().unwrap()).await?;
//! match api
//!     .machine_action(machine.id, "inspect", &ActionRequest::default(), Some(machine.state_version))
//!     .await
//! {
//!     Ok(m) => println!("{} is {}", m.id, m.state),
//!     Err(Error::Api(e)) if e.code() == "invalid_transition" => println!("not now: {}", e.message()),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

mod error;
pub mod path;
pub mod query;
pub mod sse;

#[cfg(feature = "async")]
mod client;
#[cfg(feature = "async")]
pub mod console;
#[cfg(feature = "async")]
pub use client::{Client, ClientBuilder, EventStream};

#[cfg(feature = "blocking")]
pub mod blocking;

pub use error::{ApiError, Error};

/// How long one call may take by default (connect, send, answer), upload excepted: long
/// enough for the slowest list page on a busy server, short enough that a hung API does not
/// hang a script.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long connecting may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A successful answer's body as `T`; an error status as [`Error::Api`] when the body is the
/// API's error body, else [`Error::Status`]. A 204 decodes as JSON `null` (so `T = ()`).
/// Shared by both transports, so they agree on what an answer means.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    status: u16,
    reason: &str,
    body: &[u8],
    url: &str,
) -> Result<T, Error> {
    if !(200..300).contains(&status) {
        if let Ok(e) = serde_json::from_slice::<plinth_types::api::ErrorBody>(body) {
            return Err(Error::Api(ApiError {
                status,
                detail: e.error,
            }));
        }
        return Err(Error::Status {
            status,
            reason: reason.to_owned(),
            url: url.to_owned(),
        });
    }
    let body = if status == 204 || body.is_empty() {
        &b"null"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|source| Error::Decode {
        url: url.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plinth_types::MachineState;

    #[test]
    fn an_error_body_becomes_an_api_error_with_its_code() {
        let body = br#"{"error":{"code":"invalid_transition","message":"cannot deploy a machine that is enrolled","current_state":"enrolled","current_version":3}}"#;
        let e =
            decode::<serde_json::Value>(409, "Conflict", body, "http://x/api/v1/m").unwrap_err();
        let Error::Api(a) = &e else { panic!("{e:?}") };
        assert_eq!(
            (a.status, a.code(), a.current_state(), a.current_version()),
            (
                409,
                "invalid_transition",
                Some(MachineState::Enrolled),
                Some(3)
            )
        );
        assert_eq!(
            e.to_string(),
            "cannot deploy a machine that is enrolled (invalid_transition, HTTP 409); the machine is enrolled"
        );
        assert_eq!(e.code(), Some("invalid_transition"));
    }

    #[test]
    fn an_error_without_the_api_body_says_the_status_and_url() {
        let e = decode::<()>(502, "Bad Gateway", b"<html>", "http://x/api/v1/racks").unwrap_err();
        assert!(matches!(e, Error::Status { status: 502, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "HTTP 502 Bad Gateway from http://x/api/v1/racks"
        );
        assert_eq!(e.code(), None);
        assert!(e.is_transient());
        let e = decode::<()>(404, "", b"", "http://x/y").unwrap_err();
        assert_eq!(e.to_string(), "HTTP 404 from http://x/y");
        assert!(!e.is_transient());
    }

    #[test]
    fn no_content_is_unit_and_a_wrong_body_is_a_decode_error() {
        decode::<()>(204, "No Content", b"", "u").unwrap();
        let n: u32 = decode(200, "OK", b"7", "u").unwrap();
        assert_eq!(n, 7);
        let e = decode::<u32>(200, "OK", b"{}", "http://x/api/v1/jobs").unwrap_err();
        assert!(matches!(e, Error::Decode { .. }));
        assert_eq!(
            e.to_string(),
            "unexpected response from http://x/api/v1/jobs"
        );
    }
}
