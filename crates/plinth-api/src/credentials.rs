//! BMC credentials (issue 21, part 4): `POST /machines/{id}/bmc/rotate` queues a rotation of
//! the machine's BMC password. No answer of the API ever holds a BMC password: the job's
//! result says only when it was rotated.

use axum::extract::State;
use axum::response::Response;
use plinth_core::App;
use plinth_types::api::{ErrorBody, Job};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Path};

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
