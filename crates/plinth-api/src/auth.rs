//! Bearer-token authentication as an extractor: handlers that take [`Caller`] need a token.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use plinth_core::{App, Principal};
use plinth_types::Error;

use crate::error::ApiError;

/// The authenticated caller.
pub struct Caller(pub Principal);

/// The bearer secret itself, for endpoints that take an agent token as well as an API token
/// (plinth-core decides which it is).
pub struct Bearer(pub String);

fn bearer(parts: &Parts) -> Result<String, Error> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| Error::unauthorized("missing Authorization: Bearer <token> header"))?;
    let value = header
        .to_str()
        .map_err(|_| Error::unauthorized("malformed Authorization header"))?;
    let secret = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| Error::unauthorized("the Authorization header must be: Bearer <token>"))?;
    Ok(secret.trim().to_owned())
}

impl FromRequestParts<App> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _app: &App) -> Result<Self, Self::Rejection> {
        Ok(Bearer(bearer(parts)?))
    }
}

/// The caller when the request carries a token; `None` when it carries none (a bad token is
/// still refused).
pub struct MaybeCaller(pub Option<Principal>);

impl FromRequestParts<App> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        if !parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            return Ok(MaybeCaller(None));
        }
        let Caller(p) = Caller::from_request_parts(parts, app).await?;
        Ok(MaybeCaller(Some(p)))
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let secret = bearer(parts)?;
        let principal = app.authenticate(&secret).await?;
        tracing::Span::current().record("actor", principal.name.as_str());
        Ok(Caller(principal))
    }
}
