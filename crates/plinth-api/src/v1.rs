//! The `/api/v1` handlers. Each one extracts, calls one plinth-core operation, and shapes
//! the response; the decisions are made in plinth-core.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use plinth_core::App;
use plinth_core::events::EventQuery;
use plinth_core::lifecycle::Action;
use plinth_core::machines::MachineQuery;
use plinth_types::api::*;
use plinth_types::{Error, MachineState, Verb};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::{Bearer, Caller};
use crate::boot::Peer;
use crate::error::{ApiError, Json, Path, Query, RawBody, parse_json};

type ApiResult<T> = Result<T, ApiError>;

fn with_etag(m: Machine, status: StatusCode) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", m.state_version)).ok();
    let mut resp = (status, Json(m)).into_response();
    if let Some(v) = etag {
        resp.headers_mut().insert(axum::http::header::ETAG, v);
    }
    resp
}

/// An action's body: none (or `null`) is the default; else JSON of `shape`, whatever the
/// Content-Type says (`curl -d` sends a form's).
fn action_body<T: Default + serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> ApiResult<T> {
    let body = body.trim_ascii();
    if body.is_empty() || body == b"null" {
        return Ok(T::default());
    }
    parse_json(body).map_err(|e| {
        ApiError(Error {
            message: format!("the body must be {shape}: {}", e.message),
            ..e
        })
    })
}

/// `If-Match: "7"` (or `7`, `W/"7"`) → Some(7); `*` or absent → None.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        Error::invalid(
            "invalid_if_match",
            "If-Match must carry the machine's state_version, e.g. \"7\"",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s == "*" {
        return Ok(None);
    }
    let s = s.strip_prefix("W/").unwrap_or(s).trim_matches('"');
    Ok(Some(s.parse::<i64>().map_err(|_| bad())?))
}

// ------------------------------------------------------------------ racks

#[utoipa::path(post, path = "/api/v1/racks", request_body = RackCreate, tag = "racks",
    responses((status = 201, body = Rack), (status = 409, body = ErrorBody, description = "`duplicate_rack`")))]
pub async fn create_rack(
    State(app): State<App>,
    Caller(who): Caller,
    Json(req): Json<RackCreate>,
) -> ApiResult<(StatusCode, Json<Rack>)> {
    Ok((StatusCode::CREATED, Json(app.create_rack(&who, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/racks", tag = "racks", responses((status = 200, body = Vec<Rack>)))]
pub async fn list_racks(State(app): State<App>, Caller(who): Caller) -> ApiResult<Json<Vec<Rack>>> {
    Ok(Json(app.list_racks(&who).await?))
}

#[utoipa::path(get, path = "/api/v1/racks/{name}", tag = "racks", params(("name" = String, Path)),
    responses((status = 200, body = Rack)))]
pub async fn get_rack(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Rack>> {
    Ok(Json(app.get_rack(&who, &name).await?))
}

#[utoipa::path(patch, path = "/api/v1/racks/{name}", tag = "racks", params(("name" = String, Path)), request_body = RackPatch,
    responses((status = 200, body = Rack), (status = 409, body = ErrorBody, description = "`rack_not_empty`: its machines do not fit the new height")))]
pub async fn update_rack(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
    Json(patch): Json<RackPatch>,
) -> ApiResult<Json<Rack>> {
    Ok(Json(app.update_rack(&who, &name, patch).await?))
}

#[utoipa::path(delete, path = "/api/v1/racks/{name}", tag = "racks", params(("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 409, body = ErrorBody, description = "`rack_not_empty`")))]
pub async fn delete_rack(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    app.delete_rack(&who, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ machines

#[utoipa::path(post, path = "/api/v1/machines", request_body = MachineCreate, tag = "machines",
    responses((status = 201, body = Machine, headers(("ETag" = String, description = "the machine's state_version, quoted: send it back in If-Match"))),
              (status = 409, body = ErrorBody, description = "`duplicate_mac`, `duplicate_ipv4`, `duplicate_hostname`, `rack_slot_taken`: another machine has it")))]
pub async fn enroll_machine(
    State(app): State<App>,
    Caller(who): Caller,
    Json(req): Json<MachineCreate>,
) -> ApiResult<Response> {
    Ok(with_etag(
        app.enroll_machine(&who, req).await?,
        StatusCode::CREATED,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MachineListParams {
    state: Option<MachineState>,
    /// Rack name.
    rack: Option<String>,
    pool: Option<String>,
    tag: Option<String>,
    /// Matches hostname (substring), MAC or serial.
    q: Option<String>,
    /// `ok`, `warning`, `critical`, or `unknown` (no BMC, or its health not read yet).
    health: Option<plinth_types::health::HealthStatus>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/machines", tag = "machines", params(MachineListParams),
    responses((status = 200, body = MachinePage)))]
pub async fn list_machines(
    State(app): State<App>,
    Caller(who): Caller,
    Query(p): Query<MachineListParams>,
) -> ApiResult<Json<MachinePage>> {
    let q = MachineQuery {
        state: p.state,
        rack: p.rack,
        pool: p.pool,
        tag: p.tag,
        q: p.q,
        health: p.health,
        limit: p.limit,
        cursor: p.cursor,
    };
    Ok(Json(app.list_machines(&who, q).await?))
}

#[utoipa::path(get, path = "/api/v1/machines/{id}", tag = "machines", params(("id" = Uuid, Path)),
    responses((status = 200, body = Machine, headers(("ETag" = String, description = "the machine's state_version, quoted: send it back in If-Match")))))]
pub async fn get_machine(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    Ok(with_etag(app.get_machine(&who, id).await?, StatusCode::OK))
}

#[utoipa::path(patch, path = "/api/v1/machines/{id}", tag = "machines", params(("id" = Uuid, Path)), request_body = MachinePatch,
    responses((status = 200, body = Machine, headers(("ETag" = String, description = "the machine's state_version, quoted: send it back in If-Match"))),
              (status = 409, body = ErrorBody, description = "`duplicate_hostname`, `rack_slot_taken`, `decommissioned`")))]
pub async fn update_machine(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Json(patch): Json<MachinePatch>,
) -> ApiResult<Response> {
    Ok(with_etag(
        app.update_machine(&who, id, patch).await?,
        StatusCode::OK,
    ))
}

/// The `{verb}` of `POST /machines/{id}/actions/{verb}`: the lifecycle verbs that are actions
/// (the agent outcomes only forced), and the two maintenance switches; `deploy`, which takes a
/// body of its own, has a path of its own ([`deploy_machine`]).
pub struct ActionVerb;

impl utoipa::PartialSchema for ActionVerb {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let verbs = Verb::ALL
            .into_iter()
            .filter(|v| v.is_action() && *v != Verb::Deploy)
            .map(Verb::as_str)
            .chain(["maintenance_on", "maintenance_off"]);
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A lifecycle verb (docs/lifecycle.md; an agent's outcome only with `force`), \
                 `maintenance_on` or `maintenance_off`; `deploy` has a path of its own.",
            ))
            .enum_values(Some(verbs))
            .into()
    }
}

impl utoipa::ToSchema for ActionVerb {}

/// Runs a lifecycle verb (`inspect`, `deploy`, `release`, `decommission`, ...), or
/// `maintenance_on` / `maintenance_off`. `If-Match` pins the state_version.
#[utoipa::path(post, path = "/api/v1/machines/{id}/actions/{verb}", tag = "machines",
    params(("id" = Uuid, Path), ("verb" = ActionVerb, Path),
           ("If-Match" = Option<String>, Header, description = "the state_version the machine must have, e.g. `\"7\"` (or `*`: any)", nullable = false, pattern = r#"^(\*|(W/)?"*[+-]?0*[0-9]{1,18}"*)$"#)),
    request_body(content = Option<ActionRequest>, description = "none (or `null`) is `{}`"),
    responses((status = 200, body = Machine, headers(("ETag" = String, description = "the machine's state_version, quoted: send it back in If-Match"))),
              (status = 409, body = ErrorBody, description = "`invalid_transition`, `stale_version`, `in_maintenance`, `decommissioned`, `no_disks`, `image_unavailable`; carries `current_state` and `current_version`")))]
pub async fn machine_action(
    State(app): State<App>,
    Caller(who): Caller,
    Path((id, verb)): Path<(Uuid, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let expected = if_match(&headers)?;
    let req: ActionRequest = action_body(&body, "{\"reason\": \"...\"}")?;
    let m = match verb.as_str() {
        "maintenance_on" => {
            app.set_maintenance(&who, id, true, req.reason, expected)
                .await?
        }
        "maintenance_off" => app.set_maintenance(&who, id, false, None, expected).await?,
        other => {
            let verb: Verb = other.parse().map_err(|_| {
                Error::invalid(
                    "unknown_verb",
                    format!("unknown verb {other:?}; see docs/lifecycle.md for the verbs"),
                )
            })?;
            let action = Action {
                verb,
                expected_version: expected,
                reason: req.reason,
            };
            if req.force {
                app.force_outcome(&who, id, action).await?
            } else {
                app.act(&who, id, action).await?
            }
        }
    };
    Ok(with_etag(m, StatusCode::OK))
}

/// `deploy`: writes an image to an allocated machine (the allocation's client or an operator).
/// Without a body the machine's state is checked first, so that deploying an unallocated
/// machine says so. `If-Match` pins the state_version.
#[utoipa::path(post, path = "/api/v1/machines/{id}/actions/deploy", tag = "machines",
    params(("id" = Uuid, Path),
           ("If-Match" = Option<String>, Header, description = "the state_version the machine must have, e.g. `\"7\"` (or `*`: any)", nullable = false, pattern = r#"^(\*|(W/)?"*[+-]?0*[0-9]{1,18}"*)$"#)),
    request_body(content = Option<DeployRequest>, description = "`image` is required; none (or `null`) only gets the state checked"),
    responses((status = 200, body = Machine, headers(("ETag" = String, description = "the machine's state_version, quoted: send it back in If-Match")), description = "allocated → deploying"),
              (status = 409, body = ErrorBody, description = "`invalid_transition`, `stale_version`, `in_maintenance`, `decommissioned`, `no_disks`, `image_unavailable`; carries `current_state` and `current_version`")))]
pub async fn deploy_machine(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let expected = if_match(&headers)?;
    let req: DeployRequest = action_body(
        &body,
        "{\"image\": \"...\", \"root_device\"?, \"hostname\"?, \"user_data\"?, \"ssh_authorized_keys\"?, \"network_config\"?}",
    )?;
    let m = app.deploy(&who, id, req, expected).await?;
    Ok(with_etag(m, StatusCode::OK))
}

#[utoipa::path(post, path = "/api/v1/machines/{id}/inspection", tag = "machines", params(("id" = Uuid, Path)),
    request_body = InspectionReport,
    responses((status = 200, body = Machine, headers(("ETag" = String, description = "the machine's state_version, quoted: send it back in If-Match")), description = "inspecting → ready; bearer: the agent's token (mode inspect, used up here) or an API token"),
              (status = 409, body = ErrorBody, description = "`invalid_transition`: the machine is not inspecting"),
              (status = 403, body = ErrorBody, description = "an agent token from an address it is not bound to, or an API token whose role may not")))]
pub async fn submit_inspection(
    State(app): State<App>,
    Bearer(secret): Bearer,
    Peer(peer): Peer,
    Path(id): Path<Uuid>,
    Json(report): Json<InspectionReport>,
) -> ApiResult<Response> {
    Ok(with_etag(
        app.report_inspection(&secret, peer.map(|p| p.ip()), id, report)
            .await?,
        StatusCode::OK,
    ))
}

#[utoipa::path(post, path = "/api/v1/machines/{id}/clean", tag = "machines", params(("id" = Uuid, Path)),
    request_body = CleanReport,
    responses((status = 200, body = Machine, headers(("ETag" = String, description = "the machine's state_version, quoted: send it back in If-Match")), description = "cleaning → ready (complete) or clean_failed"),
              (status = 409, body = ErrorBody, description = "`invalid_transition`: the machine is not cleaning"),
              (status = 403, body = ErrorBody, description = "an agent token from an address it is not bound to, or an API token whose role may not")))]
pub async fn submit_clean(
    State(app): State<App>,
    Bearer(secret): Bearer,
    Peer(peer): Peer,
    Path(id): Path<Uuid>,
    Json(report): Json<CleanReport>,
) -> ApiResult<Response> {
    Ok(with_etag(
        app.report_clean(&secret, peer.map(|p| p.ip()), id, report)
            .await?,
        StatusCode::OK,
    ))
}

#[utoipa::path(get, path = "/api/v1/machines/{id}/clean-plan", tag = "machines", params(("id" = Uuid, Path)),
    responses((status = 200, body = CleanPlan, description = "for the cleaning agent: bearer its token (mode clean) or an operator's API token"),
              (status = 403, body = ErrorBody, description = "an agent token from an address it is not bound to, or an API token whose role may not")))]
pub async fn clean_plan(
    State(app): State<App>,
    Bearer(secret): Bearer,
    Peer(peer): Peer,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<CleanPlan>> {
    Ok(Json(
        app.clean_plan(&secret, peer.map(|p| p.ip()), id).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/pools", tag = "pools",
    responses((status = 200, body = Vec<Pool>, description = "pools with machines or settings, and the wipe method each is cleaned with")))]
pub async fn list_pools(State(app): State<App>, Caller(who): Caller) -> ApiResult<Json<Vec<Pool>>> {
    Ok(Json(app.list_pools(&who).await?))
}

#[utoipa::path(put, path = "/api/v1/pools/{name}", tag = "pools", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    request_body = PoolUpdate,
    responses((status = 200, body = Pool), (status = 403, body = ErrorBody, description = "admins only")))]
pub async fn update_pool(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
    Json(u): Json<PoolUpdate>,
) -> ApiResult<Json<Pool>> {
    Ok(Json(app.update_pool(&who, &name, u).await?))
}

#[utoipa::path(get, path = "/api/v1/machines/{id}/deployment", tag = "machines", params(("id" = Uuid, Path)),
    responses((status = 200, body = Deployment, description = "what the machine's deploy writes (user data and keys not shown)"),
              (status = 404, body = ErrorBody, description = "no such machine, or it has no deployment")))]
pub async fn get_deployment(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Deployment>> {
    app.deployment(&who, id)
        .await?
        .map(Json)
        .ok_or_else(|| Error::not_found(format!("machine {id} has no deployment")).into())
}

#[utoipa::path(get, path = "/api/v1/machines/{id}/deployment/manifest", tag = "machines", params(("id" = Uuid, Path)),
    responses((status = 200, body = DeployManifest, description = "for the deploy agent: bearer its token (mode deploy) or an API token"),
              (status = 409, body = ErrorBody, description = "`not_deploying`, `no_deployment`"),
              (status = 403, body = ErrorBody, description = "an agent token from an address it is not bound to, or an API token whose role may not")))]
pub async fn deploy_manifest(
    State(app): State<App>,
    Bearer(secret): Bearer,
    Peer(peer): Peer,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<DeployManifest>> {
    Ok(Json(
        app.deploy_manifest(&secret, peer.map(|p| p.ip()), id)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/machines/{id}/deploy-progress", tag = "machines", params(("id" = Uuid, Path)),
    request_body = DeployProgress,
    responses((status = 204, description = "recorded as the state reason (and an event every 10 s)"),
              (status = 409, body = ErrorBody, description = "`not_deploying`, `no_deployment`"),
              (status = 403, body = ErrorBody, description = "an agent token from an address it is not bound to, or an API token whose role may not")))]
pub async fn deploy_progress(
    State(app): State<App>,
    Bearer(secret): Bearer,
    Peer(peer): Peer,
    Path(id): Path<Uuid>,
    Json(p): Json<DeployProgress>,
) -> ApiResult<StatusCode> {
    app.deploy_progress(&secret, peer.map(|p| p.ip()), id, p)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/machines/{id}/deploy-report", tag = "machines", params(("id" = Uuid, Path)),
    request_body = DeployReport,
    responses((status = 200, body = Machine, headers(("ETag" = String, description = "the machine's state_version, quoted: send it back in If-Match")), description = "deploying → deployed (complete) or deploy_failed"),
              (status = 409, body = ErrorBody, description = "`not_deploying`, `no_deployment`, `invalid_transition`"),
              (status = 403, body = ErrorBody, description = "an agent token from an address it is not bound to, or an API token whose role may not")))]
pub async fn submit_deploy(
    State(app): State<App>,
    Bearer(secret): Bearer,
    Peer(peer): Peer,
    Path(id): Path<Uuid>,
    Json(report): Json<DeployReport>,
) -> ApiResult<Response> {
    Ok(with_etag(
        app.report_deploy(&secret, peer.map(|p| p.ip()), id, report)
            .await?,
        StatusCode::OK,
    ))
}

/// `GET /metadata/{instance}/{file}`: NoCloud over HTTP, to the machine's own address only (no
/// token: the instance id is the key, shown to the deployment's tenant).
pub async fn nocloud(
    State(app): State<App>,
    Peer(peer): Peer,
    Path((instance, file)): Path<(String, String)>,
) -> ApiResult<Response> {
    let body = app.nocloud(&instance, &file, peer.map(|p| p.ip())).await?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Only events at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Only events with an id above this (`last_id` of the previous page).
    after: Option<i64>,
    /// 1-1000, default 1000.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

impl From<EventParams> for EventQuery {
    fn from(p: EventParams) -> Self {
        EventQuery {
            since: p.since,
            after: p.after,
            limit: p.limit,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/machines/{id}/events", tag = "events", params(("id" = Uuid, Path), EventParams),
    responses((status = 200, body = EventPage)))]
pub async fn machine_events(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Query(p): Query<EventParams>,
) -> ApiResult<Json<EventPage>> {
    Ok(Json(app.events(&who, Some(id), p.into()).await?))
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventParams), responses((status = 200, body = EventPage)))]
pub async fn events(
    State(app): State<App>,
    Caller(who): Caller,
    Query(p): Query<EventParams>,
) -> ApiResult<Json<EventPage>> {
    Ok(Json(app.events(&who, None, p.into()).await?))
}

// ------------------------------------------------------------------ allocations

#[utoipa::path(post, path = "/api/v1/allocations", request_body = AllocationRequest, tag = "allocations",
    responses((status = 201, body = Allocation),
              (status = 409, body = ErrorBody, description = "`insufficient_capacity`: nothing was allocated")))]
pub async fn allocate(
    State(app): State<App>,
    Caller(who): Caller,
    Json(req): Json<AllocationRequest>,
) -> ApiResult<(StatusCode, Json<Allocation>)> {
    Ok((StatusCode::CREATED, Json(app.allocate(&who, req).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AllocationListParams {
    /// Include released allocations (default false).
    all: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/allocations", tag = "allocations", params(AllocationListParams),
    responses((status = 200, body = Vec<Allocation>)))]
pub async fn list_allocations(
    State(app): State<App>,
    Caller(who): Caller,
    Query(p): Query<AllocationListParams>,
) -> ApiResult<Json<Vec<Allocation>>> {
    Ok(Json(
        app.list_allocations(&who, p.all.unwrap_or(false)).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/allocations/{id}", tag = "allocations", params(("id" = Uuid, Path)),
    responses((status = 200, body = Allocation)))]
pub async fn get_allocation(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Allocation>> {
    Ok(Json(app.get_allocation(&who, id).await?))
}

#[utoipa::path(delete, path = "/api/v1/allocations/{id}", tag = "allocations", params(("id" = Uuid, Path)),
    responses((status = 200, body = Allocation, description = "released; its machines are cleaning"),
              (status = 409, body = ErrorBody, description = "`already_released`")))]
pub async fn release_allocation(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Allocation>> {
    Ok(Json(app.release_allocation(&who, id).await?))
}

// ------------------------------------------------------------------ tokens

#[utoipa::path(post, path = "/api/v1/tokens", request_body = TokenCreate, tag = "tokens",
    responses((status = 201, body = TokenCreated, description = "the secret is shown only here"),
              (status = 409, body = ErrorBody, description = "`duplicate_token`")))]
pub async fn create_token(
    State(app): State<App>,
    Caller(who): Caller,
    Json(req): Json<TokenCreate>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    Ok((
        StatusCode::CREATED,
        Json(
            app.create_token_expiring(
                &who,
                &req.name,
                req.role,
                req.expires_in_secs.map(std::time::Duration::from_secs),
            )
            .await?,
        ),
    ))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, body = Vec<TokenInfo>)))]
pub async fn list_tokens(
    State(app): State<App>,
    Caller(who): Caller,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(app.list_tokens(&who).await?))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{name}", tag = "tokens", params(("name" = String, Path)),
    responses((status = 200, body = TokenInfo)))]
pub async fn revoke_token(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    Ok(Json(app.revoke_token(&who, &name).await?))
}

// ------------------------------------------------------------------ subnets and leases

#[utoipa::path(post, path = "/api/v1/subnets", request_body = SubnetCreate, tag = "dhcp",
    responses((status = 201, body = Subnet), (status = 409, body = ErrorBody, description = "`subnet_overlap`")))]
pub async fn create_subnet(
    State(app): State<App>,
    Caller(who): Caller,
    Json(req): Json<SubnetCreate>,
) -> ApiResult<(StatusCode, Json<Subnet>)> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_subnet(&who, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/subnets", tag = "dhcp", responses((status = 200, body = Vec<Subnet>)))]
pub async fn list_subnets(
    State(app): State<App>,
    Caller(who): Caller,
) -> ApiResult<Json<Vec<Subnet>>> {
    Ok(Json(app.list_subnets(&who).await?))
}

#[utoipa::path(get, path = "/api/v1/subnets/{id}", tag = "dhcp", params(("id" = Uuid, Path)),
    responses((status = 200, body = Subnet)))]
pub async fn get_subnet(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Subnet>> {
    Ok(Json(app.get_subnet(&who, id).await?))
}

#[utoipa::path(patch, path = "/api/v1/subnets/{id}", tag = "dhcp", params(("id" = Uuid, Path)), request_body = SubnetPatch,
    responses((status = 200, body = Subnet)))]
pub async fn update_subnet(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Json(patch): Json<SubnetPatch>,
) -> ApiResult<Json<Subnet>> {
    Ok(Json(app.update_subnet(&who, id, patch).await?))
}

#[utoipa::path(delete, path = "/api/v1/subnets/{id}", tag = "dhcp", params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"), (status = 409, body = ErrorBody, description = "`subnet_in_use`: leases are live")))]
pub async fn delete_subnet(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    app.delete_subnet(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LeaseParams {
    subnet: Option<Uuid>,
    /// Any notation.
    #[param(value_type = Option<plinth_types::MacAddr>)]
    mac: Option<plinth_types::MacAddr>,
}

/// Live leases: offered, bound and declined addresses that have not expired.
#[utoipa::path(get, path = "/api/v1/leases", tag = "dhcp", params(LeaseParams), responses((status = 200, body = Vec<Lease>)))]
pub async fn list_leases(
    State(app): State<App>,
    Caller(who): Caller,
    Query(p): Query<LeaseParams>,
) -> ApiResult<Json<Vec<Lease>>> {
    Ok(Json(app.list_leases(&who, p.subnet, p.mac).await?))
}

// ------------------------------------------------------------------ images

#[utoipa::path(get, path = "/api/v1/images", tag = "images", responses((status = 200, body = Vec<Image>)))]
pub async fn list_images(
    State(app): State<App>,
    Caller(who): Caller,
) -> ApiResult<Json<Vec<Image>>> {
    Ok(Json(app.list_images(&who).await?))
}

#[utoipa::path(post, path = "/api/v1/images", request_body = ImageRegister, tag = "images",
    responses((status = 201, body = Image), (status = 409, body = ErrorBody, description = "`duplicate_image`")))]
pub async fn register_image(
    State(app): State<App>,
    Caller(who): Caller,
    Json(req): Json<ImageRegister>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    Ok((
        StatusCode::CREATED,
        Json(app.register_image(&who, req).await?),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    #[param(value_type = ImageKind)]
    kind: String,
    /// x86_64 (default), aarch64 or any.
    #[param(value_type = Option<ImageArch>)]
    arch: Option<String>,
    /// Where under the images root; default `uploads/<name>`. A qcow2 disk image is converted
    /// to raw and stored with `.raw` in place of `.qcow2` (or added).
    #[param(value_type = Option<ImagePath>)]
    path: Option<String>,
    /// Expected SHA-256 (hex) of the body as uploaded; the upload is refused and removed if
    /// it differs.
    #[param(value_type = Option<Sha256>)]
    sha256: Option<String>,
    /// A disk image's firmware: bios, uefi or both.
    #[param(value_type = Option<ImageFirmware>)]
    firmware: Option<String>,
}

/// A request body of bytes (an image file).
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

#[utoipa::path(put, path = "/api/v1/images/{name}", tag = "images", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"), UploadParams),
    request_body(content = Binary, content_type = "application/octet-stream", description = "the file, streamed to disk"),
    responses((status = 201, body = Image), (status = 409, body = ErrorBody, description = "`duplicate_image`, `image_file_exists`"),
              (status = 503, body = ErrorBody, description = "the database, or qemu-img (missing, or too slow) for a qcow2 image")))]
pub async fn upload_image(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
    Query(p): Query<UploadParams>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<Image>)> {
    use futures::TryStreamExt;
    let kind = p
        .kind
        .parse()
        .map_err(|m: String| Error::invalid("invalid_image_kind", m))?;
    let reader = tokio_util::io::StreamReader::new(
        body.into_data_stream()
            .map_err(|e| std::io::Error::other(e.to_string())),
    );
    let meta = plinth_core::images::UploadMeta {
        name,
        kind,
        arch: p.arch,
        path: p.path,
        sha256: p.sha256,
        firmware: p.firmware,
        declared_size: headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    };
    Ok((
        StatusCode::CREATED,
        Json(app.upload_image(&who, meta, reader).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 200, body = Image)))]
pub async fn get_image(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Image>> {
    Ok(Json(app.get_image(&who, &name).await?))
}

#[utoipa::path(delete, path = "/api/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 200, body = Image), (status = 409, body = ErrorBody, description = "`image_in_use`")))]
pub async fn delete_image(
    State(app): State<App>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Image>> {
    Ok(Json(app.delete_image(&who, &name).await?))
}

// ------------------------------------------------------------------ BMC jobs

pub(crate) fn accepted(job: Job) -> Response {
    let mut resp = (StatusCode::ACCEPTED, Json(job.clone())).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)) {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    resp
}

#[utoipa::path(post, path = "/api/v1/machines/{id}/power", tag = "jobs", params(("id" = Uuid, Path)),
    request_body = PowerRequest,
    responses((status = 202, body = Job, headers(("Location" = String, description = "the job: /api/v1/jobs/{id}")), description = "queued; follow it at Location"),
              (status = 409, body = ErrorBody, description = "`no_bmc`, `decommissioned`")))]
pub async fn power(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Json(req): Json<PowerRequest>,
) -> ApiResult<Response> {
    Ok(accepted(app.request_power(&who, id, req).await?))
}

#[utoipa::path(post, path = "/api/v1/machines/{id}/boot-device", tag = "jobs", params(("id" = Uuid, Path)),
    request_body = BootDeviceRequest,
    responses((status = 202, body = Job, headers(("Location" = String, description = "the job: /api/v1/jobs/{id}")), description = "queued; follow it at Location"),
              (status = 409, body = ErrorBody, description = "`no_bmc`, `decommissioned`")))]
pub async fn boot_device(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
    Json(req): Json<BootDeviceRequest>,
) -> ApiResult<Response> {
    Ok(accepted(app.request_boot_device(&who, id, req).await?))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = Job)))]
pub async fn get_job(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Job>> {
    Ok(Json(app.job(&who, id).await?))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = Job, description = "cancelled, with the later jobs of its chain"),
              (status = 409, body = ErrorBody, description = "`job_running`, `job_finished`")))]
pub async fn cancel_job(
    State(app): State<App>,
    Caller(who): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Job>> {
    Ok(Json(app.cancel_job(&who, id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobParams {
    /// Only this machine's jobs.
    machine: Option<Uuid>,
    #[param(value_type = Option<JobState>)]
    state: Option<String>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page (a number).
    #[param(pattern = r"^[+-]?0*[0-9]{1,18}$")]
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobParams),
    responses((status = 200, body = JobPage), (status = 404, body = ErrorBody, description = "no machine `machine` (that the token may see)")))]
pub async fn list_jobs(
    State(app): State<App>,
    Caller(who): Caller,
    Query(p): Query<JobParams>,
) -> ApiResult<Json<JobPage>> {
    let state = p
        .state
        .as_deref()
        .map(|s| s.parse::<JobState>())
        .transpose()
        .map_err(|e| Error::invalid("invalid_state", e))?;
    let q = plinth_core::jobs::JobQuery {
        machine: p.machine,
        state,
        limit: p.limit,
        cursor: p.cursor,
    };
    Ok(Json(app.jobs(&who, q).await?))
}
