//! plinth-bmc: controlling machines through their BMCs (issue #5). [`Bmc`] is what plinth asks
//! of any BMC: power, the next boot device, identity. The Redfish and IPMI (RMCP+) drivers
//! implement it; `fake::FakeBmc` (feature `testing`, for tests only) implements it in memory,
//! with knobs to misbehave, for the tests of the job system and the lifecycle. [`Drivers`]
//! makes the driver a [`BmcTarget`] names (`connect`); plinth-core's workers ask it, or a
//! test's own [`Connector`], for every BMC they call.
//!
//! It must not touch the database or know about machines' lifecycles: the job workers in
//! plinth-core decide what to ask, and record what happened.

pub mod bios;
mod connect;
pub mod credentials;
pub mod discover;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod firmware;
pub mod health;
pub mod ipmi;
pub mod redfish;
pub mod vmedia;

pub use bios::BiosAttributes;
pub use connect::{BmcTarget, Connector, DEFAULT_CALL_TIMEOUT, Drivers};
pub use credentials::PasswordPolicy;
pub use health::{Health, LogBatch, LogEntry};
pub use vmedia::{
    MediaSlot, MediaType, choose_slot, choose_slot_for_image, eject_media_verified,
    insert_media_verified,
};

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootOverride {
    /// `None`: no override, the machine follows its own boot order.
    pub device: Option<BootDevice>,
    /// Every boot, rather than the next one only.
    pub persistent: bool,
    /// `None`: the BMC does not say (or the override leaves the mode alone).
    pub mode: Option<BootMode>,
    /// A device the BMC names without saying that an override is set: IPMI boot flags whose
    /// "valid" bit is clear and whose flags byte is empty. OpenIPMI's `ipmi_sim` answers every
    /// override it accepted this way; a real BMC does after the override was used or timed out.
    /// Never an override by itself (`device` is `None`); see [`check_readback`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<BootDevice>,
}

/// How much of a boot override its read-back confirmed (see [`check_readback`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confirmed {
    /// The override is set: its device, and its persistence and mode as far as the BMC
    /// reports them.
    Override,
    /// The BMC names the device it was given but not whether the override is set (IPMI's
    /// valid bit clear, with no other flag): persistence and mode are not confirmed.
    DeviceOnly,
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
    /// The BMC accepted a virtual medium and then reported another state of the slot: empty
    /// (`got` is `None`) or holding another image. Messages show URLs by their origin only.
    #[error(
        "the BMC accepted the virtual medium {} for {slot} but reports {}",
        vmedia::redact_url(.wanted),
        .got.as_deref().map_or("no medium inserted".to_owned(), |g| format!("the medium {}", vmedia::redact_url(g)))
    )]
    MediaNotInserted {
        slot: String,
        wanted: String,
        got: Option<String>,
    },
    /// The BMC accepted an eject and the slot still holds a medium.
    #[error(
        "the BMC accepted the eject of {slot} but still reports the medium {}",
        vmedia::redact_url(.got)
    )]
    MediaNotEjected { slot: String, got: String },
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
                | BmcError::MediaNotInserted { .. }
                | BmcError::MediaNotEjected { .. }
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
    /// The machine's hardware health (see [`health`]). A BMC without health resources answers
    /// [`Health::unknown`], not an error.
    fn health(&self) -> BoxFuture<'_, Result<Health>> {
        Box::pin(async { Ok(Health::unknown()) })
    }
    /// The BMC's event-log entries after `cursor` (a string this call returned before), at
    /// most `max`, oldest first, with the cursor to pass next time. Without a cursor: no
    /// entries, only a cursor at the log's present end (plinth does not replay a BMC's
    /// history). A BMC without an event log answers no entries, not an error.
    fn log_entries<'a>(
        &'a self,
        cursor: Option<&'a str>,
        _max: usize,
    ) -> BoxFuture<'a, Result<LogBatch>> {
        Box::pin(async move {
            Ok(LogBatch {
                entries: Vec::new(),
                cursor: cursor.unwrap_or_default().to_owned(),
            })
        })
    }
    // --- virtual media ---
    /// The BMC's virtual media slots (see [`vmedia`]), in the BMC's order. A BMC without
    /// virtual media answers [`BmcError::Unsupported`] (IPMI has no standard for it).
    fn media_slots(&self) -> BoxFuture<'_, Result<Vec<MediaSlot>>> {
        vmedia::unsupported()
    }
    /// Inserts the image at `url` into `slot` (a [`MediaSlot::id`]), write-protected; a slot
    /// holding another image is ejected first; the same image already inserted is left as it
    /// is. Read it back with [`insert_media_verified`].
    fn insert_media<'a>(&'a self, _slot: &'a str, _url: &'a str) -> BoxFuture<'a, Result<()>> {
        vmedia::unsupported()
    }
    /// Ejects whatever `slot` holds; an empty slot is left as it is.
    fn eject_media<'a>(&'a self, _slot: &'a str) -> BoxFuture<'a, Result<()>> {
        vmedia::unsupported()
    }

    // --- BIOS ---
    /// The BIOS attributes in effect (Redfish `Bios.Attributes`), typed as the BMC gives them.
    fn bios_attributes(&self) -> BoxFuture<'_, Result<BiosAttributes>> {
        Box::pin(async { Err(BmcError::Unsupported("BIOS settings".into())) })
    }
    /// The attributes waiting for the next boot (Redfish: the `@Redfish.Settings` object).
    /// Some BMCs list every attribute there, some only the changed ones: see
    /// [`bios::not_pending`]. `None`: the BMC does not show what is pending (a Redfish BMC
    /// without a settings object, which takes changes at `Bios` itself).
    fn bios_pending(&self) -> BoxFuture<'_, Result<Option<BiosAttributes>>> {
        Box::pin(async { Err(BmcError::Unsupported("BIOS settings".into())) })
    }
    /// Asks for `attrs` at the next boot (the BMC applies pending settings while the machine
    /// starts). Read back with [`Bmc::bios_pending`], and after the boot with
    /// [`Bmc::bios_attributes`].
    fn set_bios_pending<'a>(&'a self, _attrs: &'a BiosAttributes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Err(BmcError::Unsupported("BIOS settings".into())) })
    }
    /// The BMC's BIOS attribute registry, when it publishes one (`Ok(None)`: it does not).
    fn bios_registry(&self) -> BoxFuture<'_, Result<Option<bios::Registry>>> {
        Box::pin(async { Err(BmcError::Unsupported("BIOS settings".into())) })
    }

    // --- firmware ---
    /// The firmware inventory (BMC, BIOS, NICs, drives, ... with their versions).
    fn firmware_inventory(&self) -> BoxFuture<'_, Result<Vec<firmware::FirmwareItem>>> {
        Box::pin(async { Err(BmcError::Unsupported("a firmware inventory".into())) })
    }
    /// How the BMC accepts update images.
    fn update_capabilities(&self) -> BoxFuture<'_, Result<firmware::UpdateCapabilities>> {
        Box::pin(async { Err(BmcError::Unsupported("firmware updates".into())) })
    }
    /// Asks the BMC to fetch `image_url` and apply it to `targets` (inventory items' URIs;
    /// empty: the BMC decides). Returns the task to follow.
    fn simple_update<'a>(
        &'a self,
        _image_url: &'a str,
        _targets: &'a [String],
    ) -> BoxFuture<'a, Result<firmware::UpdateTask>> {
        Box::pin(async { Err(BmcError::Unsupported("SimpleUpdate".into())) })
    }
    /// Pushes `image` to the BMC (multipart HTTP push) for `targets`.
    fn multipart_update<'a>(
        &'a self,
        _image: Vec<u8>,
        _targets: &'a [String],
    ) -> BoxFuture<'a, Result<firmware::UpdateTask>> {
        Box::pin(async { Err(BmcError::Unsupported("a multipart firmware push".into())) })
    }
    /// Where an update task stands.
    fn task_status<'a>(
        &'a self,
        _task: &'a firmware::UpdateTask,
    ) -> BoxFuture<'a, Result<firmware::TaskStatus>> {
        Box::pin(async { Err(BmcError::Unsupported("update tasks".into())) })
    }

    // --- credentials ---
    /// The passwords the BMC accepts for plinth's account (issue 21, rotation).
    fn password_policy(&self) -> BoxFuture<'_, Result<PasswordPolicy>> {
        Box::pin(async { Err(BmcError::Unsupported("changing its password".into())) })
    }
    /// Sets the password of the account plinth logs in with (its username) to `new`. Many
    /// BMCs end that account's sessions: the driver is not used again after this; a driver
    /// made with the new password proves it (see `BmcTarget::with_password`).
    fn set_password<'a>(&'a self, _new: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Err(BmcError::Unsupported("changing its password".into())) })
    }

    /// Ends the session with the BMC, if the driver keeps one (BMCs allow only a few).
    /// Best effort; the driver opens a new one if it is used again.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The read-back rule: whether `got`, read right after setting `wanted`, shows the BMC took it.
///
/// - `got.device` is the device asked for: the override is set. Persistence must match, except
///   that an override kept for every boot passes when the next one was asked for (some BMCs only
///   do persistent overrides; plinth sets the disk back when it is done); a mode must match when
///   both sides name one (a BMC that does not report the mode is not held against).
/// - `got.device` is empty but the BMC names the device asked for as [`BootOverride::unconfirmed`]:
///   accepted as [`Confirmed::DeviceOnly`]. `ipmi_sim` does this for every override (it hands the
///   device to its chassis script and answers the flags byte as zero); a real BMC that keeps the
///   valid bit never does it right after a set, since plinth disables the 60-second clearing
///   first and reads back within the same second.
/// - Anything else (no override, another device, the wrong persistence or mode) is
///   [`BmcError::Reverted`]: the BMC said yes and did something else.
pub fn check_readback(wanted: BootOverride, got: BootOverride) -> Result<Confirmed> {
    let reverted = || BmcError::Reverted { wanted, got };
    match (got.device, wanted.device) {
        (Some(g), Some(w)) if g == w => {
            let mode_ok = match (wanted.mode, got.mode) {
                (Some(w), Some(g)) => w == g,
                _ => true,
            };
            let persistence_ok = got.persistent || !wanted.persistent;
            if mode_ok && persistence_ok {
                Ok(Confirmed::Override)
            } else {
                Err(reverted())
            }
        }
        (None, Some(w)) if got.unconfirmed == Some(w) => Ok(Confirmed::DeviceOnly),
        _ => Err(reverted()),
    }
}

/// Sets the boot override and reads it back: some BMCs answer success and keep (or restore)
/// the old one. Judged by [`check_readback`]; returns what was read and how much it confirmed.
pub async fn set_boot_verified(
    bmc: &dyn Bmc,
    device: BootDevice,
    persistent: bool,
    mode: Option<BootMode>,
) -> Result<(BootOverride, Confirmed)> {
    bmc.set_boot(device, persistent, mode).await?;
    let got = bmc.boot_override().await?;
    let wanted = BootOverride {
        device: Some(device),
        persistent,
        mode,
        unconfirmed: None,
    };
    check_readback(wanted, got).map(|c| (got, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(device: Option<BootDevice>, persistent: bool, mode: Option<BootMode>) -> BootOverride {
        BootOverride {
            device,
            persistent,
            mode,
            unconfirmed: None,
        }
    }

    /// Every case of the rule, written out: (asked for, read back, outcome).
    #[test]
    fn the_read_back_rule() {
        use BootDevice::*;
        use BootMode::*;
        let unconfirmed = |d| BootOverride {
            unconfirmed: Some(d),
            ..BootOverride::default()
        };
        let cases: &[(BootOverride, BootOverride, Option<Confirmed>)] = &[
            // A BMC that keeps the valid bit: the same override.
            (
                o(Some(Pxe), false, Some(Uefi)),
                o(Some(Pxe), false, Some(Uefi)),
                Some(Confirmed::Override),
            ),
            (
                o(Some(Disk), true, Some(Bios)),
                o(Some(Disk), true, Some(Bios)),
                Some(Confirmed::Override),
            ),
            // Persistent when once was asked for (sushy, some Redfish BMCs): fine.
            (
                o(Some(Pxe), false, None),
                o(Some(Pxe), true, Some(Uefi)),
                Some(Confirmed::Override),
            ),
            // Once when persistent was asked for: the next boot would lose it.
            (o(Some(Disk), true, None), o(Some(Disk), false, None), None),
            // A mode the BMC does not report, or none asked for: not held against it.
            (
                o(Some(BiosSetup), false, Some(Uefi)),
                o(Some(BiosSetup), false, None),
                Some(Confirmed::Override),
            ),
            (
                o(Some(Pxe), false, None),
                o(Some(Pxe), false, Some(Bios)),
                Some(Confirmed::Override),
            ),
            // The wrong mode, another device, or no override: reverted.
            (
                o(Some(Pxe), false, Some(Uefi)),
                o(Some(Pxe), false, Some(Bios)),
                None,
            ),
            (o(Some(Pxe), false, None), o(Some(Disk), false, None), None),
            (o(Some(Pxe), false, None), o(None, false, None), None),
            // ipmi_sim: the device without the valid bit.
            (
                o(Some(Pxe), false, Some(Uefi)),
                unconfirmed(Pxe),
                Some(Confirmed::DeviceOnly),
            ),
            (
                o(Some(Disk), true, Some(Bios)),
                unconfirmed(Disk),
                Some(Confirmed::DeviceOnly),
            ),
            // ... but another device without the valid bit is not the one asked for.
            (o(Some(Pxe), false, None), unconfirmed(Disk), None),
        ];
        for (wanted, got, outcome) in cases {
            let r = check_readback(*wanted, *got);
            match outcome {
                Some(c) => assert_eq!(r, Ok(*c), "{wanted:?} read back as {got:?}"),
                None => assert_eq!(
                    r,
                    Err(BmcError::Reverted {
                        wanted: *wanted,
                        got: *got
                    }),
                    "{wanted:?} read back as {got:?}"
                ),
            }
        }
    }
}
