//! BIOS settings (issue 21): `GET|PATCH /api/v1/machines/{id}/bios`, `/api/v1/bios-profiles`
//! and `PUT /api/v1/pools/{name}/bios-profile`. Handlers are thin: the rules are plinth-core's
//! `bios`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use plinth_core::App;
use plinth_types::api::{
    BiosProfile, BiosProfileCreate, BiosProfileUpdate, BiosRequest, ErrorBody, Job, MachineBios,
    PoolBiosProfile,
};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Json, Path};

type ApiResult<T> = Result<T, ApiError>;

/// The routes, merged into the management API.
pub(crate) fn routes() -> Router<App> {
    use axum::routing::{get, put};
    Router::new()
        .route("/machines/{id}/bios", get(machine_bios).patch(request_bios))
        .route("/bios-profiles", get(list_profiles).post(create_profile))
        .route(
            "/bios-profiles/{name}",
            get(get_profile).put(replace_profile).delete(delete_profile),
        )
        .route("/pools/{name}/bios-profile", put(set_pool_profile))
}

#[utoipa::path(get, path = "/api/v1/machines/{id}/bios", tag = "bios", params(("id" = Uuid, Path)),
    responses((status = 200, body = MachineBios, description = "the BIOS as last read through the BMC, what was pending, the pool's profile and the last change asked")))]
pub async fn machine_bios(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<MachineBios>> {
    Ok(Json(app.machine_bios(&who, id).await?))
}

#[utoipa::path(patch, path = "/api/v1/machines/{id}/bios", tag = "bios", params(("id" = Uuid, Path)),
    request_body = BiosRequest,
    responses((status = 202, body = Job, description = "a `bios_apply` job: set pending, boot, read back; it fails naming each value that did not stick"),
              (status = 400, body = ErrorBody, description = "`invalid_bios_attributes`: a malformed value, or one the BMC's registry (or its attributes) refuses"),
              (status = 409, body = ErrorBody, description = "`bios_state` (the machine is in use: `force`; or busy), `no_bios_bmc`")))]
pub async fn request_bios(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Json(req): Json<BiosRequest>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.request_bios(&who, id, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/bios-profiles", tag = "bios",
    responses((status = 200, body = Vec<BiosProfile>)))]
pub async fn list_profiles(
    State(app): State<App>,
    Caller(who): Caller,
) -> ApiResult<Json<Vec<BiosProfile>>> {
    Ok(Json(app.bios_profiles(&who).await?))
}

#[utoipa::path(get, path = "/api/v1/bios-profiles/{name}", tag = "bios", params(("name" = String, Path)),
    responses((status = 200, body = BiosProfile)))]
pub async fn get_profile(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<BiosProfile>> {
    Ok(Json(app.bios_profile(&who, &name).await?))
}

#[utoipa::path(post, path = "/api/v1/bios-profiles", tag = "bios", request_body = BiosProfileCreate,
    responses((status = 201, body = BiosProfile),
              (status = 409, body = ErrorBody, description = "`profile_exists`")))]
pub async fn create_profile(
    State(app): State<App>,
    Caller(who): Caller,
    Json(req): Json<BiosProfileCreate>,
) -> ApiResult<(StatusCode, Json<BiosProfile>)> {
    Ok((
        StatusCode::CREATED,
        Json(app.put_bios_profile(&who, req, true).await?),
    ))
}

#[utoipa::path(put, path = "/api/v1/bios-profiles/{name}", tag = "bios", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    request_body = BiosProfileUpdate,
    responses((status = 200, body = BiosProfile, description = "its attributes replaced; machines get them on their next way to ready")))]
pub async fn replace_profile(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
    Json(req): Json<BiosProfileUpdate>,
) -> ApiResult<Json<BiosProfile>> {
    let req = BiosProfileCreate {
        name,
        attributes: req.attributes,
    };
    Ok(Json(app.put_bios_profile(&who, req, false).await?))
}

#[utoipa::path(delete, path = "/api/v1/bios-profiles/{name}", tag = "bios", params(("name" = String, Path)),
    responses((status = 204, description = "removed"),
              (status = 409, body = ErrorBody, description = "`profile_in_use`")))]
pub async fn delete_profile(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    app.remove_bios_profile(&who, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/pools/{name}/bios-profile", tag = "bios", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    request_body = PoolBiosProfile,
    responses((status = 200, body = PoolBiosProfile, description = "the profile the pool's machines get on their way to ready"),
              (status = 400, body = ErrorBody, description = "`unknown_profile`")))]
pub async fn set_pool_profile(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
    Json(req): Json<PoolBiosProfile>,
) -> ApiResult<Json<PoolBiosProfile>> {
    let profile = app
        .set_pool_bios_profile(&who, &name, req.profile.as_deref())
        .await?;
    Ok(Json(PoolBiosProfile { profile }))
}
