//! BMC credentials and discovery (issue 21, part 4): `POST /machines/{id}/bmc/rotate` queues a
//! rotation of the machine's BMC password; `/bmc/scans` queues and reads scans of a BMC
//! network. No answer of the API ever holds a BMC password: a rotation's result says only when
//! it was rotated, a scan's result which factory credential's user name worked.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use plinth_core::App;
use plinth_types::api::{ErrorBody, Job};
use plinth_types::scan::{BmcScan, BmcScanRequest};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Json, Path};

#[utoipa::path(post, path = "/api/v1/machines/{id}/bmc/rotate", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 202, body = Job, headers(("Location" = String, description = "the job: /api/v1/jobs/{id}")),
                description = "queued: a new random password is staged, set on the BMC, proved and stored; the job's result holds `rotated_at`, never the password"),
              (status = 409, body = ErrorBody, description = "`no_bmc`, `decommissioned`")))]
pub async fn rotate(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    Ok(crate::v1::accepted(app.request_bmc_rotate(&who, id).await?))
}

/// `POST /api/v1/bmc/scans` (admins): a scan of one CIDR's addresses for BMCs; 202 with the
/// scan, `Location` its URL. The contract test's schemathesis leaves this one operation out: a
/// scan contacts the network the request names.
#[utoipa::path(post, path = "/api/v1/bmc/scans", tag = "bmc",
    request_body = BmcScanRequest,
    responses((status = 202, body = BmcScan, headers(("Location" = String, description = "the scan: /api/v1/bmc/scans/{id}")),
                description = "queued; its results come in as it runs (GET Location)"),
              (status = 400, body = ErrorBody, description = "`invalid_cidr`, `cidr_too_large` (more than 1,024 addresses), `invalid_ports`, `invalid_rate`")))]
pub async fn create_scan(
    State(app): State<App>,
    Caller(who): Caller,
    Json(req): Json<BmcScanRequest>,
) -> Result<Response, ApiError> {
    let scan = app.request_bmc_scan(&who, req).await?;
    let mut resp = (StatusCode::ACCEPTED, Json(scan.clone())).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/bmc/scans/{}", scan.id)) {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /api/v1/bmc/scans`: the latest scans, without their results.
#[utoipa::path(get, path = "/api/v1/bmc/scans", tag = "bmc",
    responses((status = 200, body = Vec<BmcScan>, description = "the latest 100, newest first; `results` is empty here")))]
pub async fn list_scans(
    State(app): State<App>,
    Caller(who): Caller,
) -> Result<Json<Vec<BmcScan>>, ApiError> {
    Ok(Json(app.bmc_scans(&who).await?))
}

/// `GET /api/v1/bmc/scans/{id}`: a scan and what it found so far.
#[utoipa::path(get, path = "/api/v1/bmc/scans/{id}", tag = "bmc", params(("id" = Uuid, Path)),
    responses((status = 200, body = BmcScan, description = "the scan and what it found so far")))]
pub async fn get_scan(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<BmcScan>, ApiError> {
    Ok(Json(app.bmc_scan(&who, id).await?))
}
