//! The pages, one file per part of the site. Each handler: the signed-in [`User`], one or a few
//! plinth-core reads or one write, then a template (GET) or a redirect with a message (POST, so
//! a reload never repeats it). Forms that fail validation come back filled in, with the API's
//! message at the field.

mod bios;
mod console;
mod discovered;
mod enroll;
mod login;
mod machine;
mod machines;
mod racks;

pub(crate) use bios::set_bios;
pub(crate) use discovered::*;
pub(crate) use enroll::*;
pub(crate) use login::*;
pub(crate) use machine::*;
pub(crate) use machines::*;
pub(crate) use racks::*;

use axum::response::Response;
use plinth_core::App;
use plinth_types::{Error, MachineState};

use super::{User, error_page};

pub(crate) type Page = Result<Response, Response>;

/// Turns a plinth-core error into the error page.
pub(crate) fn fail(user: &User) -> impl Fn(Error) -> Response + '_ {
    move |e| error_page(Some(user), &e)
}

pub(crate) async fn discovered_count(app: &App, user: &User) -> i64 {
    // A badge: whoever may not see the inventory sees none.
    app.count_in_state(user.who(), MachineState::Discovered)
        .await
        .unwrap_or(0)
}

/// Only paths of this site: `next` and `back` must not send anyone elsewhere.
pub(crate) fn local_path(p: Option<&str>, default: &str) -> String {
    match p {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_owned(),
        _ => default.to_owned(),
    }
}

/// A link built from `url_encode`d parts, for an attribute: only its `&` needs escaping.
pub(crate) fn href(s: String) -> minijinja::Value {
    minijinja::Value::from_safe_string(s.replace('&', "&amp;"))
}
