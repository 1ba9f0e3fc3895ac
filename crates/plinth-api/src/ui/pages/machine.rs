//! One machine's page: its facts, BMC, timeline, and the actions and power buttons.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use minijinja::context;
use plinth_core::App;
use plinth_core::lifecycle::Action;
use plinth_types::api::{BootDeviceRequest, BootTarget, Event, PowerOp, PowerRequest};
use plinth_types::{Error, MachineState, Verb};
use uuid::Uuid;

use super::super::{Posted, User, error_page, redirect_with, render, shown};
use super::*;

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
    let console = super::console::section(&app, user.who(), id).await;
    let bios = super::bios::section(&app, user.who(), id).await;
    // Issue 21: the firmware inventory, for a machine with a BMC.
    let firmware = match m.bmc {
        Some(_) => app.machine_firmware(who, id).await.ok(),
        None => None,
    };
    let ctx = user.page(
        "machines",
        discovered,
        context! {
            m => m, facts => facts, serial => serial, nics => nics, actions => actions,
            events => entries, live => live(m.state), console => console, bios => bios,
            firmware => firmware,
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
