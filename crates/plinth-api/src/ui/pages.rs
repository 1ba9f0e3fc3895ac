//! The pages. Each handler: the signed-in [`User`], one or a few plinth-core reads or one
//! write, then a template (GET) or a redirect with a message (POST, so a reload never repeats
//! it). Forms that fail validation come back filled in, with the API's message at the field.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use plinth_core::App;
use plinth_core::inventory::SortKey;
use plinth_core::lifecycle::Action;
use plinth_core::machines::MachineQuery;
use plinth_db::inventory::{Occupant, TableQuery};
use plinth_types::api::{
    BmcProtocol, BmcSpec, BootDeviceRequest, BootTarget, Event, MachineCreate, MachinePatch,
    NicSpec, PowerOp, PowerRequest, Rack, RackCreate,
};
use plinth_types::{Error, MacAddr, MachineState, Verb};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    Form, LOGIN_CSRF_COOKIE, Posted, SESSION_COOKIE, User, cookie, error_page, parse_form,
    redirect_with, render, same_origin, set_cookie, shown, url_encode,
};

type Page = Result<Response, Response>;

/// Turns a plinth-core error into the error page.
fn fail(user: &User) -> impl Fn(Error) -> Response + '_ {
    move |e| error_page(Some(user), &e)
}

async fn discovered_count(app: &App, user: &User) -> i64 {
    // A badge: whoever may not see the inventory sees none.
    app.count_in_state(user.who(), MachineState::Discovered)
        .await
        .unwrap_or(0)
}

/// Only paths of this site: `next` and `back` must not send anyone elsewhere.
fn local_path(p: Option<&str>, default: &str) -> String {
    match p {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_owned(),
        _ => default.to_owned(),
    }
}

// ------------------------------------------------------------------ login

#[derive(Deserialize, Default)]
pub(crate) struct LoginQuery {
    next: Option<String>,
    bye: Option<String>,
}

fn login_page(
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    username: &str,
    error: Option<String>,
    notice: Option<String>,
) -> Response {
    // The login form's own CSRF token: the same random value in a cookie and in the form.
    let csrf = cookie(headers, LOGIN_CSRF_COOKIE)
        .filter(|c| c.len() >= 32 && c.len() <= 128 && c.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(plinth_core::auth::generate_secret);
    let mut resp = render(
        "login.html",
        context! { csrf => csrf, next => next, username => username, error => error, notice => notice },
    );
    *resp.status_mut() = status;
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(headers, LOGIN_CSRF_COOKIE, &csrf, Some(3600)),
    );
    resp
}

pub(crate) async fn login_form(headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    let next = local_path(q.next.as_deref(), "/racks");
    let notice = q.bye.map(|_| "You are logged out.".to_owned());
    login_page(&headers, StatusCode::OK, &next, "", None, notice)
}

pub(crate) async fn login(
    State(app): State<App>,
    client: crate::ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form(parse_form(&body));
    let next = local_path(form.get("next"), "/racks");
    let username = form.get("username").unwrap_or("").trim().to_owned();
    if let Err(resp) = same_origin(&headers) {
        return resp;
    }
    let sent = form.get("_csrf").unwrap_or("");
    if sent.is_empty() || cookie(&headers, LOGIN_CSRF_COOKIE).as_deref() != Some(sent) {
        return login_page(
            &headers,
            StatusCode::FORBIDDEN,
            &next,
            &username,
            Some("This login form has expired; please try again.".into()),
            None,
        );
    }
    match app
        .login(
            &username,
            form.get("password").unwrap_or(""),
            (!client.0.is_unspecified()).then_some(client.0),
        )
        .await
    {
        Ok(login) => {
            let mut resp = Redirect::to(&next).into_response();
            let h = resp.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(
                    &headers,
                    SESSION_COOKIE,
                    &login.secret,
                    Some(plinth_core::users::SESSION_MAX.as_secs()),
                ),
            );
            h.append(
                header::SET_COOKIE,
                set_cookie(&headers, LOGIN_CSRF_COOKIE, "", Some(0)),
            );
            resp
        }
        // The form again, with the reason, as a page that loaded fine (a 4xx would put an error
        // in the browser's console for every mistyped password).
        Err(e) => login_page(
            &headers,
            if e.kind == plinth_types::ErrorKind::TooMany {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            },
            &next,
            &username,
            Some(e.message),
            None,
        ),
    }
}

pub(crate) async fn logout(
    State(app): State<App>,
    Posted {
        user,
        headers,
        form: _,
    }: Posted,
) -> Page {
    app.logout(&user.secret).await.map_err(fail(&user))?;
    let mut resp = Redirect::to("/login?bye=1").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, "", Some(0)),
    );
    Ok(resp)
}

// ------------------------------------------------------------------ machines

#[derive(Deserialize, Serialize, Default, Clone)]
pub(crate) struct MachinesQuery {
    q: Option<String>,
    state: Option<String>,
    rack: Option<String>,
    pool: Option<String>,
    tag: Option<String>,
    power: Option<String>,
    sort: Option<String>,
    dir: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl MachinesQuery {
    fn href(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = nonempty(v) {
                parts.push(format!("{k}={}", url_encode(&v)));
            }
        };
        add("q", &self.q);
        add("state", &self.state);
        add("rack", &self.rack);
        add("pool", &self.pool);
        add("tag", &self.tag);
        add("power", &self.power);
        add("sort", &self.sort);
        add("dir", &self.dir);
        add("page", &self.page.filter(|p| *p > 1).map(|p| p.to_string()));
        add("per_page", &self.per_page.map(|p| p.to_string()));
        if parts.is_empty() {
            "/machines".into()
        } else {
            format!("/machines?{}", parts.join("&"))
        }
    }
}

#[derive(Serialize)]
struct Column {
    label: &'static str,
    sort: bool,
    href: minijinja::Value,
    current: bool,
}

/// A link this module built from `url_encode`d parts, for an attribute: only its `&` needs
/// escaping.
fn href(s: String) -> minijinja::Value {
    minijinja::Value::from_safe_string(s.replace('&', "&amp;"))
}

pub(crate) async fn machines(
    State(app): State<App>,
    user: User,
    headers: HeaderMap,
    Query(q): Query<MachinesQuery>,
) -> Page {
    let sort = q
        .sort
        .as_deref()
        .and_then(SortKey::parse)
        .unwrap_or_default();
    let desc = q.dir.as_deref() == Some("desc");
    let per_page = q.per_page.unwrap_or(50).clamp(10, 200);
    let page = q.page.unwrap_or(1).max(1);
    if let Some(s) = nonempty(&q.state)
        && s.parse::<MachineState>().is_err()
    {
        return Err(error_page(
            Some(&user),
            &Error::invalid("invalid_state", format!("no state {s:?}")),
        ));
    }
    let (rows, total) = app
        .machine_table(
            user.who(),
            TableQuery {
                state: nonempty(&q.state),
                rack: nonempty(&q.rack),
                pool: nonempty(&q.pool),
                tag: nonempty(&q.tag),
                power: nonempty(&q.power),
                q: nonempty(&q.q),
                sort,
                desc,
                limit: per_page,
                offset: (page - 1) * per_page,
                ..Default::default()
            },
        )
        .await
        .map_err(fail(&user))?;
    let counts = app.state_counts(user.who()).await.unwrap_or_default();
    let discovered = counts
        .iter()
        .find(|(s, _)| s == "discovered")
        .map_or(0, |(_, n)| *n);
    let states: Vec<_> = MachineState::ALL
        .iter()
        .map(|s| {
            let n = counts
                .iter()
                .find(|(c, _)| c == s.as_str())
                .map_or(0, |(_, n)| *n);
            context! { name => s.as_str(), count => n }
        })
        .collect();
    let racks: Vec<String> = app
        .list_racks(user.who())
        .await
        .map_err(fail(&user))?
        .into_iter()
        .map(|r| r.name)
        .collect();
    let mut query = q.clone();
    query.sort = Some(sort.as_str().to_owned());
    query.dir = Some(if desc { "desc" } else { "asc" }.to_owned());
    let column = |label: &'static str, key: Option<SortKey>| {
        let (href_s, current) = match key {
            Some(k) => {
                let mut c = query.clone();
                c.page = None;
                c.sort = Some(k.as_str().to_owned());
                c.dir = Some(if k == sort && !desc { "desc" } else { "asc" }.to_owned());
                (c.href(), k == sort)
            }
            None => (String::new(), false),
        };
        Column {
            label,
            sort: key.is_some(),
            href: href(href_s),
            current,
        }
    };
    let columns = [
        column("Hostname", Some(SortKey::Hostname)),
        column("State", Some(SortKey::State)),
        column("Power", Some(SortKey::Power)),
        column("Rack", Some(SortKey::Rack)),
        column("MAC", None),
        column("IP", None),
        column("Serial", None),
        column("Size", None),
        column("Pool / tags", None),
    ];
    let machines: Vec<_> = rows
        .iter()
        .map(|m| {
            context! {
                id => m.id, hostname => m.hostname, state => m.state, maintenance => m.maintenance,
                power_state => m.power_state, rack => m.rack, rack_unit => m.rack_unit,
                mac => m.mac, ip => m.ip, serial => m.serial, pool => m.pool, tags => m.tags,
                cpu_threads => m.cpu_threads,
                memory_gib => m.memory_mib.map(|mib| format!("{:.1}", mib as f64 / 1024.0)),
            }
        })
        .collect();
    let first = if total == 0 {
        0
    } else {
        (page - 1) * per_page + 1
    };
    let last = ((page - 1) * per_page + rows.len() as i64).max(0);
    let page_href = |p: i64| {
        let mut c = query.clone();
        c.page = Some(p);
        c.href()
    };
    let ctx = user.page(
        "machines",
        discovered,
        context! {
            machines => machines, total => total, columns => columns, states => states,
            racks => racks, query => query, first => first, last => last,
            self_url => href(page_href(page)),
            prev_href => (page > 1).then(|| href(page_href(page - 1))),
            next_href => (last < total).then(|| href(page_href(page + 1))),
        },
    );
    Ok(shown(&user, &headers, render("machines.html", ctx)))
}

/// A bulk action on the machines ticked in the table: each is tried, the message says which
/// worked and why the others did not.
pub(crate) async fn bulk(
    State(app): State<App>,
    Posted {
        user,
        headers,
        form,
    }: Posted,
) -> Page {
    let back = local_path(form.get("back"), "/machines");
    let op = form.get("op").unwrap_or("").to_owned();
    let ids: Vec<Uuid> = form
        .all("id")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    if ids.is_empty() {
        return Ok(redirect_with(
            &headers,
            &back,
            "err",
            "No machine selected.",
        ));
    }
    if ids.len() > 500 {
        return Ok(redirect_with(
            &headers,
            &back,
            "err",
            "At most 500 machines at once.",
        ));
    }
    let who = user.who();
    let reason = Some("bulk action in the web UI".to_owned());
    let mut done = 0;
    let mut refused: Vec<String> = Vec::new();
    for id in &ids {
        let res = match op.as_str() {
            "inspect" => app
                .act(
                    who,
                    *id,
                    Action {
                        verb: Verb::Inspect,
                        expected_version: None,
                        reason: reason.clone(),
                    },
                )
                .await
                .map(|_| ()),
            "power_on" | "power_off" | "power_cycle" => {
                let action = match op.as_str() {
                    "power_on" => PowerOp::On,
                    "power_off" => PowerOp::Off,
                    _ => PowerOp::Cycle,
                };
                app.request_power(
                    who,
                    *id,
                    PowerRequest {
                        action,
                        force: None,
                    },
                )
                .await
                .map(|_| ())
            }
            "maintenance_on" | "maintenance_off" => app
                .set_maintenance(who, *id, op == "maintenance_on", reason.clone(), None)
                .await
                .map(|_| ()),
            other => {
                return Ok(redirect_with(
                    &headers,
                    &back,
                    "err",
                    format!("Unknown bulk action {other:?}."),
                ));
            }
        };
        match res {
            Ok(()) => done += 1,
            Err(e) => {
                let name = app
                    .get_machine(who, *id)
                    .await
                    .ok()
                    .and_then(|m| m.hostname)
                    .unwrap_or_else(|| id.to_string());
                refused.push(format!("{name}: {}", e.message));
            }
        }
    }
    let what = op.replace('_', " ");
    if refused.is_empty() {
        Ok(redirect_with(
            &headers,
            &back,
            "ok",
            format!("{what}: done for {done} machine(s)."),
        ))
    } else {
        let shown: Vec<&str> = refused.iter().take(5).map(String::as_str).collect();
        let more = refused.len().saturating_sub(5);
        Ok(redirect_with(
            &headers,
            &back,
            "err",
            format!(
                "{what}: done for {done}, refused for {} ({}{})",
                refused.len(),
                shown.join("; "),
                if more > 0 {
                    format!("; {more} more")
                } else {
                    String::new()
                }
            ),
        ))
    }
}

// ------------------------------------------------------------------ one machine

/// How a clean report's disks were wiped, in a few words each: "vda full (fallback),
/// verified; nvme0n1 secure (NVMe Format), verified". Empty for other events.
fn wipe_summary(d: &serde_json::Value) -> String {
    let Some(disks) = d["disks"].as_array() else {
        return String::new();
    };
    disks
        .iter()
        .filter_map(|w| {
            let name = w["name"].as_str()?;
            let method = w["method"].as_str().unwrap_or("quick");
            let v = w["verification"].as_str().unwrap_or("");
            let mut out = format!("{name} {method}");
            if v.contains("NVMe Format") {
                out.push_str(" (NVMe Format)");
            } else if v.contains("instead") {
                out.push_str(" (fallback)");
            }
            if w["error"].is_string() {
                out.push_str(", failed");
            } else if v.contains("all zero") {
                out.push_str(", verified");
            }
            Some(out)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the timeline shows of an event: a title and a short text.
fn timeline_entry(e: &Event) -> minijinja::Value {
    let d = &e.details;
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let (title, text) = match (e.from_state, e.to_state) {
        (Some(from), Some(to)) => {
            let text = [s(&d["reason"]), wipe_summary(d)]
                .into_iter()
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            (format!("{from} → {to}"), text)
        }
        (None, Some(to)) => (format!("→ {to}"), String::new()),
        _ => match e.kind.as_str() {
            "boot" => ("Network boot".to_owned(), s(&d["message"])),
            "bmc_job_succeeded" | "bmc_job_failed" | "bmc_job_queued" | "bmc_job_cancelled" => {
                let params: Vec<String> = d["params"]
                    .as_object()
                    .map(|p| {
                        p.iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(k, v)| format!("{k}={}", s(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                let outcome = match e.kind.as_str() {
                    "bmc_job_succeeded" => "done".to_owned(),
                    "bmc_job_queued" => "queued".to_owned(),
                    "bmc_job_cancelled" => "cancelled".to_owned(),
                    _ => format!("failed: {}", s(&d["error"])),
                };
                (
                    format!("BMC {} {}", s(&d["kind"]), params.join(" ")),
                    outcome,
                )
            }
            kind => {
                // The details as `key: value`, the bookkeeping left out.
                let mut text = d
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, v)| !v.is_null() && k.as_str() != "state_version")
                            .map(|(k, v)| format!("{}: {}", k.replace('_', " "), s(v)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                if text.len() > 200 {
                    text.truncate(text.floor_char_boundary(199));
                    text.push('…');
                }
                (kind.replace('_', " "), text)
            }
        },
    };
    context! { at => e.at.to_rfc3339(), title => title, text => text, actor => e.actor }
}

/// The verbs a person runs from a machine page, in order, with how the button looks.
const PAGE_VERBS: &[(Verb, &str, &str, &str)] = &[
    (Verb::Inspect, "Inspect now", "", ""),
    (Verb::Clean, "Clean again", "", ""),
    (
        Verb::Decommission,
        "Decommission",
        "danger",
        "Decommission this machine? Its disks are wiped, its BMC credentials, addresses and rack slot released.",
    ),
];

/// The page follows a machine while its ramdisk works (the state's network boot is one).
fn live(state: MachineState) -> bool {
    matches!(
        state.behaviour().netboot,
        plinth_types::behaviour::NetBoot::Ramdisk(_)
    )
}

pub(crate) async fn machine(
    State(app): State<App>,
    user: User,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Page {
    let id: Uuid = id
        .parse()
        .map_err(|_| error_page(Some(&user), &Error::not_found("no such machine")))?;
    let who = user.who();
    let m = app.get_machine(who, id).await.map_err(fail(&user))?;
    let events = app.latest_events(who, id, 200).await.map_err(fail(&user))?;
    let mut nics = Vec::new();
    for n in &m.nics {
        let lease = app
            .list_leases(who, None, Some(n.mac))
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|l| {
                matches!(
                    l.state,
                    plinth_types::api::LeaseState::Bound | plinth_types::api::LeaseState::Offered
                )
            });
        nics.push(context! {
            mac => n.mac.to_string(), ipv4 => n.ipv4.map(|a| a.to_string()), pxe => n.pxe,
            lease => lease.map(|l| context! {
                address => l.address.to_string(), state => l.state, expires_at => l.expires_at.to_rfc3339(),
            }),
        });
    }
    let mut actions = Vec::new();
    if user.can.act {
        for (verb, label, style, confirm) in PAGE_VERBS {
            if verb.allowed_from().contains(&m.state) {
                actions.push(context! { verb => verb.as_str(), label => label, style => style, confirm => confirm });
            }
        }
    }
    if user.can.manage_machines && m.state != MachineState::Decommissioned {
        let (verb, label) = if m.maintenance {
            ("maintenance_off", "End maintenance")
        } else {
            ("maintenance_on", "Maintenance")
        };
        actions.push(context! { verb => verb, label => label, style => "secondary" });
    }
    let facts = m
        .facts
        .as_object()
        .is_some_and(|o| !o.is_empty())
        .then(|| m.facts.clone());
    let serial = m.facts["system"]["serial"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            m.bmc
                .as_ref()
                .and_then(|b| b.identity.as_ref())
                .and_then(|i| i["serial"].as_str().map(str::to_owned))
        });
    let entries: Vec<_> = events.iter().map(timeline_entry).collect();
    let discovered = discovered_count(&app, &user).await;
    let ctx = user.page(
        "machines",
        discovered,
        context! {
            m => m, facts => facts, serial => serial, nics => nics, actions => actions,
            events => entries, live => live(m.state),
        },
    );
    Ok(shown(&user, &headers, render("machine.html", ctx)))
}

/// The machine page's timeline alone (what the page polls while the machine is busy).
pub(crate) async fn timeline(State(app): State<App>, user: User, Path(id): Path<Uuid>) -> Page {
    let m = app.get_machine(user.who(), id).await.map_err(fail(&user))?;
    let events = app
        .latest_events(user.who(), id, 200)
        .await
        .map_err(fail(&user))?;
    let entries: Vec<_> = events.iter().map(timeline_entry).collect();
    Ok(render(
        "timeline.html",
        context! { m => m, events => entries },
    ))
}

pub(crate) async fn action(
    State(app): State<App>,
    Path(id): Path<Uuid>,
    Posted {
        user,
        headers,
        form,
    }: Posted,
) -> Page {
    let back = format!("/machines/{id}");
    let version = form.get("version").and_then(|v| v.parse().ok());
    let verb = form.get("verb").unwrap_or("");
    let who = user.who();
    let res = match verb {
        "maintenance_on" => {
            app.set_maintenance(who, id, true, Some("set in the web UI".into()), version)
                .await
        }
        "maintenance_off" => app.set_maintenance(who, id, false, None, version).await,
        other => match other.parse::<Verb>() {
            Ok(verb) => {
                app.act(
                    who,
                    id,
                    Action {
                        verb,
                        expected_version: version,
                        reason: Some("from the web UI".into()),
                    },
                )
                .await
            }
            Err(_) => Err(Error::invalid(
                "unknown_verb",
                format!("no action {other:?}"),
            )),
        },
    };
    Ok(match res {
        Ok(m) => redirect_with(
            &headers,
            &back,
            "ok",
            format!("{}: now {}.", verb.replace('_', " "), m.state),
        ),
        Err(e) => redirect_with(&headers, &back, "err", e.message),
    })
}

pub(crate) async fn power(
    State(app): State<App>,
    Path(id): Path<Uuid>,
    Posted {
        user,
        headers,
        form,
    }: Posted,
) -> Page {
    let back = format!("/machines/{id}");
    let who = user.who();
    let op = form.get("op").unwrap_or("");
    let res = match op {
        "on" | "off" | "cycle" => {
            let action = match op {
                "on" => PowerOp::On,
                "off" => PowerOp::Off,
                _ => PowerOp::Cycle,
            };
            app.request_power(
                who,
                id,
                PowerRequest {
                    action,
                    force: None,
                },
            )
            .await
        }
        "pxe_once" => {
            app.request_boot_device(
                who,
                id,
                BootDeviceRequest {
                    device: BootTarget::Pxe,
                    persistent: None,
                    mode: None,
                },
            )
            .await
        }
        other => Err(Error::invalid(
            "unknown_power_action",
            format!("no power action {other:?}"),
        )),
    };
    Ok(match res {
        Ok(job) => redirect_with(
            &headers,
            &back,
            "ok",
            format!(
                "{}: queued as BMC job {} (its outcome shows in the timeline).",
                if op == "pxe_once" {
                    "boot PXE once".to_owned()
                } else {
                    format!("power {op}")
                },
                job.id
            ),
        ),
        Err(e) => redirect_with(&headers, &back, "err", e.message),
    })
}

// ------------------------------------------------------------------ racks

/// One rack drawn: a cell per U, top down; a machine's cell spans its height.
fn rack_view(rack: &Rack, occupants: &[&Occupant]) -> minijinja::Value {
    let mut cells = Vec::new();
    let mut u = rack.height_u;
    while u >= 1 {
        let row = rack.height_u - u + 1;
        match occupants
            .iter()
            .find(|o| u >= o.rack_unit && u < o.rack_unit + o.size_u)
        {
            Some(o) => {
                let top = (o.rack_unit + o.size_u - 1).min(rack.height_u);
                let span = top - o.rack_unit + 1;
                // A machine taller than what is left above it is drawn from the top.
                for k in 0..span {
                    cells.push(context! {
                        kind => if k == 0 { "machine" } else { "covered" },
                        u => top - k, row => row + k, u_bottom => o.rack_unit, size_u => span,
                        id => o.id, hostname => o.hostname, state => o.state,
                        maintenance => o.maintenance, power => o.power_state,
                    });
                }
                u = o.rack_unit - 1;
            }
            None => {
                cells.push(context! { kind => "free", u => u, row => row });
                u -= 1;
            }
        }
    }
    let mut states: BTreeMap<&str, i64> = BTreeMap::new();
    for o in occupants {
        *states.entry(o.state.as_str()).or_default() += 1;
    }
    let total: i64 = states.values().sum();
    let states: Vec<_> = states
        .iter()
        .map(|(s, n)| context! { state => s, count => n, pct => if total > 0 { n * 100 / total } else { 0 } })
        .collect();
    context! {
        name => rack.name, site => rack.site, room => rack.room, row => rack.row,
        height_u => rack.height_u, used_u => rack.used_u, machines => rack.machine_count,
        cells => cells, states => states,
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct RacksQuery {
    site: Option<String>,
    room: Option<String>,
    row: Option<String>,
}

/// Up to this many racks are drawn in full on the racks page; more are shown as cards, a row
/// at a time drawn on request.
const DRAW_ALL_UP_TO: usize = 12;

pub(crate) async fn racks(
    State(app): State<App>,
    user: User,
    headers: HeaderMap,
    Query(q): Query<RacksQuery>,
) -> Page {
    let all = app.list_racks(user.who()).await.map_err(fail(&user))?;
    let filtered = q.site.is_some() || q.room.is_some() || q.row.is_some();
    let racks: Vec<&Rack> = all
        .iter()
        .filter(|r| {
            !filtered
                || (r.site == q.site.clone().filter(|s| !s.is_empty())
                    && r.room == q.room.clone().filter(|s| !s.is_empty())
                    && r.row == q.row.clone().filter(|s| !s.is_empty()))
        })
        .collect();
    let draw_all = filtered || racks.len() <= DRAW_ALL_UP_TO;
    let occupants = app
        .rack_occupants(user.who(), None)
        .await
        .map_err(fail(&user))?;
    let mut by_rack: HashMap<Uuid, Vec<&Occupant>> = HashMap::new();
    for o in &occupants {
        by_rack.entry(o.rack_id).or_default().push(o);
    }
    let mut groups: BTreeMap<(String, String, String), Vec<&Rack>> = BTreeMap::new();
    for r in &racks {
        let key = (
            r.site.clone().unwrap_or_default(),
            r.room.clone().unwrap_or_default(),
            r.row.clone().unwrap_or_default(),
        );
        groups.entry(key).or_default().push(r);
    }
    let empty = Vec::new();
    let groups: Vec<_> = groups
        .into_iter()
        .map(|((site, room, row), racks)| {
            let views: Vec<_> = racks
                .iter()
                .map(|r| rack_view(r, by_rack.get(&r.id).unwrap_or(&empty)))
                .collect();
            let link = format!(
                "/racks?site={}&room={}&row={}",
                url_encode(&site),
                url_encode(&room),
                url_encode(&row)
            );
            context! { site => site, room => room, row => row, racks => views, drawn => draw_all, href => href(link) }
        })
        .collect();
    let discovered = discovered_count(&app, &user).await;
    let state_names: Vec<&str> = MachineState::ALL.iter().map(|s| s.as_str()).collect();
    let ctx = user.page(
        "racks",
        discovered,
        context! {
            groups => groups, rack_count => all.len(), state_names => state_names,
            form => context! {}, errors => context! {},
        },
    );
    Ok(shown(&user, &headers, render("racks.html", ctx)))
}

pub(crate) async fn add_rack(
    State(app): State<App>,
    Posted {
        user,
        headers,
        form,
    }: Posted,
) -> Page {
    let name = form.text("name").unwrap_or_default();
    let height = form.get("height_u").unwrap_or("").trim().parse::<i32>();
    let Ok(height_u) = height else {
        return Ok(redirect_with(
            &headers,
            "/racks",
            "err",
            "The rack's height must be a whole number of U.",
        ));
    };
    let req = RackCreate {
        name: name.clone(),
        site: form.text("site"),
        room: form.text("room"),
        row: form.text("row"),
        height_u,
    };
    Ok(match app.create_rack(user.who(), req).await {
        Ok(r) => redirect_with(
            &headers,
            &format!("/racks/{}", url_encode(&r.name)),
            "ok",
            format!("Rack {} added.", r.name),
        ),
        Err(e) => redirect_with(&headers, "/racks", "err", e.message),
    })
}

pub(crate) async fn rack(
    State(app): State<App>,
    user: User,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Page {
    let r = app.get_rack(user.who(), &name).await.map_err(fail(&user))?;
    let occupants = app
        .rack_occupants(user.who(), Some(&[r.id]))
        .await
        .map_err(fail(&user))?;
    let refs: Vec<&Occupant> = occupants.iter().collect();
    let discovered = discovered_count(&app, &user).await;
    let state_names: Vec<&str> = MachineState::ALL.iter().map(|s| s.as_str()).collect();
    let ctx = user.page(
        "racks",
        discovered,
        context! { rack => rack_view(&r, &refs), state_names => state_names },
    );
    Ok(shown(&user, &headers, render("rack.html", ctx)))
}

// ------------------------------------------------------------------ enrollment

#[derive(Deserialize, Default)]
pub(crate) struct EnrollQuery {
    rack: Option<String>,
    unit: Option<String>,
    size_u: Option<i32>,
}

async fn enroll_page(
    app: &App,
    user: &User,
    status: StatusCode,
    form: HashMap<String, String>,
    errors: HashMap<String, String>,
) -> Page {
    if !user.can.manage_machines {
        return Err(error_page(
            Some(user),
            &Error::forbidden(format!(
                "the {} role may not enroll machines",
                user.who().role
            )),
        ));
    }
    let racks = app.list_racks(user.who()).await.map_err(fail(user))?;
    let size: i32 = form
        .get("size_u")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    let free_units = match form.get("rack").filter(|r| !r.is_empty()) {
        Some(r) => app
            .free_units(user.who(), r, size.clamp(1, 100))
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let discovered = discovered_count(app, user).await;
    let ctx = user.page(
        "enroll",
        discovered,
        context! { racks => racks, free_units => free_units, form => form, errors => errors },
    );
    let mut resp = render("enroll.html", ctx);
    *resp.status_mut() = status;
    Ok(resp)
}

pub(crate) async fn enroll_form(
    State(app): State<App>,
    user: User,
    headers: HeaderMap,
    Query(q): Query<EnrollQuery>,
) -> Page {
    let mut form = HashMap::new();
    if let Some(r) = q.rack {
        form.insert("rack".to_owned(), r);
    }
    if let Some(u) = q.unit {
        form.insert("unit".to_owned(), u);
    }
    if let Some(s) = q.size_u {
        form.insert("size_u".to_owned(), s.to_string());
    }
    let resp = enroll_page(&app, &user, StatusCode::OK, form, HashMap::new()).await?;
    Ok(shown(&user, &headers, resp))
}

/// The field of the enrollment form an API error belongs to (`_form` for the whole form).
fn field_of(code: &str) -> &'static str {
    match code {
        "duplicate_mac" | "no_nics" | "duplicate_ipv4" | "invalid_mac" => "macs",
        "duplicate_hostname" | "invalid_hostname" => "hostname",
        "rack_slot_taken"
        | "rack_slot_out_of_range"
        | "invalid_rack_unit"
        | "missing_rack_unit" => "unit",
        "unknown_rack" | "missing_rack" => "rack",
        "invalid_size" => "size_u",
        "invalid_bmc_address" => "bmc_address",
        "invalid_bmc_username" => "bmc_username",
        "invalid_bmc_password" => "bmc_password",
        "invalid_tags" => "tags",
        "invalid_name" => "pool",
        _ => "_form",
    }
}

/// Splits what a person pasted or a scanner typed: whitespace, commas and semicolons separate.
fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) async fn enroll(
    State(app): State<App>,
    Posted {
        user,
        headers,
        form,
    }: Posted,
) -> Page {
    let mut errors: HashMap<String, String> = HashMap::new();
    let mut nics = Vec::new();
    let macs = split_list(form.get("macs").unwrap_or(""));
    if macs.is_empty() {
        errors.insert("macs".into(), "At least one MAC address.".into());
    }
    for (i, m) in macs.iter().enumerate() {
        match m.parse::<MacAddr>() {
            Ok(mac) => {
                if nics.iter().any(|n: &NicSpec| n.mac == mac) {
                    errors.insert("macs".into(), format!("{m} is listed twice."));
                }
                nics.push(NicSpec {
                    mac,
                    ipv4: None,
                    pxe: Some(i == 0),
                });
            }
            Err(_) => {
                errors.insert(
                    "macs".into(),
                    format!("{m:?} is not a MAC address (like 52:54:00:12:34:56)."),
                );
            }
        }
    }
    let int = |name: &str, errors: &mut HashMap<String, String>| -> Option<i32> {
        let v = form.text(name)?;
        match v.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                errors.insert(name.to_owned(), format!("{v:?} is not a whole number."));
                None
            }
        }
    };
    let rack = form.text("rack");
    let unit = int("unit", &mut errors);
    let size_u = int("size_u", &mut errors);
    if rack.is_some() && unit.is_none() && !errors.contains_key("unit") {
        errors.insert(
            "unit".into(),
            "Choose the machine's position in the rack.".into(),
        );
    }
    let bmc = match form.text("bmc_protocol") {
        None => None,
        Some(p) => {
            let protocol = match p.as_str() {
                "redfish" => Some(BmcProtocol::Redfish),
                "ipmi" => Some(BmcProtocol::Ipmi),
                _ => {
                    errors.insert("bmc_protocol".into(), "Redfish or IPMI.".into());
                    None
                }
            };
            let mut need = |name: &str, what: &str| {
                let v = form.text(name);
                if v.is_none() {
                    errors.insert(name.to_owned(), format!("The BMC's {what} is needed."));
                }
                v
            };
            let address = need("bmc_address", "address");
            let username = need("bmc_username", "user");
            let password = form.get("bmc_password").unwrap_or("").to_owned();
            if password.is_empty() {
                errors.insert(
                    "bmc_password".into(),
                    "The BMC's password is needed.".into(),
                );
            }
            match (protocol, address, username) {
                (Some(protocol), Some(address), Some(username)) => Some(BmcSpec {
                    protocol,
                    address,
                    username,
                    password,
                    verify_tls: Some(form.get("bmc_insecure").is_none()),
                    plain_http: form.get("bmc_plain_http").is_some().then_some(true),
                }),
                _ => None,
            }
        }
    };
    if !errors.is_empty() {
        // The form again, filled in, with the errors at their fields (200, as for a login).
        return enroll_page(&app, &user, StatusCode::OK, form.echo(), errors).await;
    }
    let tags = split_list(form.get("tags").unwrap_or(""));
    let macs_given: Vec<MacAddr> = nics.iter().map(|n| n.mac).collect();
    let req = MachineCreate {
        hostname: form.text("hostname"),
        rack,
        rack_unit: unit,
        size_u,
        pool: form.text("pool"),
        tags: (!tags.is_empty()).then_some(tags),
        arch: None,
        nics,
        bmc,
    };
    match app.enroll_machine(user.who(), req).await {
        Ok(m) => Ok(redirect_with(
            &headers,
            &format!("/machines/{}", m.id),
            "ok",
            format!(
                "{} enrolled. plinth is checking its BMC; inspect it when you are ready.",
                m.hostname.as_deref().unwrap_or("The machine")
            ),
        )),
        Err(e) => {
            let mut message = e.message;
            if e.code == "duplicate_mac" && e.kind == plinth_types::ErrorKind::Conflict {
                // Say which of the pasted MACs, and where it is enrolled.
                for mac in &macs_given {
                    let found = app
                        .machine_table(
                            user.who(),
                            TableQuery {
                                q: Some(mac.to_string()),
                                limit: 1,
                                ..Default::default()
                            },
                        )
                        .await;
                    if let Ok((rows, _)) = found
                        && let Some(m) = rows.first()
                    {
                        message = format!(
                            "{mac} is already enrolled, on {}.",
                            m.hostname.clone().unwrap_or_else(|| m.id.to_string())
                        );
                        break;
                    }
                }
            }
            let mut errors = HashMap::new();
            errors.insert(field_of(e.code).to_owned(), message);
            enroll_page(&app, &user, StatusCode::OK, form.echo(), errors).await
        }
    }
}

pub(crate) async fn free_slots(
    State(app): State<App>,
    user: User,
    Query(q): Query<EnrollQuery>,
) -> Result<Json<Vec<i32>>, Response> {
    let rack = q.rack.unwrap_or_default();
    app.free_units(user.who(), &rack, q.size_u.unwrap_or(1))
        .await
        .map(Json)
        .map_err(|e| (crate::error::status(e.kind), e.message).into_response())
}

// ------------------------------------------------------------------ discovered

pub(crate) async fn discovered(State(app): State<App>, user: User, headers: HeaderMap) -> Page {
    let page = app
        .list_machines(
            user.who(),
            MachineQuery {
                state: Some(MachineState::Discovered),
                limit: Some(500),
                ..Default::default()
            },
        )
        .await
        .map_err(fail(&user))?;
    let racks = app.list_racks(user.who()).await.map_err(fail(&user))?;
    let machines: Vec<_> = page
        .machines
        .iter()
        .map(|m| {
            let facts = m
                .facts
                .as_object()
                .is_some_and(|o| !o.is_empty())
                .then(|| m.facts.clone());
            context! {
                id => m.id, hostname => m.hostname, created_at => m.created_at.to_rfc3339(),
                mac => m.nics.first().map(|n| n.mac.to_string()), facts => facts,
            }
        })
        .collect();
    let n = machines.len() as i64;
    let ctx = user.page(
        "discovered",
        n,
        context! { machines => machines, racks => racks },
    );
    Ok(shown(&user, &headers, render("discovered.html", ctx)))
}

/// Adopting a discovered machine: its place (and name) first, then `adopt` → enrolled.
pub(crate) async fn adopt(
    State(app): State<App>,
    Path(id): Path<Uuid>,
    Posted {
        user,
        headers,
        form,
    }: Posted,
) -> Page {
    let who = user.who();
    let parse = |name: &str| -> Result<Option<i32>, String> {
        match form.text(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}: {v:?} is not a whole number")),
        }
    };
    let (unit, size) = match (parse("unit"), parse("size_u")) {
        (Ok(u), Ok(s)) => (u, s),
        (Err(e), _) | (_, Err(e)) => {
            return Ok(redirect_with(&headers, "/discovered", "err", e));
        }
    };
    let rack = form.text("rack");
    let patch = MachinePatch {
        hostname: form.text("hostname").map(Some),
        rack: rack.clone().map(Some),
        rack_unit: rack.as_ref().and(unit),
        size_u: size,
        ..Default::default()
    };
    if let Err(e) = app.update_machine(who, id, patch).await {
        return Ok(redirect_with(&headers, "/discovered", "err", e.message));
    }
    Ok(
        match app
            .act(
                who,
                id,
                Action {
                    verb: Verb::Adopt,
                    expected_version: None,
                    reason: Some("adopted in the web UI".into()),
                },
            )
            .await
        {
            Ok(m) => redirect_with(
                &headers,
                &format!("/machines/{id}"),
                "ok",
                format!(
                    "{} adopted: now {}.",
                    m.hostname.as_deref().unwrap_or("The machine"),
                    m.state
                ),
            ),
            Err(e) => redirect_with(&headers, "/discovered", "err", e.message),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_says_how_disks_were_wiped() {
        let d = serde_json::json!({ "disks": [
            { "name": "vda", "method": "full", "verification": "the device does not take discards: overwritten instead; 66 samples read back past the page cache: all zero" },
            { "name": "nvme0n1", "method": "secure", "verification": "NVMe Format NVM, user data erase (SES=1), namespace 1 in 0.1 s; 66 samples read back: all zero" },
            { "name": "sda", "error": "sda: I/O error" },
        ]});
        assert_eq!(
            wipe_summary(&d),
            "vda full (fallback), verified; nvme0n1 secure (NVMe Format), verified; sda quick, failed"
        );
        assert_eq!(wipe_summary(&serde_json::json!({ "reason": "x" })), "");
    }
}
