//! `/api/v1/webhooks`: admins register, list and remove webhooks and read their deliveries.
//! Handlers are thin: the rules are plinth-core's `webhooks`.

use axum::extract::State;
use axum::http::StatusCode;
use plinth_core::App;
use plinth_types::api::ErrorBody;
use plinth_types::feed::{Delivery, DeliveryState, Webhook, WebhookCreate, WebhookCreated};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Json, Path, Query};

type ApiResult<T> = Result<T, ApiError>;

#[utoipa::path(post, path = "/api/v1/webhooks", request_body = WebhookCreate, tag = "webhooks",
    responses((status = 201, body = WebhookCreated, description = "the secret is shown only here"),
              (status = 400, body = ErrorBody, description = "`invalid_url`, `invalid_secret`, `invalid_kind`")))]
pub async fn create(
    State(app): State<App>,
    Caller(who): Caller,
    Json(req): Json<WebhookCreate>,
) -> ApiResult<(StatusCode, Json<WebhookCreated>)> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_webhook(&who, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = Vec<Webhook>)))]
pub async fn list(State(app): State<App>, Caller(who): Caller) -> ApiResult<Json<Vec<Webhook>>> {
    Ok(Json(app.list_webhooks(&who).await?))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 204, description = "removed, with its queued deliveries")))]
pub async fn delete(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    app.delete_webhook(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// Only deliveries in this state.
    state: Option<DeliveryState>,
    /// Only deliveries of events before this id (to page back).
    before: Option<i64>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path), DeliveryParams),
    responses((status = 200, body = Vec<Delivery>, description = "newest first")))]
pub async fn deliveries(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Query(p): Query<DeliveryParams>,
) -> ApiResult<Json<Vec<Delivery>>> {
    Ok(Json(
        app.webhook_deliveries(&who, id, p.state, p.before, p.limit)
            .await?,
    ))
}
