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

mod pages;

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::Environment;
use plinth_core::auth::{Permission, allows};
use plinth_core::users::UiSession;
use plinth_core::{App, Principal};
use plinth_types::{Error, ErrorKind, Verb};
use serde::Serialize;

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
        .route("/machines/{id}/action", post(pages::action))
        .route("/machines/{id}/power", post(pages::power))
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

// ------------------------------------------------------------------ assets and templates

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../../web/static/app.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../../../web/static/icon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../../web/static/app.js"),
    },
];

/// A short content hash per asset: its URL changes with its content, so it can be cached for
/// good.
fn asset_versions() -> &'static HashMap<&'static str, String> {
    static V: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    V.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                // FNV-1a: enough to tell versions apart; not a security boundary.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in a.body {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
                }
                (a.name, format!("{:012x}", h & 0xffff_ffff_ffff))
            })
            .collect()
    })
}

async fn static_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let etag = format!("\"{}\"", asset_versions()[asset.name]);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, asset.content_type.to_owned()),
            (
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".to_owned(),
            ),
            (header::ETAG, etag),
        ],
        asset.body,
    )
        .into_response()
}

const TEMPLATES: &[(&str, &str)] = &[
    (
        "base.html",
        include_str!("../../../../web/templates/base.html"),
    ),
    (
        "login.html",
        include_str!("../../../../web/templates/login.html"),
    ),
    (
        "error.html",
        include_str!("../../../../web/templates/error.html"),
    ),
    (
        "machines.html",
        include_str!("../../../../web/templates/machines.html"),
    ),
    (
        "machine.html",
        include_str!("../../../../web/templates/machine.html"),
    ),
    (
        "timeline.html",
        include_str!("../../../../web/templates/timeline.html"),
    ),
    (
        "racks.html",
        include_str!("../../../../web/templates/racks.html"),
    ),
    (
        "rack.html",
        include_str!("../../../../web/templates/rack.html"),
    ),
    (
        "elevation.html",
        include_str!("../../../../web/templates/elevation.html"),
    ),
    (
        "enroll.html",
        include_str!("../../../../web/templates/enroll.html"),
    ),
    (
        "discovered.html",
        include_str!("../../../../web/templates/discovered.html"),
    ),
];

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, src) in TEMPLATES {
            env.add_template(name, src)
                .unwrap_or_else(|e| panic!("web/templates/{name}: {e:#}"));
        }
        // Our own URLs, made of safe characters: not HTML-escaped (which would turn every '/'
        // into an entity).
        env.add_function("asset", |name: &str| -> minijinja::Value {
            minijinja::Value::from_safe_string(match asset_versions().get(name) {
                Some(v) => format!("/static/{name}?v={v}"),
                None => format!("/static/{}", url_encode(name)),
            })
        });
        env.add_filter("when", |s: String| -> String {
            match chrono::DateTime::parse_from_rfc3339(&s) {
                Ok(t) => t
                    .with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string(),
                Err(_) => s,
            }
        });
        env.add_filter("bytes", |n: u64| -> String { human_bytes(n) });
        env.add_filter("urlencode", |s: String| -> String { url_encode(&s) });
        env
    })
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub(crate) use plinth_types::percent_encode as url_encode;

/// Renders a template; a template error is a bug, logged and shown as a 500.
fn render(name: &str, ctx: minijinja::Value) -> Response {
    match env().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %format!("{e:#}"), "rendering a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "page rendering failed").into_response()
        }
    }
}

// ------------------------------------------------------------------ sessions

/// What the signed-in user's role lets the pages offer (nothing is shown that would be refused).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Can {
    pub manage_machines: bool,
    pub manage_racks: bool,
    /// Any lifecycle verb a person runs (inspect, maintenance, decommission...).
    pub act: bool,
    pub power: bool,
}

impl Can {
    fn of(p: &Principal) -> Can {
        Can {
            manage_machines: allows(p.role, Permission::ManageMachines),
            manage_racks: allows(p.role, Permission::ManageRacks),
            act: allows(p.role, Permission::Act(Verb::Inspect)),
            power: allows(p.role, Permission::ControlPower),
        }
    }
}

/// The signed-in user of a page. Without a valid session: a redirect to the login page.
pub(crate) struct User {
    pub session: UiSession,
    pub can: Can,
    /// The session cookie's secret (logout ends it).
    pub secret: String,
    /// A message left by the previous request (after a redirect), taken once.
    pub flash: Option<Flash>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Flash {
    /// `ok` or `err`.
    pub kind: &'static str,
    pub text: String,
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether the browser reached plinth over TLS (directly or through a trusted proxy): the
/// listener's `scheme` layer leaves `x-forwarded-proto: https` exactly then.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
        || headers
            .get(header::FORWARDED)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"))
}

/// A Set-Cookie value: HttpOnly, SameSite=Lax, Path=/, Secure over TLS; `max_age` None for a
/// browser-session cookie, Some(0) to delete it.
pub(crate) fn set_cookie(
    headers: &HeaderMap,
    name: &str,
    value: &str,
    max_age: Option<u64>,
) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        c += &format!("; Max-Age={age}");
    }
    if over_tls(headers) {
        c += "; Secure";
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

impl FromRequestParts<App> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let secret = cookie(&parts.headers, SESSION_COOKIE).unwrap_or_default();
        match app.ui_session(&secret).await {
            Ok(session) => {
                tracing::Span::current().record("actor", session.principal.name.as_str());
                let flash = cookie(&parts.headers, FLASH_COOKIE).and_then(|v| decode_flash(&v));
                Ok(User {
                    can: Can::of(&session.principal),
                    session,
                    secret,
                    flash,
                })
            }
            Err(e) if e.kind == ErrorKind::Unauthorized => {
                let here = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let next = if parts.method == axum::http::Method::GET {
                    here
                } else {
                    "/"
                };
                Err(Redirect::to(&format!("/login?next={}", url_encode(next))).into_response())
            }
            Err(e) => Err(error_page(None, &e)),
        }
    }
}

impl User {
    pub fn who(&self) -> &Principal {
        &self.session.principal
    }

    /// The template context every page shares, plus the page's own.
    pub fn page(&self, nav: &str, discovered: i64, own: minijinja::Value) -> minijinja::Value {
        minijinja::context! {
            session => minijinja::context! {
                username => self.session.username,
                role => self.session.principal.role.as_str(),
                csrf => self.session.csrf,
            },
            can => self.can,
            nav => nav,
            discovered_count => discovered,
            flash => self.flash,
            ..own
        }
    }
}

/// A form posted by a signed-in user, its CSRF token and origin checked: what every POST
/// handler but the login's takes (last, as it reads the body).
pub(crate) struct Posted {
    pub user: User,
    pub headers: HeaderMap,
    pub form: Form,
}

/// Forms are small; anything bigger is not one of plinth's.
const MAX_FORM: usize = 256 * 1024;

impl axum::extract::FromRequest<App> for Posted {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, app: &App) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let user = User::from_request_parts(&mut parts, app).await?;
        let bytes = axum::body::to_bytes(body, MAX_FORM).await.map_err(|_| {
            error_page(
                Some(&user),
                &Error::invalid(
                    "form_too_large",
                    "this form is larger than plinth's forms can be",
                ),
            )
        })?;
        let form = Form(parse_form(&bytes));
        check_csrf(&user, &parts.headers, form.get("_csrf"))?;
        Ok(Posted {
            user,
            headers: parts.headers,
            form,
        })
    }
}

/// Checks a form's CSRF token (and the Origin, when the browser sent one).
pub(crate) fn check_csrf(
    user: &User,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<(), Response> {
    same_origin(headers)?;
    let want = user.session.csrf.as_bytes();
    let got = token.unwrap_or("").as_bytes();
    let same =
        want.len() == got.len() && want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        Ok(())
    } else {
        Err(error_page(
            Some(user),
            &Error::forbidden(
                "this form has expired or did not come from plinth; reload the page and try again",
            ),
        ))
    }
}

/// A POST whose Origin names another site is refused.
fn same_origin(headers: &HeaderMap) -> Result<(), Response> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(error_page(
            None,
            &Error::forbidden(format!("a form from {origin} may not act on plinth")),
        ))
    }
}

fn encode_flash(f: &Flash) -> String {
    format!("{}:{}", f.kind, url_encode(&f.text))
}

fn decode_flash(v: &str) -> Option<Flash> {
    let (kind, text) = v.split_once(':')?;
    let kind = match kind {
        "ok" => "ok",
        "err" => "err",
        _ => return None,
    };
    Some(Flash {
        kind,
        text: percent_decode(text),
    })
}

/// A redirect (303, so the browser GETs) that leaves a message for the next page.
pub(crate) fn redirect_with(
    headers: &HeaderMap,
    to: &str,
    kind: &'static str,
    text: impl Into<String>,
) -> Response {
    let flash = Flash {
        kind,
        text: text.into(),
    };
    let mut resp = Redirect::to(to).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(headers, FLASH_COOKIE, &encode_flash(&flash), Some(60)),
    );
    resp
}

/// Clears a flash message that has been shown.
pub(crate) fn shown(user: &User, headers: &HeaderMap, mut resp: Response) -> Response {
    if user.flash.is_some() {
        resp.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(headers, FLASH_COOKIE, "", Some(0)),
        );
    }
    resp
}

/// An error as a page, with the status the API would answer.
pub(crate) fn error_page(user: Option<&User>, e: &Error) -> Response {
    let status = crate::error::status(e.kind);
    let message = if e.kind == ErrorKind::Internal {
        "something failed inside plinth; the details are in its log".to_owned()
    } else {
        e.message.clone()
    };
    let ctx = minijinja::context! { status => status.as_u16(), message => message };
    let ctx = match user {
        Some(u) => u.page("", 0, ctx),
        None => ctx,
    };
    let mut resp = render("error.html", ctx);
    *resp.status_mut() = status;
    resp
}

// ------------------------------------------------------------------ forms

/// An `application/x-www-form-urlencoded` body as (name, value) pairs, repeated names kept.
pub(crate) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed form.
pub(crate) struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value, trimmed; None when absent or empty.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The fields as a map for re-rendering a form (passwords left out).
    pub fn echo(&self) -> HashMap<String, String> {
        self.0
            .iter()
            .filter(|(k, _)| !k.contains("password") && k != "_csrf")
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_like_browsers_encode() {
        let f = parse_form(b"a=1&b=x+y%2Fz&id=1&id=2&empty=&c=%E2%9C%93&bad=%zz&trail=%4");
        assert_eq!(
            f,
            [
                ("a", "1"),
                ("b", "x y/z"),
                ("id", "1"),
                ("id", "2"),
                ("empty", ""),
                ("c", "✓"),
                ("bad", "%zz"),
                ("trail", "%4")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn cookies_and_flash_round_trip() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; plinth_session=s3cret; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("s3cret"));
        assert_eq!(cookie(&h, "nope"), None);
        let f = Flash {
            kind: "err",
            text: "rack r1: slot 7; taken".into(),
        };
        let back = decode_flash(&encode_flash(&f)).unwrap();
        assert_eq!(
            (back.kind, back.text.as_str()),
            ("err", "rack r1: slot 7; taken")
        );
        assert!(decode_flash("evil:<script>").is_none());
    }

    #[test]
    fn cookies_are_secure_only_over_tls() {
        let plain = HeaderMap::new();
        let c = set_cookie(&plain, "x", "1", None);
        assert_eq!(c, "x=1; Path=/; HttpOnly; SameSite=Lax");
        let mut tls = HeaderMap::new();
        tls.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(
            set_cookie(&tls, "x", "1", Some(0))
                .to_str()
                .unwrap()
                .ends_with("; Max-Age=0; Secure")
        );
    }

    #[test]
    fn every_template_compiles_and_sizes_read_well() {
        let _ = env();
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(32 << 20), "32 MiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
    }
}
