//! plinth-api: the HTTP face of plinth (axum). `/api/v1` (REST, bearer tokens), `/healthz`,
//! and the OpenAPI document generated from the handlers and types.
//!
//! Handlers are thin: extract, call one plinth-core operation, shape the response. This is
//! the one place errors become HTTP statuses (see [`error`]). It holds no database pool.

mod auth;
mod bios;
pub mod boot;

mod console;
mod credentials;
pub mod error;
mod events_stream;
mod fastpath;
mod file_plan;
mod firmware;
mod sys;
pub mod tls;
mod ui;
mod v1;
mod vmedia;
mod webhooks;

/// Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub mod fuzzing {
    /// The sendfile path's reading of a request line and its percent-decoding.
    pub fn request_line(line: &[u8]) -> Option<String> {
        let (_, raw) = crate::fastpath::sendfile::file_request(line)?;
        crate::fastpath::sendfile::percent_decode(raw)
    }

    /// A Range header against a file of `len` bytes: `(start, end)` inclusive when a part.
    pub fn range(h: &str, len: u64) -> Option<Option<(u64, u64)>> {
        use crate::file_plan::{RangeAsk, parse_range};
        match parse_range(h, len) {
            RangeAsk::Whole => None,
            RangeAsk::Part(a, b) => Some(Some((a, b))),
            RangeAsk::Unsatisfiable => Some(None),
        }
    }

    /// A web UI form body and a Cookie header.
    pub fn form_and_cookie(body: &[u8], cookie: &[u8]) -> Vec<(String, String)> {
        let mut h = axum::http::HeaderMap::new();
        if let Ok(v) = axum::http::HeaderValue::from_bytes(cookie) {
            h.insert(axum::http::header::COOKIE, v);
        }
        let _ = crate::ui::cookie(&h, "plinth_session");
        crate::ui::parse_form(body)
    }
}

use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use plinth_core::App;
use plinth_types::Error;
use tower_http::trace::TraceLayer;
use utoipa::{OpenApi, PartialSchema};

use crate::error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(title = "plinth", description = "Bare-metal provisioning: inventory, lifecycle and allocation of machines."),
    paths(
        v1::create_rack, v1::list_racks, v1::get_rack, v1::update_rack, v1::delete_rack,
        v1::enroll_machine, v1::list_machines, v1::get_machine, v1::update_machine, v1::machine_action, v1::deploy_machine,
        v1::submit_inspection, v1::submit_clean, v1::machine_events, v1::events, events_stream::stream,
        webhooks::create, webhooks::list, webhooks::delete, webhooks::deliveries,
        v1::get_deployment, v1::deploy_manifest, v1::deploy_progress, v1::submit_deploy,
        v1::clean_plan, v1::list_pools, v1::update_pool,
        v1::allocate, v1::list_allocations, v1::get_allocation, v1::release_allocation,
        v1::create_token, v1::list_tokens, v1::revoke_token,
        v1::create_subnet, v1::list_subnets, v1::get_subnet, v1::update_subnet, v1::delete_subnet, v1::list_leases,
        v1::list_images, v1::register_image, v1::upload_image, v1::get_image, v1::delete_image,
        v1::power, v1::boot_device, v1::get_job, v1::list_jobs, v1::cancel_job,
        credentials::rotate, credentials::create_scan, credentials::list_scans, credentials::get_scan,
        console::console_log, console::console_status,
        console::set_console_endpoint, console::delete_console_endpoint,
        bios::machine_bios, bios::request_bios, bios::list_profiles, bios::get_profile,
        bios::create_profile, bios::replace_profile, bios::delete_profile, bios::set_pool_profile,
        firmware::describe_image, firmware::inventory, firmware::update, firmware::read,
        firmware::create_rollout, firmware::list_rollouts, firmware::get_rollout,
    ),
    components(schemas(plinth_types::api::ErrorBody, v1::ActionVerb, v1::Binary)),
    modifiers(&BearerAuth, &ErrorAnswers),
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

/// Adds to every operation the error answers that follow from its shape, each with the error
/// body, so that they are said once: every operation takes a token (401: none, or an unknown,
/// revoked or expired one; 403: its role may not) and reads the database (503); one with a
/// parameter or a body can be refused (400), one with a path parameter may name nothing (404),
/// and a JSON body can be too large (413) or not JSON at all (415, when it is required). An
/// operation's own answers (409 and its codes, a 404 of a query parameter, ...) are in its
/// `#[utoipa::path]`, and kept.
struct ErrorAnswers;

impl utoipa::Modify for ErrorAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
        let answer = |code: u16, what: &str| {
            let mut r = ResponseBuilder::new().description(what).content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            );
            if code == 401 {
                r = r.header(
                    "WWW-Authenticate",
                    utoipa::openapi::HeaderBuilder::new()
                        .schema(String::schema())
                        .description(Some("`Bearer`"))
                        .build(),
                );
            }
            r.build()
        };
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let params = op.parameters.as_deref().unwrap_or_default();
                let in_path = params
                    .iter()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Path));
                let json = op
                    .request_body
                    .as_ref()
                    .filter(|b| b.content.contains_key("application/json"));
                let mut add = vec![
                    (401, "No token, or an unknown, revoked or expired one."),
                    (403, "The token's role may not do this."),
                    (
                        503,
                        "The database is unavailable (or plinth is too busy): try again shortly.",
                    ),
                ];
                if !params.is_empty() || op.request_body.is_some() {
                    add.push((400, "The request is malformed or breaks a rule: `error.code` says which (docs/api.md lists them)."));
                }
                if in_path {
                    add.push((
                        404,
                        "Nothing by that name or id, or nothing the token may see.",
                    ));
                }
                if let Some(body) = json {
                    add.push((413, "The body is larger than this endpoint accepts."));
                    if matches!(body.required, Some(Required::True)) {
                        add.push((
                            415,
                            "The body is not sent as `Content-Type: application/json`.",
                        ));
                    }
                }
                for (code, what) in add {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| answer(code, what).into());
                }
            }
        }
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

/// Which routes a listener serves. plinth can answer everything on one address (`All`, the
/// default), or split the management network's API and UI from the provisioning network's
/// boot files, metadata and agent endpoints, so that a booted tenant OS cannot reach the
/// management API at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    All,
    /// `/api/v1` (but the agent's endpoints), the web UI, `/healthz`.
    Management,
    /// `/boot/*`, `/metadata/*`, the agent's endpoints under `/api/v1`, `/healthz`.
    Provisioning,
}

/// The REST API without the agent's endpoints.
fn management_v1() -> Router<App> {
    use axum::routing::{get as g, post as p};
    Router::new()
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
        .route("/machines/{id}/actions/deploy", p(v1::deploy_machine))
        .route("/machines/{id}/deployment", g(v1::get_deployment))
        .route("/machines/{id}/events", g(v1::machine_events))
        .route("/machines/{id}/console", g(console::console))
        .route("/machines/{id}/console/log", g(console::console_log))
        .route("/machines/{id}/console/status", g(console::console_status))
        .route(
            "/machines/{id}/bmc/console",
            axum::routing::put(console::set_console_endpoint)
                .delete(console::delete_console_endpoint),
        )
        .route("/machines/{id}/power", p(v1::power))
        .route("/machines/{id}/boot-device", p(v1::boot_device))
        .route("/machines/{id}/bmc/rotate", p(credentials::rotate))
        .route(
            "/bmc/scans",
            p(credentials::create_scan).get(credentials::list_scans),
        )
        .route("/bmc/scans/{id}", g(credentials::get_scan))
        .route("/jobs", g(v1::list_jobs))
        .route("/jobs/{id}", g(v1::get_job))
        .route("/jobs/{id}/cancel", p(v1::cancel_job))
        .route("/events", g(v1::events))
        .route("/events/stream", g(events_stream::stream))
        .route("/webhooks", p(webhooks::create).get(webhooks::list))
        .route("/webhooks/{id}", axum::routing::delete(webhooks::delete))
        .route("/webhooks/{id}/deliveries", g(webhooks::deliveries))
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
        .merge(bios::routes())
        .route(
            "/firmware/images/{name}",
            axum::routing::put(firmware::describe_image),
        )
        .route(
            "/machines/{id}/firmware",
            g(firmware::inventory).post(firmware::update),
        )
        .route("/machines/{id}/firmware/read", p(firmware::read))
        .route(
            "/firmware/rollouts",
            p(firmware::create_rollout).get(firmware::list_rollouts),
        )
        .route("/firmware/rollouts/{id}", g(firmware::get_rollout))
        // JSON bodies (an image upload streams its body and is bounded by the disk instead).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON))
}

/// The largest JSON body of the management API.
const MAX_JSON: usize = 256 * 1024;
/// The largest agent report (a machine's facts with hundreds of disks and NICs fit easily).
const MAX_AGENT_REPORT: usize = 1024 * 1024;

/// What the agent in the ramdisk calls (with its agent token).
fn agent_v1() -> Router<App> {
    use axum::routing::{get as g, post as p};
    Router::new()
        .route("/machines/{id}/inspection", p(v1::submit_inspection))
        .route("/machines/{id}/clean", p(v1::submit_clean))
        .route("/machines/{id}/clean-plan", g(v1::clean_plan))
        .route("/machines/{id}/deployment/manifest", g(v1::deploy_manifest))
        .route("/machines/{id}/deploy-progress", p(v1::deploy_progress))
        .route("/machines/{id}/deploy-report", p(v1::submit_deploy))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_AGENT_REPORT))
}

/// The whole HTTP application: every route on one listener.
pub fn router(app: App) -> Router {
    router_for(app, Surface::All)
}

/// The routes of one surface.
pub fn router_for(app: App, surface: Surface) -> Router {
    use axum::routing::get as g;
    let v1 = match surface {
        Surface::All => management_v1().merge(agent_v1()),
        Surface::Management => management_v1(),
        Surface::Provisioning => agent_v1(),
    }
    .method_not_allowed_fallback(method_not_allowed);
    let mut r = Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(healthz));
    if surface != Surface::Management {
        r = r
            .route("/boot/ipxe", g(boot::ipxe_script))
            .route("/boot/vmedia/{name}", g(vmedia::iso))
            .route("/metadata/{instance}/{file}", g(v1::nocloud))
            .route("/boot/{*path}", g(boot::file))
            .route("/firmware/{job}/{token}", g(firmware::fetch));
    }
    if surface != Surface::Provisioning {
        r = r.merge(ui::routes()).route("/metrics", get(metrics));
    }
    r.fallback(not_found)
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), actor = tracing::field::Empty)
        }))
        .with_state(app)
}

/// How one listener serves.
#[derive(Clone)]
pub struct ServeOptions {
    pub surface: Surface,
    /// TLS on this listener (the certificate can be reloaded while it serves).
    pub tls: Option<std::sync::Arc<tls::TlsFiles>>,
    /// Peers whose `X-Forwarded-Proto: https` / `Forwarded: proto=https` is believed (a reverse
    /// proxy that terminates TLS). Anyone else's is removed before a handler sees it.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Open connections on this listener, and from one peer address.
    pub limits: ConnLimits,
    /// How long a request head may take ([`HEAD_TIMEOUT`]; tests shorten it).
    pub head_timeout: std::time::Duration,
    /// What the listener's own path answered (files, scripts) and handed over.
    pub counters: std::sync::Arc<ListenerCounters>,
}

pub use fastpath::{ConnLimits, HEAD_TIMEOUT, ListenerCounters};

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            surface: Surface::All,
            tls: None,
            trusted_proxies: Vec::new(),
            limits: ConnLimits::default(),
            head_timeout: HEAD_TIMEOUT,
            counters: Default::default(),
        }
    }
}

/// How long a stopping server waits for the requests in flight.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// How long browsers keep to HTTPS once they saw it here (a year, as is usual).
const HSTS: &str = "max-age=31536000";

/// Whether the request reached plinth over TLS: its own connection, or a trusted proxy's word.
/// The forwarding headers are rewritten to say exactly that (`x-forwarded-proto: https` or
/// nothing), so nothing further down can be talked into `Secure` by a client; a secure
/// response carries HSTS.
async fn scheme(
    State(trusted): State<std::sync::Arc<Vec<ipnet::IpNet>>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let conn = req
        .extensions()
        .get::<axum::extract::ConnectInfo<fastpath::ClientAddr>>()
        .map(|c| c.0);
    let h = req.headers();
    let says_https = h.get_all("x-forwarded-proto").iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("https"))
    }) || h.get_all(header::FORWARDED).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split([';', ',']).any(|kv| {
                kv.trim().split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("proto")
                        && v.trim_matches('"').eq_ignore_ascii_case("https")
                })
            })
        })
    });
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    let secure = conn.is_some_and(|c| c.tls || (says_https && is_trusted(c.addr.ip())));
    // The client: the peer, or behind trusted proxies the nearest address they did not add.
    if let Some(c) = conn {
        let mut client = c.addr.ip().to_canonical();
        if is_trusted(client) {
            let chain: Vec<std::net::IpAddr> = h
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
                .collect();
            for ip in chain.into_iter().rev() {
                client = ip.to_canonical();
                if !is_trusted(client) {
                    break;
                }
            }
        }
        req.extensions_mut().insert(ClientIp(client));
    }
    let h = req.headers_mut();
    h.remove("x-forwarded-proto");
    h.remove(header::FORWARDED);
    if secure {
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    }
    let mut resp = next.run(req).await;
    if secure {
        resp.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    resp
}

/// `GET /metrics`: Prometheus' text format, for a token that reads the inventory or an
/// address of `http.metrics_allow`.
async fn metrics(
    State(app): State<App>,
    ClientIp(ip): ClientIp,
    auth::MaybeCaller(who): auth::MaybeCaller,
) -> Result<axum::response::Response, ApiError> {
    if who.is_none() && !app.metrics().allows(ip) {
        return Err(Error::unauthorized(
            "metrics need a token (Authorization: Bearer) or an address listed in http.metrics_allow",
        )
        .into());
    }
    let text = app.metrics_text(who.as_ref()).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The client's address as the listener established it (see `scheme`): for throttles.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        // Without a listener (a router called directly in a test) the client is unknown.
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(std::net::Ipv4Addr::UNSPECIFIED.into())))
    }
}

/// Serves `router(app)` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, ServeOptions::default(), shutdown).await
}

/// Serves one surface on `listener` until `shutdown` completes.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: App,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = match &opts.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            t.server_config().map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    // Files under /boot/ are sent with sendfile by the listener itself (see `fastpath`) on
    // plain connections of a listener that serves them.
    let trusted = std::sync::Arc::new(opts.trusted_proxies);
    let router = router_for(app.clone(), opts.surface)
        .layer(axum::middleware::from_fn_with_state(trusted, scheme));
    let fast_path =
        (opts.surface != Surface::Management).then(|| boot::script_handler(app.clone()));
    if let Ok(addr) = listener.local_addr() {
        app.metrics()
            .register(std::sync::Arc::new(fastpath::ListenerMetrics {
                listener: addr.to_string(),
                counters: opts.counters.clone(),
            }));
    }
    let mut incoming = fastpath::BootListener::new(
        listener,
        app,
        fast_path,
        acceptor,
        opts.limits,
        opts.head_timeout,
        opts.counters,
    );
    // hyper itself (not axum::serve) so that a request head has a deadline: axum::serve gives
    // hyper no timer, and a client could hold a connection by sending one byte a minute.
    let stopping = tokio_util::sync::CancellationToken::new();
    let connections = tokio_util::task::TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (conn, peer) = tokio::select! {
            c = incoming.accept() => c,
            () = &mut shutdown => break,
        };
        let info = fastpath::ClientAddr {
            addr: peer,
            tls: conn.is_tls(),
        };
        let router = router.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(info));
                tower::ServiceExt::oneshot(router.clone(), req)
            });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(opts.head_timeout)
            .keep_alive(true);
        let stopping = stopping.clone();
        connections.spawn(async move {
            let conn = http
                .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => r,
                () = stopping.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
    drop(incoming);
    // Requests in flight finish; idle kept-alive connections are closed.
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running {} s after shutdown began were cut off",
            DRAIN.as_secs()
        );
    }
    Ok(())
}
