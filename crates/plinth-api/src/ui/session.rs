//! Sessions and what a request carries: the signed-in user and what it may do, cookies, the
//! CSRF checks of every POST, and the one-shot message shown after a redirect.

#![allow(clippy::result_large_err)]

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use plinth_core::auth::{Permission, allows};
use plinth_core::users::UiSession;
use plinth_core::{App, Principal};
use plinth_types::{Error, ErrorKind, Verb};
use serde::Serialize;

use super::*;

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
pub(crate) fn over_tls(headers: &HeaderMap) -> bool {
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
pub(crate) const MAX_FORM: usize = 256 * 1024;

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

/// The request's Origin header, and whether it names this host (the Host header); `None`
/// without an Origin. The one origin comparison of the UI's forms, streams and console.
pub(crate) fn origin(headers: &HeaderMap) -> Option<(&str, bool)> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    Some((
        origin,
        !host.is_empty() && origin_host.eq_ignore_ascii_case(host),
    ))
}

/// A POST whose Origin names another site is refused.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), Response> {
    match origin(headers) {
        None | Some((_, true)) => Ok(()),
        Some((origin, false)) => Err(error_page(
            None,
            &Error::forbidden(format!("a form from {origin} may not act on plinth")),
        )),
    }
}

pub(crate) fn encode_flash(f: &Flash) -> String {
    format!("{}:{}", f.kind, url_encode(&f.text))
}

pub(crate) fn decode_flash(v: &str) -> Option<Flash> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
