//! Signing in and out: the login form, its CSRF cookie, the session cookie.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use plinth_core::App;
use serde::Deserialize;

use super::super::{
    Form, LOGIN_CSRF_COOKIE, Posted, SESSION_COOKIE, cookie, parse_form, render, same_origin,
    set_cookie,
};
use super::*;

#[derive(Deserialize, Default)]
pub(crate) struct LoginQuery {
    next: Option<String>,
    bye: Option<String>,
}

fn login_page(
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    username: &str,
    error: Option<String>,
    notice: Option<String>,
) -> Response {
    // The login form's own CSRF token: the same random value in a cookie and in the form.
    let csrf = cookie(headers, LOGIN_CSRF_COOKIE)
        .filter(|c| c.len() >= 32 && c.len() <= 128 && c.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(plinth_core::auth::generate_secret);
    let mut resp = render(
        "login.html",
        context! { csrf => csrf, next => next, username => username, error => error, notice => notice },
    );
    *resp.status_mut() = status;
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(headers, LOGIN_CSRF_COOKIE, &csrf, Some(3600)),
    );
    resp
}

pub(crate) async fn login_form(headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    let next = local_path(q.next.as_deref(), "/racks");
    let notice = q.bye.map(|_| "You are logged out.".to_owned());
    login_page(&headers, StatusCode::OK, &next, "", None, notice)
}

pub(crate) async fn login(
    State(app): State<App>,
    client: crate::ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form(parse_form(&body));
    let next = local_path(form.get("next"), "/racks");
    let username = form.get("username").unwrap_or("").trim().to_owned();
    if let Err(resp) = same_origin(&headers) {
        return resp;
    }
    let sent = form.get("_csrf").unwrap_or("");
    if sent.is_empty() || cookie(&headers, LOGIN_CSRF_COOKIE).as_deref() != Some(sent) {
        return login_page(
            &headers,
            StatusCode::FORBIDDEN,
            &next,
            &username,
            Some("This login form has expired; please try again.".into()),
            None,
        );
    }
    match app
        .login(
            &username,
            form.get("password").unwrap_or(""),
            (!client.0.is_unspecified()).then_some(client.0),
        )
        .await
    {
        Ok(login) => {
            let mut resp = Redirect::to(&next).into_response();
            let h = resp.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(
                    &headers,
                    SESSION_COOKIE,
                    &login.secret,
                    Some(plinth_core::users::SESSION_MAX.as_secs()),
                ),
            );
            h.append(
                header::SET_COOKIE,
                set_cookie(&headers, LOGIN_CSRF_COOKIE, "", Some(0)),
            );
            resp
        }
        // The form again, with the reason, as a page that loaded fine (a 4xx would put an error
        // in the browser's console for every mistyped password).
        Err(e) => login_page(
            &headers,
            if e.kind == plinth_types::ErrorKind::TooMany {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            },
            &next,
            &username,
            Some(e.message),
            None,
        ),
    }
}

pub(crate) async fn logout(
    State(app): State<App>,
    Posted {
        user,
        headers,
        form: _,
    }: Posted,
) -> Page {
    app.logout(&user.secret).await.map_err(fail(&user))?;
    let mut resp = Redirect::to("/login?bye=1").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, "", Some(0)),
    );
    Ok(resp)
}
