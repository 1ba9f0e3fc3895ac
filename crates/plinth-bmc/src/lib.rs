//! plinth-bmc: controlling machines through their BMCs (issue #5). [`Bmc`] is what plinth asks
//! of any BMC: power, the next boot device, identity. The Redfish and IPMI (RMCP+) drivers
//! implement it (next steps of issue #5); [`fake::FakeBmc`] implements it in memory, with
//! knobs to misbehave, for the tests of the job system and the lifecycle.
//!
//! It must not touch the database or know about machines' lifecycles: the job workers in
//! plinth-core decide what to ask, and record what happened.

pub mod fake;
pub mod ipmi;
pub mod redfish;

use futures::future::BoxFuture;
use plinth_types::MacAddr;
use serde::{Deserialize, Serialize};

/// What the BMC says about the machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
    /// In transition (Redfish `PoweringOn`/`PoweringOff`).
    PoweringOn,
    PoweringOff,
}

/// A power action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    On,
    /// Graceful (ACPI shutdown) unless forced.
    Off {
        force: bool,
    },
    /// Off then on; on for a machine that is off.
    Cycle,
    /// A hard reset of a running machine.
    Reset,
}

/// The device to boot from next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    Pxe,
    Disk,
    BiosSetup,
    Cdrom,
}

/// The firmware mode of a boot override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    Bios,
    Uefi,
}

/// A boot override as set or as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootOverride {
    /// `None`: no override, the machine follows its own boot order.
    pub device: Option<BootDevice>,
    /// Every boot, rather than the next one only.
    pub persistent: bool,
    /// `None`: the BMC does not say (or the override leaves the mode alone).
    pub mode: Option<BootMode>,
}

/// What the BMC knows about the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<uuid::Uuid>,
    /// The machine's NIC MACs, where the BMC exposes them.
    pub macs: Vec<MacAddr>,
}

/// Why a BMC call failed. Messages may be shown to operators: they never carry credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BmcError {
    #[error("the BMC cannot be reached: {0}")]
    Unreachable(String),
    #[error("the BMC did not answer in time")]
    Timeout,
    #[error("the BMC refused the credentials")]
    Auth,
    /// The BMC answered, and said no (a Redfish error message, an IPMI completion code).
    #[error("the BMC refused the request: {0}")]
    Rejected(String),
    /// The BMC is busy or failing on its side (HTTP 5xx, IPMI node busy): worth retrying.
    #[error("the BMC failed: {0}")]
    Busy(String),
    #[error("the BMC does not support {0}")]
    Unsupported(String),
    #[error("the BMC answered something plinth cannot read: {0}")]
    Protocol(String),
    /// The BMC accepted a boot override and then reported another one.
    #[error("the BMC accepted the boot override {wanted:?} but reports {got:?}")]
    Reverted {
        wanted: BootOverride,
        got: BootOverride,
    },
}

impl BmcError {
    /// Whether trying again later may succeed (network trouble, a busy BMC, a reverted
    /// override); wrong credentials, refusals and unsupported requests will not change.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BmcError::Unreachable(_)
                | BmcError::Timeout
                | BmcError::Busy(_)
                | BmcError::Reverted { .. }
        )
    }
}

pub type Result<T, E = BmcError> = std::result::Result<T, E>;

/// One BMC. Object-safe (drivers are chosen per machine at run time), so the methods return
/// boxed futures.
pub trait Bmc: Send + Sync {
    fn power_state(&self) -> BoxFuture<'_, Result<PowerState>>;
    fn power(&self, action: PowerAction) -> BoxFuture<'_, Result<()>>;
    /// Sets the next boot device (`persistent`: every boot), in `mode` when given.
    fn set_boot(
        &self,
        device: BootDevice,
        persistent: bool,
        mode: Option<BootMode>,
    ) -> BoxFuture<'_, Result<()>>;
    /// The boot override as the BMC reports it now.
    fn boot_override(&self) -> BoxFuture<'_, Result<BootOverride>>;
    fn identity(&self) -> BoxFuture<'_, Result<Identity>>;
    /// Ends the session with the BMC, if the driver keeps one (BMCs allow only a few).
    /// Best effort; the driver opens a new one if it is used again.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Sets the boot override and reads it back: some BMCs answer success and keep (or restore)
/// the old one. A mode the BMC does not report is not held against it, nor an override kept
/// for every boot when the next one was asked for (some BMCs only do persistent overrides;
/// plinth sets the disk back when it is done).
pub async fn set_boot_verified(
    bmc: &dyn Bmc,
    device: BootDevice,
    persistent: bool,
    mode: Option<BootMode>,
) -> Result<()> {
    bmc.set_boot(device, persistent, mode).await?;
    let got = bmc.boot_override().await?;
    let wanted = BootOverride {
        device: Some(device),
        persistent,
        mode,
    };
    let mode_ok = match (mode, got.mode) {
        (Some(w), Some(g)) => w == g,
        _ => true,
    };
    let persistence_ok = got.persistent == persistent || (got.persistent && !persistent);
    if got.device == wanted.device && persistence_ok && mode_ok {
        Ok(())
    } else {
        Err(BmcError::Reverted { wanted, got })
    }
}
