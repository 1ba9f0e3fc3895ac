//! Racks: the list, a new rack, and one rack drawn unit by unit with its occupants.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use minijinja::context;
use plinth_core::App;
use plinth_core::inventory::Occupant;
use plinth_types::MachineState;
use plinth_types::api::{Rack, RackCreate};
use serde::Deserialize;
use uuid::Uuid;

use super::super::{Posted, User, redirect_with, render, shown, url_encode};
use super::*;

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
