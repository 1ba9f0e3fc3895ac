//! Firmware (issue 21): `/api/v1/firmware/...` and `/api/v1/machines/{id}/firmware`, and the
//! per-job URL a BMC fetches its image from (`/firmware/{job}/{token}`, on the provisioning
//! listener, where BMCs and machines reach plinth; no bearer token: a BMC has none, the
//! job's token is the key). Handlers are thin: the rules are plinth-core's `firmware`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plinth_core::App;
use plinth_types::api::{ErrorBody, Job};
use plinth_types::firmware::{
    FirmwareImage, FirmwareImageDescribe, FirmwareInventory, FirmwareUpdateRequest, Rollout,
    RolloutRequest,
};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Json, Path};

type ApiResult<T> = Result<T, ApiError>;

#[utoipa::path(put, path = "/api/v1/firmware/images/{name}", tag = "firmware", params(("name" = String, Path)),
    request_body = FirmwareImageDescribe,
    responses((status = 200, body = FirmwareImage),
              (status = 400, body = ErrorBody, description = "`invalid_component`, `invalid_version`, `not_firmware`")))]
pub async fn describe_image(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
    Json(req): Json<FirmwareImageDescribe>,
) -> ApiResult<Json<FirmwareImage>> {
    Ok(Json(app.describe_firmware_image(&who, &name, req).await?))
}

#[utoipa::path(get, path = "/api/v1/machines/{id}/firmware", tag = "firmware", params(("id" = Uuid, Path)),
    responses((status = 200, body = FirmwareInventory, description = "as the BMC last reported it")))]
pub async fn inventory(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<FirmwareInventory>> {
    Ok(Json(app.machine_firmware(&who, id).await?))
}

#[utoipa::path(post, path = "/api/v1/machines/{id}/firmware", tag = "firmware", params(("id" = Uuid, Path)),
    request_body = FirmwareUpdateRequest,
    responses((status = 202, body = Job, headers(("Location" = String, description = "the job: /api/v1/jobs/{id}")), description = "queued; follow it at Location"),
              (status = 400, body = ErrorBody, description = "`not_firmware`"),
              (status = 409, body = ErrorBody, description = "`firmware_not_allowed` (not ready nor in maintenance), `firmware_undescribed`, `no_bmc`, `decommissioned`")))]
pub async fn update(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Json(req): Json<FirmwareUpdateRequest>,
) -> ApiResult<Response> {
    Ok(crate::v1::accepted(
        app.request_firmware_update(&who, id, req).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/machines/{id}/firmware/read", tag = "firmware", params(("id" = Uuid, Path)),
    responses((status = 202, body = Job, headers(("Location" = String, description = "the job: /api/v1/jobs/{id}")), description = "queued; follow it at Location"),
              (status = 409, body = ErrorBody, description = "`no_bmc`, `decommissioned`")))]
pub async fn read(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    Ok(crate::v1::accepted(
        app.request_firmware_read(&who, id).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/firmware/rollouts", tag = "firmware", request_body = RolloutRequest,
    responses((status = 201, body = Rollout),
              (status = 400, body = ErrorBody, description = "`invalid_rollout`, `invalid_max_per_rack`, `not_firmware`"),
              (status = 404, body = ErrorBody, description = "no such image, rack or machine"),
              (status = 409, body = ErrorBody, description = "`firmware_undescribed`")))]
pub async fn create_rollout(
    State(app): State<App>,
    Caller(who): Caller,
    Json(req): Json<RolloutRequest>,
) -> ApiResult<(StatusCode, Json<Rollout>)> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_rollout(&who, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/firmware/rollouts", tag = "firmware",
    responses((status = 200, body = Vec<Rollout>, description = "the latest 100, newest first")))]
pub async fn list_rollouts(
    State(app): State<App>,
    Caller(who): Caller,
) -> ApiResult<Json<Vec<Rollout>>> {
    Ok(Json(app.rollouts(&who).await?))
}

#[utoipa::path(get, path = "/api/v1/firmware/rollouts/{id}", tag = "firmware", params(("id" = Uuid, Path)),
    responses((status = 200, body = Rollout)))]
pub async fn get_rollout(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Rollout>> {
    Ok(Json(app.rollout(&who, id).await?))
}

/// `GET /firmware/{job}/{token}`: the image of a running update, for its BMC. Anything else
/// (another job, a finished one, a wrong token) is the same 404.
pub async fn fetch(
    State(app): State<App>,
    axum::extract::Path((job, token)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let nope = || {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such firmware image\n",
        )
            .into_response()
    };
    let Ok(job) = job.parse::<Uuid>() else {
        return nope();
    };
    if token.len() > 128 {
        return nope();
    }
    match app.firmware_fetch(job, &token).await {
        Ok(path) => match crate::boot::serve_file(&path, &headers).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "serving a firmware image");
                nope()
            }
        },
        Err(e) if e.kind == plinth_types::ErrorKind::NotFound => nope(),
        Err(e) => ApiError(e).into_response(),
    }
}
