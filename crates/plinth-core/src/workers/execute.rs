//! What each kind of job does on the BMC ([`execute`]), with no transaction open: read the
//! power state first and send only what changes it, then wait until the BMC shows the change;
//! set a boot override and read it back; read the identity.

use plinth_bmc::{Bmc, BootDevice, BootMode, PowerAction, PowerState};
use plinth_types::api::{BootTarget, FirmwareMode, PowerOp};
use serde_json::json;

use super::JobSettings;
use super::call::{Failure, call, power_str};
use crate::jobs::JobSpec;

/// Polls the power state until it is `want`; returns the last state read.
pub(super) async fn wait_power(
    bmc: &dyn Bmc,
    s: &JobSettings,
    want: PowerState,
) -> std::result::Result<PowerState, Failure> {
    let deadline = tokio::time::Instant::now() + s.power_wait;
    loop {
        let now = call(s.call_timeout, "read power state", bmc.power_state()).await?;
        if now == want {
            return Ok(now);
        }
        if tokio::time::Instant::now() + s.power_poll > deadline {
            return Err(Failure {
                transient: false,
                kind: "power_wait",
                message: format!(
                    "the machine is still {} {} s after asking for {}",
                    power_str(now),
                    s.power_wait.as_secs(),
                    power_str(want)
                ),
            });
        }
        tokio::time::sleep(s.power_poll).await;
    }
}

/// What a successful attempt learned, recorded with the job.
#[derive(Clone)]
pub(super) struct Done {
    pub(super) result: serde_json::Value,
    pub(super) power: Option<PowerState>,
    pub(super) identity: Option<serde_json::Value>,
}

/// Runs `spec` on `bmc`. `media`: the URL of the ISO the runner prepared for a
/// [`JobSpec::VmediaBoot`] (see `workers::vmedia`).
pub(super) async fn execute(
    bmc: &dyn Bmc,
    spec: JobSpec,
    s: &JobSettings,
    media: Option<&str>,
) -> std::result::Result<Done, Failure> {
    let t = s.call_timeout;
    match spec {
        JobSpec::Power { .. } | JobSpec::Retire => {
            let (op, force) = match spec {
                JobSpec::Power { op, force } => (op, force),
                // Powering off for good is a forced off; the scrub follows when it is recorded.
                _ => (PowerOp::Off, true),
            };
            let before = call(t, "read power state", bmc.power_state()).await?;
            let off = matches!(before, PowerState::Off | PowerState::PoweringOff);
            let (action, want) = match op {
                PowerOp::On if !off => (None, PowerState::On),
                PowerOp::On => (Some(PowerAction::On), PowerState::On),
                PowerOp::Off if before == PowerState::Off => (None, PowerState::Off),
                PowerOp::Off => (Some(PowerAction::Off { force }), PowerState::Off),
                // A cycle or reset of a machine that is off starts it.
                PowerOp::Cycle | PowerOp::Reset if off => (Some(PowerAction::On), PowerState::On),
                PowerOp::Cycle => (Some(PowerAction::Cycle), PowerState::On),
                PowerOp::Reset => (Some(PowerAction::Reset), PowerState::On),
            };
            if let Some(a) = action {
                call(t, &format!("power {}", action_name(a)), bmc.power(a)).await?;
            }
            let after = wait_power(bmc, s, want).await?;
            Ok(Done {
                result: json!({
                    "before": power_str(before),
                    "after": power_str(after),
                    "sent": action.map(action_name),
                }),
                power: Some(after),
                identity: None,
            })
        }
        JobSpec::BootDevice {
            device,
            persistent,
            mode,
        } => {
            let device = match device {
                BootTarget::Pxe => BootDevice::Pxe,
                BootTarget::Disk => BootDevice::Disk,
                BootTarget::BiosSetup => BootDevice::BiosSetup,
                BootTarget::Cdrom => BootDevice::Cdrom,
            };
            let mode = mode.map(|m| match m {
                FirmwareMode::Bios => BootMode::Bios,
                FirmwareMode::Uefi => BootMode::Uefi,
            });
            // The read-back of set_boot_verified is the result: what the BMC reports, and
            // how much of the override that confirms (plinth_bmc::check_readback).
            let (got, confirmed) = call(
                t.saturating_mul(3),
                "set boot device",
                plinth_bmc::set_boot_verified(bmc, device, persistent, mode),
            )
            .await?;
            Ok(Done {
                result: json!({ "boot_override": got, "confirmed": confirmed }),
                power: None,
                identity: None,
            })
        }
        JobSpec::VmediaBoot { mode, .. } => {
            let Some(url) = media else {
                return Err(super::call::final_failure(
                    "config",
                    "no ISO was prepared for this virtual-media boot",
                ));
            };
            super::vmedia::boot(bmc, url, mode, s).await
        }
        JobSpec::VmediaEject => super::vmedia::eject(bmc, s).await,
        // Run by the runner through workers::firmware, which needs the database.
        JobSpec::FirmwareUpdate { .. } | JobSpec::FirmwareRead => Err(super::call::final_failure(
            "config",
            "a firmware job reached the plain executor",
        )),
        // Run by the runner itself (it writes the staged secret between BMC calls).
        JobSpec::RotateCredentials => Err(super::call::final_failure(
            "config",
            "a rotation is run by the job runner",
        )),
        JobSpec::Identify => {
            let identity = call(t, "read identity", bmc.identity()).await?;
            let power = call(t, "read power state", bmc.power_state()).await?;
            let identity = serde_json::to_value(&identity).unwrap_or_default();
            Ok(Done {
                result: json!({ "identity": identity, "power": power_str(power) }),
                power: Some(power),
                identity: Some(identity),
            })
        }
        JobSpec::BiosApply { attributes, .. } => super::bios::apply(bmc, &attributes, s).await,
        JobSpec::BiosRead => super::bios::read(bmc, s).await,
    }
}

fn action_name(a: PowerAction) -> &'static str {
    match a {
        PowerAction::On => "on",
        PowerAction::Off { force: true } => "off (forced)",
        PowerAction::Off { force: false } => "off",
        PowerAction::Cycle => "cycle",
        PowerAction::Reset => "reset",
    }
}
