//! Enrolling a machine by hand: the form (filled in again with the message at its field when refused) and the free slots of a rack.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use minijinja::context;
use plinth_core::App;
use plinth_core::inventory::TableQuery;
use plinth_types::api::{BmcProtocol, BmcSpec, MachineCreate, NicSpec};
use plinth_types::{Error, MacAddr};
use serde::Deserialize;

use super::super::{Posted, User, error_page, redirect_with, render, shown};
use super::*;

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
