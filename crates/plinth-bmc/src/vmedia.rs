//! Virtual media (issue 21): the slots a BMC offers ([`MediaSlot`]), which one plinth uses
//! for an image ([`choose_slot`]), and an insertion that is read back
//! ([`insert_media_verified`]), as every boot override is: BMCs accept a change and silently
//! do something else.
//!
//! How the lifecycle uses it (a boot by virtual media):
//! 1. [`crate::Bmc::media_slots`], then [`choose_slot_for_image`] with [`MediaType::Cd`] for
//!    an ISO;
//! 2. [`insert_media_verified`] with the image's URL (the driver ejects another image first);
//! 3. [`crate::set_boot_verified`] with [`crate::BootDevice::Cdrom`], once; a power cycle;
//! 4. when the agent has reported, [`eject_media_verified`].
//!
//! An image's URL is a secret while it is valid (whoever has it can read the image, which may
//! carry a token): [`MediaSlot`]'s `Debug` and every [`crate::BmcError`] message show only its
//! origin ([`redact_url`]).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::{Bmc, BmcError, Result};

/// What a slot can hold (Redfish `MediaTypes`; `USBStick` is [`MediaType::Usb`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaType {
    Cd,
    Dvd,
    Usb,
    Floppy,
    /// A type plinth has no name for (`BluRay`, `File`, an OEM value), as the BMC spells it.
    Other(String),
}

impl MediaType {
    /// The Redfish `MediaTypes` value, read tolerantly.
    pub fn from_redfish(s: &str) -> MediaType {
        match s {
            "CD" => MediaType::Cd,
            "DVD" => MediaType::Dvd,
            "USBStick" => MediaType::Usb,
            "Floppy" => MediaType::Floppy,
            other => MediaType::Other(other.to_owned()),
        }
    }

    /// The kinds plinth would use for an image meant for `self`, best first: an optical
    /// image goes to a CD or DVD drive, else to a USB stick (BMCs present an ISO on either);
    /// a USB image the other way round; anything else only to its own kind.
    fn classes(&self) -> Vec<Vec<MediaType>> {
        let optical = vec![MediaType::Cd, MediaType::Dvd];
        match self {
            MediaType::Cd | MediaType::Dvd => vec![optical, vec![MediaType::Usb]],
            MediaType::Usb => vec![vec![MediaType::Usb], optical],
            other => vec![vec![other.clone()]],
        }
    }
}

/// One virtual media slot as the BMC reports it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaSlot {
    /// What plinth names the slot by when it inserts or ejects: the Redfish resource path
    /// (`/redfish/v1/Managers/1/VirtualMedia/CD1`).
    pub id: String,
    /// Empty when the BMC does not say.
    pub media_types: Vec<MediaType>,
    /// A medium is in the slot (Redfish `Inserted`, or an image without it).
    pub inserted: bool,
    /// The image's URL (Redfish `Image`); `None` when empty.
    pub image: Option<String>,
    pub write_protected: Option<bool>,
    /// Redfish `ConnectedVia` (`URI`, `Applet`, `NotConnected`, ...), when reported.
    pub connected_via: Option<String>,
}

impl std::fmt::Debug for MediaSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSlot")
            .field("id", &self.id)
            .field("media_types", &self.media_types)
            .field("inserted", &self.inserted)
            .field("image", &self.image.as_deref().map(redact_url))
            .field("write_protected", &self.write_protected)
            .field("connected_via", &self.connected_via)
            .finish()
    }
}

impl MediaSlot {
    /// Holds a medium. An image the slot still names without `Inserted` (some BMCs keep the
    /// last URL after an eject) is not one.
    pub fn is_occupied(&self) -> bool {
        self.inserted
    }

    /// Holds exactly `url`, inserted.
    pub fn holds(&self, url: &str) -> bool {
        self.inserted && self.image.as_deref() == Some(url)
    }
}

/// A URL as plinth shows it: its scheme, host and port, the rest elided (the path of an
/// image URL is its secret). Text that is not a URL shows as `<image>`.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{}{port}/…",
                u.scheme(),
                u.host_str().unwrap_or_default()
            )
        }
        _ => "<image>".to_owned(),
    }
}

/// The slot plinth inserts an image of type `prefer` into. The rule, in order:
///
/// 1. A slot is a candidate when it lists a kind acceptable for `prefer` (for a CD or DVD
///    image: CD or DVD, then USB stick; for a USB image: USB, then CD or DVD; for anything
///    else: that kind only). A slot that lists no types at all is a candidate after every
///    typed one (an older BMC that does not say).
/// 2. Free slots (nothing inserted) come first, by the kind's rank, then by the
///    BMC's order.
/// 3. Only when no candidate is free, an occupied one, in the same order: inserting there
///    replaces another image (the driver ejects it first), which may be an operator's.
///
/// `None`: the BMC has no slot for this kind of image.
pub fn choose_slot(slots: &[MediaSlot], prefer: MediaType) -> Option<&MediaSlot> {
    let mut classes = prefer.classes();
    classes.push(Vec::new()); // the untyped slots, last
    for want_free in [true, false] {
        for class in &classes {
            let found = slots.iter().find(|s| {
                let fits = if class.is_empty() {
                    s.media_types.is_empty()
                } else {
                    s.media_types.iter().any(|t| class.contains(t))
                };
                fits && s.is_occupied() != want_free
            });
            if found.is_some() {
                return found;
            }
        }
    }
    None
}

/// [`choose_slot`], except that a candidate slot already holding `url` is taken first: a
/// retried insertion lands where the first one did, not in a second slot.
pub fn choose_slot_for_image<'a>(
    slots: &'a [MediaSlot],
    prefer: MediaType,
    url: &str,
) -> Option<&'a MediaSlot> {
    let fits = |s: &&MediaSlot| {
        s.media_types.is_empty()
            || prefer
                .classes()
                .iter()
                .any(|c| s.media_types.iter().any(|t| c.contains(t)))
    };
    slots
        .iter()
        .filter(fits)
        .find(|s| s.holds(url))
        .or_else(|| choose_slot(slots, prefer))
}

/// The read-back rule for an insertion: the slot is inserted and names exactly `url`.
/// Anything else (no medium, the old image, another one) is [`BmcError::MediaNotInserted`].
pub fn check_media_readback(slot_id: &str, url: &str, got: Option<&MediaSlot>) -> Result<()> {
    match got {
        Some(s) if s.holds(url) => Ok(()),
        Some(s) => Err(BmcError::MediaNotInserted {
            slot: slot_id.to_owned(),
            wanted: url.to_owned(),
            got: if s.inserted {
                Some(s.image.clone().unwrap_or_default())
            } else {
                None
            },
        }),
        None => Err(BmcError::Protocol(format!(
            "the virtual media slot {slot_id} is gone from the BMC's list"
        ))),
    }
}

/// Inserts `url` into `slot` and reads the slot back: some BMCs answer success and keep the
/// old image, or none. Judged by [`check_media_readback`]; returns the slot as read.
pub async fn insert_media_verified(bmc: &dyn Bmc, slot: &str, url: &str) -> Result<MediaSlot> {
    bmc.insert_media(slot, url).await?;
    let slots = bmc.media_slots().await?;
    let got = slots.into_iter().find(|s| s.id == slot);
    check_media_readback(slot, url, got.as_ref())?;
    // Some after the check; an error rather than a panic all the same.
    got.ok_or_else(|| BmcError::Protocol(format!("the virtual media slot {slot} is gone")))
}

/// Ejects whatever `slot` holds and reads it back: it must not be inserted, else
/// [`BmcError::MediaNotEjected`].
pub async fn eject_media_verified(bmc: &dyn Bmc, slot: &str) -> Result<MediaSlot> {
    bmc.eject_media(slot).await?;
    let slots = bmc.media_slots().await?;
    match slots.into_iter().find(|s| s.id == slot) {
        Some(s) if !s.is_occupied() => Ok(s),
        Some(s) => Err(BmcError::MediaNotEjected {
            slot: slot.to_owned(),
            got: s.image.unwrap_or_default(),
        }),
        None => Err(BmcError::Protocol(format!(
            "the virtual media slot {slot} is gone from the BMC's list"
        ))),
    }
}

/// The trait's default for a BMC without virtual media.
pub(crate) fn unsupported<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T>> {
    Box::pin(async { Err(BmcError::Unsupported("virtual media".into())) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: &str, types: &[&str], image: Option<&str>) -> MediaSlot {
        MediaSlot {
            id: id.into(),
            media_types: types.iter().map(|t| MediaType::from_redfish(t)).collect(),
            inserted: image.is_some(),
            image: image.map(str::to_owned),
            write_protected: None,
            connected_via: None,
        }
    }

    /// Every case of the rule, written out: (slots, preferred type, slot chosen).
    #[test]
    fn the_slot_rule() {
        let cd = |img| slot("cd", &["CD", "DVD"], img);
        let dvd = |img| slot("dvd", &["DVD"], img);
        let usb = |img| slot("usb", &["USBStick"], img);
        let floppy = |img| slot("floppy", &["Floppy", "USBStick"], img);
        let untyped = |img| slot("untyped", &[], img);
        let old = Some("http://10.0.0.9/old.iso");
        let cases: Vec<(Vec<MediaSlot>, MediaType, Option<&str>)> = vec![
            // An ISO: a CD drive first, whatever the BMC's order.
            (vec![usb(None), cd(None)], MediaType::Cd, Some("cd")),
            (vec![dvd(None), usb(None)], MediaType::Cd, Some("dvd")),
            // Only a USB stick (sushy's "Floppy" slot lists USBStick): it is used.
            (vec![usb(None)], MediaType::Cd, Some("usb")),
            (vec![floppy(None)], MediaType::Cd, Some("floppy")),
            // A busy CD drive and a free stick: the free stick.
            (vec![cd(old), usb(None)], MediaType::Cd, Some("usb")),
            // Everything busy: the best kind, whose image the driver ejects.
            (vec![usb(old), cd(old)], MediaType::Cd, Some("cd")),
            // A USB image the other way round.
            (vec![cd(None), usb(None)], MediaType::Usb, Some("usb")),
            (vec![cd(None), usb(old)], MediaType::Usb, Some("cd")),
            // A slot that says nothing about its kind: after every typed one.
            (vec![untyped(None), usb(None)], MediaType::Cd, Some("usb")),
            (
                vec![untyped(None), usb(old)],
                MediaType::Cd,
                Some("untyped"),
            ),
            // A floppy image goes nowhere but a floppy.
            (vec![cd(None), usb(None)], MediaType::Floppy, None),
            (vec![floppy(old)], MediaType::Floppy, Some("floppy")),
            // No slots at all.
            (vec![], MediaType::Cd, None),
            (
                vec![slot("bd", &["BluRay"], None)],
                MediaType::Other("BluRay".into()),
                Some("bd"),
            ),
            (vec![slot("bd", &["BluRay"], None)], MediaType::Cd, None),
        ];
        for (slots, prefer, want) in cases {
            let got = choose_slot(&slots, prefer.clone()).map(|s| s.id.as_str());
            assert_eq!(got, want, "{prefer:?} among {slots:?}");
        }
    }

    #[test]
    fn a_retry_takes_the_slot_that_holds_the_image() {
        let url = "http://10.0.0.1/vmedia/abc.iso";
        let slots = vec![
            slot("cd", &["CD"], None),
            slot("usb", &["USBStick"], Some(url)),
        ];
        assert_eq!(
            choose_slot_for_image(&slots, MediaType::Cd, url).map(|s| s.id.as_str()),
            Some("usb")
        );
        assert_eq!(
            choose_slot_for_image(&slots, MediaType::Cd, "http://10.0.0.1/other.iso")
                .map(|s| s.id.as_str()),
            Some("cd")
        );
    }

    #[test]
    fn the_read_back_rule_and_its_messages() {
        let url = "http://10.0.0.1:8080/vmedia/s3cr3t-token/boot.iso";
        assert!(check_media_readback("cd", url, Some(&slot("cd", &["CD"], Some(url)))).is_ok());
        // Empty, the old image, an image named but not inserted: not inserted.
        let old = "http://10.0.0.9/old.iso";
        let mut named = slot("cd", &["CD"], Some(url));
        named.inserted = false;
        for (got, shows) in [
            (slot("cd", &["CD"], None), None),
            (slot("cd", &["CD"], Some(old)), Some(old)),
            (named, None),
        ] {
            let e = check_media_readback("cd", url, Some(&got)).unwrap_err();
            assert_eq!(
                e,
                BmcError::MediaNotInserted {
                    slot: "cd".into(),
                    wanted: url.into(),
                    got: shows.map(str::to_owned)
                }
            );
            assert!(e.is_transient());
            let msg = e.to_string();
            assert!(
                !msg.contains("s3cr3t") && msg.contains("http://10.0.0.1:8080/…"),
                "{msg}"
            );
            assert!(!format!("{got:?}").contains("s3cr3t"));
        }
        assert!(matches!(
            check_media_readback("cd", url, None),
            Err(BmcError::Protocol(_))
        ));
        assert_eq!(redact_url("not a url"), "<image>");
        assert_eq!(
            redact_url("https://u:p@host.example/x?y"),
            "https://host.example/…"
        );
    }
}
