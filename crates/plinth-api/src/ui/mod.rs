//! The web UI: server-rendered pages (minijinja templates from web/templates, compiled into the
//! binary) with a little JavaScript (web/static/app.js) that only enhances them. Same origin as
//! the API; every page calls the same plinth-core operations with the signed-in user's role.
//!
//! Sessions: `plinth_session` cookie (HttpOnly, SameSite=Lax, Secure when the request came over
//! TLS: plinth's own, or a trusted proxy's; the listener rewrites `X-Forwarded-Proto` to say
//! which, see `scheme` in lib.rs). Every POST carries the session's
//! CSRF token in `_csrf` and, when the browser sends an Origin, must come from this origin; the
//! login form uses a token of its own (a double-submit cookie).

// A refused form is answered with a page, the same `Response` type as an accepted one: boxing
// the error side would only add an allocation to the path that renders it.
#![allow(clippy::result_large_err)]

mod assets;
mod form;
mod pages;
mod session;

pub(crate) use assets::*;
pub(crate) use form::*;
pub(crate) use session::*;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use plinth_core::App;
use plinth_core::auth::{Permission, allows};

pub(crate) const SESSION_COOKIE: &str = "plinth_session";
const LOGIN_CSRF_COOKIE: &str = "plinth_login_csrf";
const FLASH_COOKIE: &str = "plinth_flash";

/// The UI's routes (the API's live under /api/v1, the boot files under /boot).
pub fn routes() -> Router<App> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/machines", get(pages::machines))
        .route("/machines/bulk", post(pages::bulk))
        .route("/machines/{id}", get(pages::machine))
        .route("/machines/{id}/timeline", get(pages::timeline))
        .route(
            "/machines/{id}/timeline/stream",
            get(crate::events_stream::ui_timeline),
        )
        .route("/machines/{id}/action", post(pages::action))
        .route("/machines/{id}/power", post(pages::power))
        .route("/machines/{id}/bios", post(pages::set_bios))
        .route("/racks", get(pages::racks).post(pages::add_rack))
        .route("/racks/{name}", get(pages::rack))
        .route("/enroll", get(pages::enroll_form).post(pages::enroll))
        .route("/enroll/free-slots", get(pages::free_slots))
        .route("/discovered", get(pages::discovered))
        .route("/discovered/{id}/adopt", post(pages::adopt))
        .route("/static/{file}", get(static_file))
        // Forms are small.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::map_response(security_headers))
}

/// The page's own script and stylesheet only (no inline script; the templates' `style`
/// attributes need inline styles), no framing, no plugins, forms only to this site.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// Every UI response: CSP, no framing, no MIME sniffing, no full URLs in Referer elsewhere.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// The racks for whoever may see the inventory; a client, who sees only its own machines,
/// starts at the machine table.
async fn home(user: User) -> Redirect {
    if allows(user.who().role, Permission::ReadInventory) {
        Redirect::to("/racks")
    } else {
        Redirect::to("/machines")
    }
}
