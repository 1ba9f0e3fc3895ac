//! The machine page's BIOS section (web/templates/machine_bios.html): the attributes as last
//! read through the BMC with what is pending, the last change asked and its outcome, and for
//! operators a form to change some (`NAME=VALUE` per line), queued as a `bios_apply` job.

use axum::extract::{Path, State};
use minijinja::{Value, context};
use plinth_core::auth::{Permission, allows};
use plinth_core::{App, Principal};
use plinth_types::Error;
use plinth_types::api::{BiosRequest, parse_bios_assignments};
use uuid::Uuid;

use super::super::{Posted, redirect_with};
use super::Page;

fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The section's context; `None` (no section) when the machine has no BIOS plinth has read
/// and the user may not change one.
pub(crate) async fn section(app: &App, who: &Principal, id: Uuid) -> Option<Value> {
    let b = app.machine_bios(who, id).await.ok()?;
    let can_set = allows(who.role, Permission::ManageMachines);
    if b.attributes.is_none() && b.last_apply.is_none() && !can_set {
        return None;
    }
    let pending = b.pending.clone().unwrap_or_default();
    let rows: Vec<Value> = b
        .attributes
        .iter()
        .flatten()
        .map(|(k, v)| {
            context! {
                name => k, value => shown(v),
                pending => pending.get(k).filter(|p| *p != v).map(shown),
            }
        })
        .collect();
    let last = b.last_apply.as_ref().map(|j| {
        context! {
            id => j.id.to_string(), state => j.state.as_str(), error => j.last_error,
            asked => j.params["attributes"].as_object().map(|o| o.iter()
                .map(|(k, v)| format!("{k}={}", shown(v))).collect::<Vec<_>>().join(" ")),
            profile => j.params["profile"].as_str(),
        }
    });
    Some(context! {
        read => b.attributes.is_some(), read_at => b.read_at.map(|t| t.to_rfc3339()),
        rows => rows, profile => b.profile, last => last, can_set => can_set,
    })
}

/// `POST /machines/{id}/bios`: `attributes` (`NAME=VALUE` per line), `force` (a checkbox).
pub(crate) async fn set_bios(
    State(app): State<App>,
    Path(id): Path<Uuid>,
    Posted {
        user,
        headers,
        form,
    }: Posted,
) -> Page {
    let back = format!("/machines/{id}");
    let lines = form.get("attributes").unwrap_or("");
    let res = match parse_bios_assignments(
        lines
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#')),
    ) {
        Ok(attributes) => {
            app.request_bios(
                user.who(),
                id,
                BiosRequest {
                    attributes,
                    force: form.get("force") == Some("yes"),
                },
            )
            .await
        }
        Err(e) => Err(Error::invalid("invalid_bios_attributes", e)),
    };
    Ok(match res {
        Ok(job) => redirect_with(
            &headers,
            &back,
            "ok",
            format!(
                "BIOS change: queued as BMC job {} (applied at a reboot and read back; its outcome shows in the timeline).",
                job.id
            ),
        ),
        Err(e) => redirect_with(&headers, &back, "err", e.message),
    })
}
