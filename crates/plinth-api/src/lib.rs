//! plinth-api: the HTTP face of plinth (axum). `/api/v1` (REST, bearer tokens), `/healthz`,
//! and the OpenAPI document generated from the handlers and types.
//!
//! Handlers are thin: extract, call one plinth-core operation, shape the response. This is
//! the one place errors become HTTP statuses (see [`error`]). It holds no database pool.

mod auth;
pub mod boot;
pub mod error;
mod fastpath;
mod sys;
mod ui;
mod v1;

use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use plinth_core::App;
use plinth_types::Error;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(title = "plinth", description = "Bare-metal provisioning: inventory, lifecycle and allocation of machines."),
    paths(
        v1::create_rack, v1::list_racks, v1::get_rack, v1::update_rack, v1::delete_rack,
        v1::enroll_machine, v1::list_machines, v1::get_machine, v1::update_machine, v1::machine_action,
        v1::submit_inspection, v1::submit_clean, v1::machine_events, v1::events,
        v1::get_deployment, v1::deploy_manifest, v1::deploy_progress, v1::submit_deploy,
        v1::clean_plan, v1::list_pools, v1::update_pool,
        v1::allocate, v1::list_allocations, v1::get_allocation, v1::release_allocation,
        v1::create_token, v1::list_tokens, v1::revoke_token,
        v1::create_subnet, v1::list_subnets, v1::get_subnet, v1::update_subnet, v1::delete_subnet, v1::list_leases,
        v1::list_images, v1::register_image, v1::upload_image, v1::get_image, v1::delete_image,
        v1::power, v1::boot_device, v1::get_job, v1::list_jobs, v1::cancel_job,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3 document, as served at `/api/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi())
}

async fn healthz(State(app): State<App>) -> impl IntoResponse {
    match app.ping().await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "status": "ok" })),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "database unavailable" })),
        ),
    }
}

async fn not_found() -> ApiError {
    ApiError(Error::not_found("no such API endpoint"))
}

async fn method_not_allowed() -> impl IntoResponse {
    let mut resp = ApiError(Error::invalid(
        "method_not_allowed",
        "this endpoint does not accept that method",
    ))
    .into_response();
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}

/// The whole HTTP application.
pub fn router(app: App) -> Router {
    use axum::routing::{get as g, post as p};
    let v1 = Router::new()
        .route("/openapi.json", g(openapi_json))
        .route("/racks", p(v1::create_rack).get(v1::list_racks))
        .route(
            "/racks/{name}",
            g(v1::get_rack)
                .patch(v1::update_rack)
                .delete(v1::delete_rack),
        )
        .route("/machines", p(v1::enroll_machine).get(v1::list_machines))
        .route(
            "/machines/{id}",
            g(v1::get_machine).patch(v1::update_machine),
        )
        .route("/machines/{id}/actions/{verb}", p(v1::machine_action))
        .route("/machines/{id}/inspection", p(v1::submit_inspection))
        .route("/machines/{id}/clean", p(v1::submit_clean))
        .route("/machines/{id}/clean-plan", g(v1::clean_plan))
        .route("/machines/{id}/deployment", g(v1::get_deployment))
        .route("/machines/{id}/deployment/manifest", g(v1::deploy_manifest))
        .route("/machines/{id}/deploy-progress", p(v1::deploy_progress))
        .route("/machines/{id}/deploy-report", p(v1::submit_deploy))
        .route("/machines/{id}/events", g(v1::machine_events))
        .route("/machines/{id}/power", p(v1::power))
        .route("/machines/{id}/boot-device", p(v1::boot_device))
        .route("/jobs", g(v1::list_jobs))
        .route("/jobs/{id}", g(v1::get_job))
        .route("/jobs/{id}/cancel", p(v1::cancel_job))
        .route("/events", g(v1::events))
        .route("/allocations", p(v1::allocate).get(v1::list_allocations))
        .route(
            "/allocations/{id}",
            g(v1::get_allocation).delete(v1::release_allocation),
        )
        .route("/tokens", p(v1::create_token).get(v1::list_tokens))
        .route("/tokens/{name}", axum::routing::delete(v1::revoke_token))
        .route("/subnets", p(v1::create_subnet).get(v1::list_subnets))
        .route(
            "/subnets/{id}",
            g(v1::get_subnet)
                .patch(v1::update_subnet)
                .delete(v1::delete_subnet),
        )
        .route("/leases", g(v1::list_leases))
        .route("/pools", g(v1::list_pools))
        .route("/pools/{name}", axum::routing::put(v1::update_pool))
        .route("/images", g(v1::list_images).post(v1::register_image))
        .route(
            "/images/{name}",
            g(v1::get_image)
                .put(v1::upload_image)
                .delete(v1::delete_image),
        )
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(healthz))
        .route("/boot/ipxe", get(boot::ipxe_script))
        .route("/metadata/{instance}/{file}", get(v1::nocloud))
        .route("/boot/{*path}", get(boot::file))
        .merge(ui::routes())
        .fallback(not_found)
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), actor = tracing::field::Empty)
        }))
        .with_state(app)
}

/// Serves `router(app)` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Files under /boot/ are sent with sendfile by the listener itself (see `fastpath`).
    axum::serve(
        fastpath::BootListener::new(listener, app.clone()),
        router(app).into_make_service_with_connect_info::<fastpath::ClientAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
