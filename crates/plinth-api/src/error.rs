//! The one place errors become HTTP responses: `{"error": {"code", "message", ...}}`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let e = match &r {
            JsonRejection::MissingJsonContentType(_) => Error::invalid(
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ),
            JsonRejection::JsonSyntaxError(_) => Error::invalid(
                "malformed_json",
                format!("the body is not valid JSON: {}", r.body_text()),
            ),
            JsonRejection::JsonDataError(_) => {
                let text = r.body_text();
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
                Error::invalid(
                    code,
                    text.trim_start_matches(
                        "Failed to deserialize the JSON body into the target type: ",
                    )
                    .to_owned(),
                )
            }
            _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Error::invalid(
                "body_too_large",
                "the request body is larger than this endpoint accepts",
            ),
            _ => Error::invalid("invalid_body", r.body_text()),
        };
        ApiError(e)
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

/// `axum::Json` whose rejections are plinth errors.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejections are plinth errors.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` whose rejections are plinth errors.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);
