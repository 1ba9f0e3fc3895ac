//! What the virtual-media jobs do on the BMC (issue 21): [`boot`] puts a prepared ISO in the
//! slot the BMC offers and sets the next boot to the CD, each read back; [`eject`] takes
//! plinth's ISOs out again. The ISO itself (and its agent token) is prepared by the runner
//! just before, with `App::prepare_vmedia_boot`: its URL is a secret and is never stored
//! with the job or shown in its result (only its origin).

use plinth_bmc::vmedia::{choose_slot, eject_media_verified, insert_media_verified, redact_url};
use plinth_bmc::{Bmc, BootDevice, BootMode, MediaType};
use plinth_types::api::FirmwareMode;
use serde_json::json;

use super::JobSettings;
use super::call::{Failure, call, final_failure};
use super::execute::Done;

/// The path under which plinth serves its ISOs: a slot whose image has it holds plinth's.
const ISO_PATH: &str = "/boot/vmedia/";

/// Inserts the ISO at `url` into the slot [`choose_slot`] picks (a CD or DVD drive, else a
/// USB stick), reads it back, then sets the next boot (once) to the CD and reads that back.
pub(super) async fn boot(
    bmc: &dyn Bmc,
    url: &str,
    mode: Option<FirmwareMode>,
    s: &JobSettings,
) -> std::result::Result<Done, Failure> {
    let t = s.call_timeout;
    let slots = call(t, "read virtual media", bmc.media_slots()).await?;
    let Some(slot) = choose_slot(&slots, MediaType::Cd).cloned() else {
        return Err(final_failure(
            "unsupported",
            format!(
                "the BMC offers no CD, DVD or USB virtual media slot (it lists {}): boot this machine by the network",
                slots.len()
            ),
        ));
    };
    // An eject of another image, the insert (the BMC downloads or mounts the ISO) and the
    // read-back: three calls.
    let got = call(
        t.saturating_mul(3),
        "insert virtual media",
        insert_media_verified(bmc, &slot.id, url),
    )
    .await?;
    let mode = mode.map(|m| match m {
        FirmwareMode::Bios => BootMode::Bios,
        FirmwareMode::Uefi => BootMode::Uefi,
    });
    let (boot, confirmed) = call(
        t.saturating_mul(3),
        "set boot device",
        plinth_bmc::set_boot_verified(bmc, BootDevice::Cdrom, false, mode),
    )
    .await?;
    Ok(Done {
        result: json!({
            "slot": got.id,
            "media_types": got.media_types,
            "image": redact_url(url),
            "boot_override": boot,
            "confirmed": confirmed,
        }),
        power: None,
        identity: None,
    })
}

/// Ejects every slot that holds one of plinth's ISOs (an operator's own media stay), each
/// read back empty. Nothing to eject is a success.
pub(super) async fn eject(bmc: &dyn Bmc, s: &JobSettings) -> std::result::Result<Done, Failure> {
    let t = s.call_timeout;
    let slots = call(t, "read virtual media", bmc.media_slots()).await?;
    let mut ejected = Vec::new();
    for slot in slots
        .iter()
        .filter(|s| s.is_occupied() && s.image.as_deref().is_some_and(|i| i.contains(ISO_PATH)))
    {
        call(
            t.saturating_mul(2),
            "eject virtual media",
            eject_media_verified(bmc, &slot.id),
        )
        .await?;
        ejected.push(slot.id.clone());
    }
    Ok(Done {
        result: json!({ "ejected": ejected }),
        power: None,
        identity: None,
    })
}
