//! The one place errors become HTTP responses: `{"error": {"code", "message", ...}}`.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use plinth_types::api::{ErrorBody, ErrorDetail};
use plinth_types::{Error, ErrorKind};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::TooMany => StatusCode::TOO_MANY_REQUESTS,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = if e.code == "unsupported_media_type" {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        } else if e.code == "body_too_large" {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            status(e.kind)
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: e.code.to_owned(),
                message: e.message,
                current_state: e.current_state,
                current_version: e.current_version,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// The code and message of a JSON body that does not fit its type (serde's words).
fn data_error(text: &str) -> Error {
    let code = if text.contains("unknown field") {
        "unknown_field"
    } else if text.contains("MAC address") {
        "invalid_mac"
    } else if text.contains("IP address") || text.contains("IPv4 address") {
        "invalid_ip"
    } else if text.contains("missing field") {
        "missing_field"
    } else {
        "invalid_value"
    };
    Error::invalid(code, text.to_owned())
}

/// A JSON body as `T`. Two things are settled here, for every body alike: a number with a zero
/// fraction (`2.0`) is the integer it spells, as JSON Schema says (Python's `json` writes a
/// float so), and text never holds NUL (`\u0000`), which PostgreSQL cannot store.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let mut v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        Error::invalid("malformed_json", format!("the body is not valid JSON: {e}"))
    })?;
    if !settle(&mut v) {
        return Err(Error::invalid(
            "invalid_value",
            "text must not contain NUL (\\u0000)",
        ));
    }
    serde_path_to_error::deserialize(v).map_err(|e| data_error(&e.to_string()))
}

/// Whole numbers as integers; false when a string (or a key) holds NUL.
fn settle(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => !s.contains('\0'),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
                && f.abs() <= 9_007_199_254_740_992.0
            {
                // Exactly representable (at most 2^53), so the cast loses nothing.
                #[allow(clippy::cast_possible_truncation)]
                let i = f as i64;
                *v = Value::from(i);
            }
            true
        }
        Value::Array(a) => a.iter_mut().all(settle),
        Value::Object(o) => o.iter_mut().all(|(k, v)| !k.contains('\0') && settle(v)),
        Value::Null | Value::Bool(_) => true,
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        ApiError(if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::invalid(
                "body_too_large",
                "the request body is larger than this endpoint accepts",
            )
        } else {
            Error::invalid("invalid_body", r.body_text())
        })
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError(Error::invalid("invalid_path", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError(Error::invalid("invalid_query", r.body_text()))
    }
}

/// Whether a Content-Type is JSON (`application/json`, or `application/...+json`).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence
        .strip_prefix("application/")
        .is_some_and(|sub| sub == "json" || sub.ends_with("+json"))
}

/// A JSON body (`Content-Type: application/json`, else 415) read with [`parse_json`]; its
/// rejections are plinth errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError(Error::invalid(
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            )));
        }
        let body = Bytes::from_request(req, state).await?;
        Ok(Json(parse_json(&body)?))
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The request body as it came (bounded like a JSON body); its rejections are plinth errors.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Ok(RawBody(Bytes::from_request(req, state).await?))
    }
}

/// The text of the request's path and query may not hold NUL either (`%00`).
fn no_nul(raw: &str, code: &'static str) -> Result<(), ApiError> {
    if raw.contains("%00") {
        return Err(ApiError(Error::invalid(
            code,
            "the URL must not contain NUL (%00)",
        )));
    }
    Ok(())
}

/// `axum::extract::Path` whose rejections are plinth errors.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        no_nul(parts.uri.path(), "invalid_path")?;
        let axum::extract::Path(v) = axum::extract::Path::from_request_parts(parts, state).await?;
        Ok(Path(v))
    }
}

/// `axum::extract::Query` whose rejections are plinth errors.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        no_nul(parts.uri.query().unwrap_or(""), "invalid_query")?;
        let axum::extract::Query(v) =
            axum::extract::Query::from_request_parts(parts, state).await?;
        Ok(Query(v))
    }
}
