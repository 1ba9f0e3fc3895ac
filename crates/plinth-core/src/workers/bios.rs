//! The BIOS jobs (issue 21), with no transaction open, and what their outcome records.
//!
//! `bios_apply`: BMCs accept a change and silently do something else, so every step is read
//! back.
//! 1. Read the attributes: when every asked value is already in effect the job is done
//!    without a reboot (a job run again after its worker died past the reboot ends here).
//! 2. Check the change against the BMC's registry, when it publishes one.
//! 3. PATCH the pending settings, and read them back: each asked value must be pending (or
//!    already in effect).
//! 4. Boot: a cycle of a running machine, power on of one that is off.
//! 5. Read the attributes until every asked value shows (firmware applies pending settings
//!    during POST, after the BMC reports the power on) or the BMC has nothing pending any more,
//!    for at most the power wait. A value that did not stick fails the job, naming it
//!    (`BootMode: asked Uefi, reads Bios`); the attributes are read again by a `bios_read`.
//! 6. A machine that was off is powered off again.
//!
//! A worker that dies anywhere in between leaves the job to be run again from step 1: the
//! PATCH is idempotent, and the only repeat is a reboot.
//!
//! `bios_read`: the attributes, pending settings and registry (a BMC without BIOS settings is
//! not a failure: nothing is recorded).

use plinth_bmc::bios::{BiosAttributes, check_registry, mismatches, not_pending, same_value};
use plinth_bmc::{Bmc, PowerAction, PowerState};
use plinth_db::jobs::Claimed;
use serde_json::json;

use super::JobSettings;
use super::call::{Failure, call, final_failure, power_str};
use super::event;
use super::execute::{Done, wait_power};
use crate::jobs::{JobSpec, queue};
use crate::{DbResult, Result};

fn joined(m: &[plinth_bmc::bios::Mismatch]) -> String {
    m.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The registry, when the BMC publishes one (not publishing one is no failure).
async fn registry(
    bmc: &dyn Bmc,
    s: &JobSettings,
) -> std::result::Result<Option<plinth_bmc::bios::Registry>, Failure> {
    match call(s.call_timeout, "read BIOS registry", bmc.bios_registry()).await {
        Ok(r) => Ok(r),
        Err(f) if !f.transient => Ok(None),
        Err(f) => Err(f),
    }
}

pub(super) async fn read(bmc: &dyn Bmc, s: &JobSettings) -> std::result::Result<Done, Failure> {
    let t = s.call_timeout;
    let current = match call(t, "read BIOS attributes", bmc.bios_attributes()).await {
        Err(f) if f.kind == "unsupported" => {
            return Ok(Done {
                result: json!({ "supported": false, "why": f.message }),
                power: None,
                identity: None,
            });
        }
        r => r?,
    };
    let pending = call(t, "read pending BIOS settings", bmc.bios_pending()).await?;
    let reg = registry(bmc, s).await?;
    Ok(Done {
        result: json!({ "attributes": current, "pending": pending, "registry": reg }),
        power: None,
        identity: None,
    })
}

pub(super) async fn apply(
    bmc: &dyn Bmc,
    asked: &BiosAttributes,
    s: &JobSettings,
) -> std::result::Result<Done, Failure> {
    let t = s.call_timeout;
    let current = call(t, "read BIOS attributes", bmc.bios_attributes()).await?;
    if mismatches(asked, &current).is_empty() {
        let pending = call(t, "read pending BIOS settings", bmc.bios_pending()).await?;
        return Ok(Done {
            result: json!({ "asked": asked, "attributes": current, "pending": pending,
                "already": true, "rebooted": false }),
            power: None,
            identity: None,
        });
    }
    let reg = registry(bmc, s).await?;
    if let Some(reg) = &reg {
        let bad = check_registry(reg, asked);
        if !bad.is_empty() {
            return Err(final_failure(
                "bios_invalid",
                format!("the BMC's registry refuses: {}", bad.join("; ")),
            ));
        }
    }
    call(t, "set pending BIOS settings", bmc.set_bios_pending(asked)).await?;
    // A BMC without a settings object shows nothing pending: the reboot's read-back judges.
    let pending = call(t, "read pending BIOS settings", bmc.bios_pending()).await?;
    if let Some(p) = &pending {
        let missing = not_pending(asked, p, &current);
        if !missing.is_empty() {
            return Err(final_failure(
                "bios_not_pending",
                format!(
                    "the BMC accepted the BIOS change but does not show it pending: {}",
                    joined(&missing)
                ),
            ));
        }
    }
    let before = call(t, "read power state", bmc.power_state()).await?;
    let was_off = matches!(before, PowerState::Off | PowerState::PoweringOff);
    let action = if was_off {
        PowerAction::On
    } else {
        PowerAction::Cycle
    };
    call(
        t,
        "power the machine to apply BIOS settings",
        bmc.power(action),
    )
    .await?;
    wait_power(bmc, s, PowerState::On).await?;
    // Read until the values show or the BMC has applied what was pending.
    let deadline = tokio::time::Instant::now() + s.power_wait;
    let (after, pending_after, wrong) = loop {
        let after = call(t, "read BIOS attributes", bmc.bios_attributes()).await?;
        let wrong = mismatches(asked, &after);
        let pending_after = if wrong.is_empty() {
            Some(BiosAttributes::new())
        } else {
            call(t, "read pending BIOS settings", bmc.bios_pending()).await?
        };
        // A value the BMC still holds pending has not been applied yet: wait for it (for as
        // long as the power wait when the BMC does not show what is pending).
        let still_pending = match &pending_after {
            Some(p) => wrong
                .iter()
                .any(|m| p.get(&m.attribute).is_some_and(|v| same_value(v, &m.asked))),
            None => true,
        };
        if wrong.is_empty() || !still_pending || tokio::time::Instant::now() >= deadline {
            break (after, pending_after, wrong);
        }
        tokio::time::sleep(s.power_poll).await;
    };
    let mut power = PowerState::On;
    if was_off {
        call(
            t,
            "power off after applying BIOS settings",
            bmc.power(PowerAction::Off { force: true }),
        )
        .await?;
        power = wait_power(bmc, s, PowerState::Off).await?;
    }
    if !wrong.is_empty() {
        return Err(final_failure(
            "bios_mismatch",
            format!(
                "BIOS settings did not stick after the reboot: {}",
                joined(&wrong)
            ),
        ));
    }
    Ok(Done {
        result: json!({ "asked": asked, "attributes": after, "pending": pending_after,
            "already": false, "rebooted": true, "power_before": power_str(before),
            "registry": reg }),
        power: Some(power),
        identity: None,
    })
}

/// A BIOS job's success: its read-back stored, and an event for a change applied.
pub(super) async fn record_done(
    tx: &mut plinth_db::PgConnection,
    j: &Claimed,
    result: &serde_json::Value,
) -> Result<()> {
    if !matches!(j.kind.as_str(), "bios_apply" | "bios_read") || !result["attributes"].is_object() {
        return Ok(());
    }
    let registry = result.get("registry").filter(|r| r.is_object());
    let none = json!({});
    plinth_db::bios::record_read(
        tx,
        j.machine_id,
        &result["attributes"],
        result
            .get("pending")
            .filter(|p| p.is_object())
            .unwrap_or(&none),
        registry,
        j.id.uuid(),
    )
    .await
    .db()?;
    if j.kind == "bios_apply" {
        event(
            tx,
            j.machine_id,
            "bios_applied",
            json!({ "job": j.id, "attributes": j.params["attributes"], "profile": j.params["profile"],
                "rebooted": result["rebooted"] }),
        )
        .await?;
    }
    Ok(())
}

/// A BIOS change that failed for good: an event naming what did not stick, and a read of the
/// BIOS as it is (the stored attributes must not say what was only asked).
pub(super) async fn record_failed(
    tx: &mut plinth_db::PgConnection,
    j: &Claimed,
    f: &Failure,
) -> Result<()> {
    if j.kind != "bios_apply" {
        return Ok(());
    }
    event(
        tx,
        j.machine_id,
        "bios_not_applied",
        json!({ "job": j.id, "attributes": j.params["attributes"], "profile": j.params["profile"],
            "error_kind": f.kind, "error": f.message }),
    )
    .await?;
    if matches!(f.kind, "bios_mismatch" | "bios_not_pending") {
        queue(tx, j.machine_id, &[JobSpec::BiosRead], "system").await?;
    }
    Ok(())
}
