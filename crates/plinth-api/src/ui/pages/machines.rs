//! The machine table: filters, search, sort, pages, and bulk actions on the rows picked.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use minijinja::context;
use plinth_core::App;
use plinth_core::inventory::SortKey;
use plinth_core::inventory::TableQuery;
use plinth_core::lifecycle::Action;
use plinth_types::api::{PowerOp, PowerRequest};
use plinth_types::{Error, MachineState, Verb};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::super::{Posted, User, error_page, redirect_with, render, shown, url_encode};
use super::*;

#[derive(Deserialize, Serialize, Default, Clone)]
pub(crate) struct MachinesQuery {
    q: Option<String>,
    state: Option<String>,
    rack: Option<String>,
    pool: Option<String>,
    tag: Option<String>,
    power: Option<String>,
    health: Option<String>,
    /// `bios:1.2.3`: a firmware component at a version (issue 21).
    firmware: Option<String>,
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
        add("health", &self.health);
        add("firmware", &self.firmware);
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
    let state = match nonempty(&q.state) {
        None => None,
        Some(s) => Some(s.parse::<MachineState>().map_err(|_| {
            error_page(
                Some(&user),
                &Error::invalid("invalid_state", format!("no state {s:?}")),
            )
        })?),
    };
    let firmware = nonempty(&q.firmware)
        .map(|f| plinth_core::firmware::parse_filter(&f))
        .transpose()
        .map_err(|e| error_page(Some(&user), &e))?;
    let (rows, total) = app
        .machine_table(
            user.who(),
            TableQuery {
                state,
                rack: nonempty(&q.rack),
                pool: nonempty(&q.pool),
                tag: nonempty(&q.tag),
                power: nonempty(&q.power),
                health: nonempty(&q.health),
                firmware,
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
        .find(|(s, _)| *s == MachineState::Discovered)
        .map_or(0, |(_, n)| *n);
    let states: Vec<_> = MachineState::ALL
        .iter()
        .map(|s| {
            let n = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
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
        column("Health", None),
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
                power_state => m.power_state, health => m.health, rack => m.rack, rack_unit => m.rack_unit,
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
