//! `GET /api/v1/events/stream`: the audit log as server-sent events, and the web UI's
//! machine timeline stream (the same, for the signed-in user, same origin only).
//!
//! Each event is one SSE message: `id:` the event's id, `event:` its kind, `data:` the event as
//! `GET /api/v1/events` shows it. A client that reconnects sends `Last-Event-ID` (browsers do
//! it themselves) and continues after that event with nothing lost or repeated; `?after=ID`
//! does the same for a first connection. Without either, the stream starts now. An idle stream
//! sends a comment every `stream_keepalive_secs`. The order and its guarantee are plinth-core's
//! `stream`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as Sse, KeepAlive, Sse as SseBody};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use plinth_core::App;
use plinth_core::stream::{EventStream, Next, StreamQuery};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Query};

type ApiResult<T> = Result<T, ApiError>;
use crate::ui::User;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// Only this machine's events.
    machine: Option<Uuid>,
    /// Only these kinds, separated by commas.
    kind: Option<String>,
    /// Continue after this event of the stream (as `Last-Event-ID`, which wins when both are
    /// given).
    after: Option<i64>,
}

/// The id a reconnecting browser sends.
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<i64>().map_err(|_| {
                    ApiError(plinth_types::Error::invalid(
                        "invalid_last_event_id",
                        "Last-Event-ID must be an event id",
                    ))
                })
            })
            .transpose(),
    }
}

fn kinds(k: Option<String>) -> Option<Vec<String>> {
    k.map(|k| {
        k.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

#[utoipa::path(get, path = "/api/v1/events/stream", tag = "events", params(StreamParams,
        ("Last-Event-ID" = Option<i64>, Header, description = "continue after this event")),
    responses((status = 200, description = "server-sent events: `id` the event id, `event` its kind, `data` the event as JSON", content_type = "text/event-stream", body = String),
        (status = 429, description = "too many streams open for this caller", body = plinth_types::api::ErrorBody)))]
pub async fn stream(
    State(app): State<App>,
    Caller(who): Caller,
    headers: HeaderMap,
    Query(p): Query<StreamParams>,
) -> ApiResult<Response> {
    let after = last_event_id(&headers)?.or(p.after);
    let s = app
        .event_stream(
            &who,
            StreamQuery {
                machine: p.machine,
                kinds: kinds(p.kind),
                after,
            },
        )
        .await?;
    Ok(respond(s, true))
}

/// The machine page's timeline: unnamed messages (so that `EventSource.onmessage` sees them
/// all), for the signed-in user; refused to another site's page.
pub(crate) async fn ui_timeline(
    State(app): State<App>,
    user: User,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<Uuid>,
) -> Response {
    if let Err(r) = crate::ui::same_origin(&headers) {
        return r;
    }
    let after = match last_event_id(&headers) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    match app
        .event_stream(
            user.who(),
            StreamQuery {
                machine: Some(id),
                kinds: None,
                after,
            },
        )
        .await
    {
        Ok(s) => respond(s, false),
        Err(e) => ApiError(e).into_response(),
    }
}

fn respond(s: EventStream, named: bool) -> Response {
    let body = SseBody::new(messages(s, named)).keep_alive(KeepAlive::new().interval(
        // The stream sends its own comments when idle; this is only a floor under them.
        std::time::Duration::from_secs(60),
    ));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    // Proxies such as nginx would otherwise hold the messages back.
    h.insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    resp
}

fn messages(
    s: EventStream,
    named: bool,
) -> impl Stream<Item = Result<Sse, std::convert::Infallible>> {
    let first = futures::stream::once(async {
        Ok(Sse::default().retry(std::time::Duration::from_secs(2)))
    });
    let rest = futures::stream::unfold(Some(s), move |s| async move {
        let mut s = s?;
        match s.next().await {
            Ok(Next::Events(events)) => {
                let msgs: Vec<Result<Sse, std::convert::Infallible>> = events
                    .into_iter()
                    .map(|e| {
                        let data = serde_json::to_string(&e).unwrap_or_default();
                        let m = Sse::default().id(e.id.to_string()).data(data);
                        Ok(if named { m.event(&e.kind) } else { m })
                    })
                    .collect();
                Some((futures::stream::iter(msgs), Some(s)))
            }
            Ok(Next::Idle) => Some((
                futures::stream::iter(vec![Ok(Sse::default().comment("keep-alive"))]),
                Some(s),
            )),
            // Stopping, or the database is away: the stream ends and the client reconnects
            // with its Last-Event-ID.
            Ok(Next::Closed) | Err(_) => None,
        }
    });
    futures::StreamExt::chain(first, futures::StreamExt::flatten(rest))
}
