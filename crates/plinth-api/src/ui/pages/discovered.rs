//! Machines that PXE-booted unannounced, and adopting one into the inventory.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use minijinja::context;
use plinth_core::App;
use plinth_core::lifecycle::Action;
use plinth_core::machines::MachineQuery;
use plinth_types::api::MachinePatch;
use plinth_types::{MachineState, Verb};
use uuid::Uuid;

use super::super::{Posted, User, redirect_with, render, shown};
use super::*;

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
