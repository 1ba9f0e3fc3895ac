//! Virtual media over Redfish (issue 21; the types and rules are in [`crate::vmedia`]).
//!
//! Where the slots are: the ComputerSystem's own `VirtualMedia` collection first (Redfish
//! 2021.1 and later, sushy-tools, newer BMCs: it is this system's without doubt), then the
//! `VirtualMedia` of the managers in the system's `Links.ManagedBy` (the classic place:
//! iDRAC, iLO, most BMCs), then that of the service's first manager. The first collection
//! found is the BMC's list; its members' paths are the slots' ids. See docs/decisions.md.
//!
//! Insert: the `#VirtualMedia.InsertMedia` action with `Image`, `Inserted: true`,
//! `WriteProtected: true`, and `TransferMethod: Stream` only when the action (or its
//! `@Redfish.ActionInfo`) lists `Stream` among the allowed values; a parameter the ActionInfo
//! does not list is left out. A 400 answer to that body is tried once more with `Image` and
//! `Inserted` alone (BMCs refuse parameters they do not know). Without the action (older
//! BMCs): a PATCH of `{Image, Inserted}` with `If-Match` when the slot has an ETag. A slot
//! that holds another image is ejected first; one that already holds this image is left.
//!
//! Eject: the `#VirtualMedia.EjectMedia` action (with an empty body, which some BMCs
//! require), or a PATCH of `{Image: null, Inserted: false}`.
//!
//! Every path comes from the BMC or the caller and goes through [`Redfish::bmc_url`]: it
//! stays on the BMC's origin.

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Collection, Link, Redfish, status_error};
use crate::vmedia::{MediaSlot, MediaType};
use crate::{BmcError, Result};

/// Slots read per listing (a BMC lists two to four).
pub const MAX_SLOTS: usize = 16;

#[derive(Debug, Default, Deserialize)]
struct VirtualMedia {
    #[serde(rename = "@odata.id")]
    id: Option<String>,
    #[serde(rename = "@odata.etag")]
    etag: Option<String>,
    #[serde(rename = "MediaTypes", default)]
    media_types: Option<Vec<String>>,
    #[serde(rename = "Image")]
    image: Option<String>,
    #[serde(rename = "Inserted")]
    inserted: Option<bool>,
    #[serde(rename = "WriteProtected")]
    write_protected: Option<bool>,
    #[serde(rename = "ConnectedVia")]
    connected_via: Option<String>,
    #[serde(rename = "Actions")]
    actions: Option<MediaActions>,
}

#[derive(Debug, Default, Deserialize)]
struct MediaActions {
    #[serde(rename = "#VirtualMedia.InsertMedia")]
    insert: Option<InsertAction>,
    #[serde(rename = "#VirtualMedia.EjectMedia")]
    eject: Option<EjectAction>,
}

#[derive(Debug, Default, Deserialize)]
struct InsertAction {
    target: Option<String>,
    #[serde(rename = "@Redfish.ActionInfo")]
    action_info: Option<String>,
    #[serde(rename = "TransferMethod@Redfish.AllowableValues")]
    transfer_methods: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct EjectAction {
    target: Option<String>,
}

/// A Redfish ActionInfo: the parameters an action takes.
#[derive(Debug, Default, Deserialize)]
struct ActionInfo {
    #[serde(rename = "Parameters", default)]
    parameters: Vec<Parameter>,
}

#[derive(Debug, Default, Deserialize)]
struct Parameter {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "AllowableValues")]
    allowable: Option<Vec<String>>,
}

/// A slot as plinth reads it (sans-IO). `path` is where it was found: the id when the
/// resource names none. An empty `Image` (sushy) is no image; a BMC that omits `Inserted`
/// is taken to have inserted the image it names.
fn parse_slot(path: &str, v: &VirtualMedia) -> MediaSlot {
    let image = v.image.clone().filter(|i| !i.trim().is_empty());
    MediaSlot {
        id: v.id.clone().unwrap_or_else(|| path.to_owned()),
        media_types: v
            .media_types
            .iter()
            .flatten()
            .map(|t| MediaType::from_redfish(t))
            .collect(),
        inserted: v.inserted.unwrap_or(image.is_some()),
        image,
        write_protected: v.write_protected,
        connected_via: v.connected_via.clone(),
    }
}

/// The InsertMedia body (sans-IO): `Image` always; `Inserted` and `WriteProtected` unless an
/// ActionInfo lists parameters without them; `TransferMethod: Stream` only when allowed.
fn insert_body(url: &str, action: Option<&InsertAction>, info: Option<&ActionInfo>) -> Value {
    let listed = |name: &str| match info {
        Some(i) if !i.parameters.is_empty() => i.parameters.iter().any(|p| p.name == name),
        _ => true,
    };
    let mut body = json!({ "Image": url });
    if listed("Inserted") {
        body["Inserted"] = json!(true);
    }
    if listed("WriteProtected") {
        body["WriteProtected"] = json!(true);
    }
    let from_info = info.and_then(|i| {
        i.parameters
            .iter()
            .find(|p| p.name == "TransferMethod")
            .and_then(|p| p.allowable.clone())
    });
    let methods = action
        .and_then(|a| a.transfer_methods.clone())
        .or(from_info)
        .unwrap_or_default();
    if methods.iter().any(|m| m == "Stream") {
        body["TransferMethod"] = json!("Stream");
    }
    body
}

/// Whether `url` is an address plinth hands a BMC to fetch: http(s), a host, no user
/// information (a BMC shows the Image it was given to anyone who can read it).
fn check_image_url(url: &str) -> Result<()> {
    let ok = reqwest::Url::parse(url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some()
            && u.username().is_empty()
            && u.password().is_none()
    });
    if ok {
        Ok(())
    } else {
        Err(BmcError::Unsupported(
            "an image address that is not an http(s) URL without user information".into(),
        ))
    }
}

fn link(v: &Value, key: &str) -> Option<String> {
    v[key]["@odata.id"].as_str().map(str::to_owned)
}

impl Redfish {
    async fn media_json(&self, path: &str) -> Result<Value> {
        self.get::<Value>(path).await.map(|(v, _)| v)
    }

    /// The VirtualMedia collection's path, or `None` when the BMC has none (see the module
    /// docs for the order).
    async fn media_collection(&self) -> Result<Option<String>> {
        let system_path = self.system_path().await?;
        let system = self.media_json(&system_path).await?;
        if let Some(c) = link(&system, "VirtualMedia") {
            return Ok(Some(c));
        }
        let mut managers: Vec<String> = system["Links"]["ManagedBy"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["@odata.id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if managers.is_empty()
            && let Ok(root) = self.media_json("/redfish/v1").await
            && let Some(c) = link(&root, "Managers")
            && let Ok((c, _)) = self.get::<Collection>(&c).await
        {
            managers.extend(c.members.into_iter().take(1).map(|l| l.id));
        }
        for m in managers.iter().take(4) {
            match self.media_json(m).await {
                Ok(v) => {
                    if let Some(c) = link(&v, "VirtualMedia") {
                        return Ok(Some(c));
                    }
                }
                Err(e) => tracing::debug!(manager = %m, error = %e, "manager not readable"),
            }
        }
        Ok(None)
    }

    pub(super) async fn do_media_slots(&self) -> Result<Vec<MediaSlot>> {
        let Some(path) = self.media_collection().await? else {
            return Err(BmcError::Unsupported("virtual media".into()));
        };
        let (c, _) = self.get::<Collection>(&path).await?;
        let mut slots = Vec::new();
        for Link { id } in c.members.into_iter().take(MAX_SLOTS) {
            let (v, _) = self.get::<VirtualMedia>(&id).await?;
            slots.push(parse_slot(&id, &v));
        }
        Ok(slots)
    }

    async fn media_slot(&self, slot: &str) -> Result<(VirtualMedia, Option<String>)> {
        let (v, etag) = self.get::<VirtualMedia>(slot).await?;
        let etag = v.etag.clone().or(etag);
        Ok((v, etag))
    }

    /// A POST to an action, or a PATCH of the slot (with `If-Match`, once again on 412/428).
    async fn media_send(&self, method: Method, path: &str, body: &Value, slot: &str) -> Result<()> {
        for attempt in 0..2 {
            let etag = if method == Method::PATCH {
                self.media_slot(slot).await?.1
            } else {
                None
            };
            let (status, _, resp) = self
                .call(method.clone(), path, Some(body), etag.as_deref())
                .await?;
            if status.is_success() {
                return Ok(());
            }
            if method == Method::PATCH
                && (status == StatusCode::PRECONDITION_FAILED
                    || status == StatusCode::PRECONDITION_REQUIRED)
                && attempt == 0
            {
                continue;
            }
            return Err(status_error(status, &resp));
        }
        Err(BmcError::Busy(
            "the virtual media slot kept changing under plinth".into(),
        ))
    }

    pub(super) async fn do_eject_media(&self, slot: &str) -> Result<()> {
        let (v, _) = self.media_slot(slot).await?;
        if !parse_slot(slot, &v).is_occupied() {
            return Ok(());
        }
        self.media_eject_from(slot, &v).await
    }

    async fn media_eject_from(&self, slot: &str, v: &VirtualMedia) -> Result<()> {
        match v.actions.as_ref().and_then(|a| a.eject.as_ref()) {
            Some(a) => {
                let target = a
                    .target
                    .clone()
                    .unwrap_or_else(|| format!("{slot}/Actions/VirtualMedia.EjectMedia"));
                self.media_send(Method::POST, &target, &json!({}), slot)
                    .await
            }
            None => {
                let body = json!({ "Image": null, "Inserted": false });
                self.media_send(Method::PATCH, slot, &body, slot).await
            }
        }
    }

    pub(super) async fn do_insert_media(&self, slot: &str, url: &str) -> Result<()> {
        check_image_url(url)?;
        let (v, _) = self.media_slot(slot).await?;
        let now = parse_slot(slot, &v);
        if now.holds(url) {
            return Ok(());
        }
        if now.is_occupied() {
            tracing::info!(%slot, "ejecting another image before inserting plinth's");
            self.media_eject_from(slot, &v).await?;
        }
        let Some(action) = v.actions.as_ref().and_then(|a| a.insert.as_ref()) else {
            let body = json!({ "Image": url, "Inserted": true });
            return self.media_send(Method::PATCH, slot, &body, slot).await;
        };
        let info = match &action.action_info {
            Some(p) => match self.get::<ActionInfo>(p).await {
                Ok((i, _)) => Some(i),
                Err(e) => {
                    tracing::debug!(error = %e, "InsertMedia's ActionInfo not readable");
                    None
                }
            },
            None => None,
        };
        let target = action
            .target
            .clone()
            .unwrap_or_else(|| format!("{slot}/Actions/VirtualMedia.InsertMedia"));
        let body = insert_body(url, Some(action), info.as_ref());
        match self.media_send(Method::POST, &target, &body, slot).await {
            Err(BmcError::Rejected(why)) if body.as_object().is_some_and(|o| o.len() > 2) => {
                tracing::info!(%why, "InsertMedia refused its optional parameters: trying without");
                let minimal = json!({ "Image": url, "Inserted": true });
                self.media_send(Method::POST, &target, &minimal, slot).await
            }
            r => r,
        }
    }
}

/// For the `redfish` fuzz target: reads `bytes` as a VirtualMedia slot and an ActionInfo,
/// derives what plinth derives, and returns every path plinth would follow from them.
#[cfg(fuzzing)]
pub(super) fn fuzz_links(bytes: &[u8]) -> Vec<String> {
    let mut links = Vec::new();
    if let Ok(v) = serde_json::from_slice::<VirtualMedia>(bytes) {
        let slot = parse_slot("/redfish/v1/Managers/1/VirtualMedia/CD", &v);
        let _ = format!("{slot:?}");
        let insert = v.actions.as_ref().and_then(|a| a.insert.as_ref());
        let _ = insert_body("http://10.0.0.1/x.iso", insert, None);
        links.push(slot.id);
        if let Some(a) = &v.actions {
            links.extend(a.insert.as_ref().and_then(|i| i.target.clone()));
            links.extend(a.insert.as_ref().and_then(|i| i.action_info.clone()));
            links.extend(a.eject.as_ref().and_then(|e| e.target.clone()));
        }
    }
    if let Ok(i) = serde_json::from_slice::<ActionInfo>(bytes) {
        let _ = insert_body("http://10.0.0.1/x.iso", None, Some(&i));
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(v: Value) -> VirtualMedia {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn slots_from_real_bmcs_parse() {
        // sushy-tools' fake driver, ejected: Image "" and a Floppy slot that is a USB stick.
        let s = parse_slot(
            "/x",
            &slot(json!({
                "@odata.id": "/redfish/v1/Systems/abc/VirtualMedia/Floppy",
                "MediaTypes": ["Floppy", "USBStick"], "Image": "", "ImageName": "",
                "ConnectedVia": "URI", "Inserted": false, "WriteProtected": false,
                "Actions": { "#VirtualMedia.EjectMedia": { "target": "/e" },
                             "#VirtualMedia.InsertMedia": { "target": "/i" }, "Oem": {} }
            })),
        );
        assert_eq!(s.id, "/redfish/v1/Systems/abc/VirtualMedia/Floppy");
        assert_eq!(s.media_types, vec![MediaType::Floppy, MediaType::Usb]);
        assert!(!s.inserted && s.image.is_none() && !s.is_occupied());
        assert_eq!(s.write_protected, Some(false));
        // A BMC that keeps the last URL after an eject: named, not inserted, free.
        let s = parse_slot(
            "/p",
            &slot(json!({ "Image": "http://h/old.iso", "Inserted": false })),
        );
        assert!(!s.is_occupied() && !s.holds("http://h/old.iso"));
        // iDRAC-style: a CD with an image, Inserted, TransferMethod listed, an OEM type.
        let v = slot(json!({
            "@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD",
            "@odata.etag": "W/\"7\"",
            "MediaTypes": ["CD", "DVD", "BluRay"], "Image": "http://10.0.0.1/a.iso",
            "Inserted": true, "WriteProtected": true, "ConnectedVia": "URI",
            "TransferMethod": "Stream",
            "Actions": { "#VirtualMedia.InsertMedia": {
                "target": "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD/Actions/VirtualMedia.InsertMedia",
                "TransferMethod@Redfish.AllowableValues": ["Stream"] } }
        }));
        let s = parse_slot("/ignored", &v);
        assert!(s.holds("http://10.0.0.1/a.iso"));
        assert_eq!(
            s.media_types,
            vec![
                MediaType::Cd,
                MediaType::Dvd,
                MediaType::Other("BluRay".into())
            ]
        );
        assert_eq!(v.etag.as_deref(), Some("W/\"7\""));
        // An old BMC: no @odata.id, no Inserted, no MediaTypes, only an Image.
        let s = parse_slot(
            "/redfish/v1/Managers/1/VM/0",
            &slot(json!({ "Image": "http://h/i.iso" })),
        );
        assert_eq!(s.id, "/redfish/v1/Managers/1/VM/0");
        assert!(s.inserted && s.media_types.is_empty());
        // ... and empty, with Image null.
        let s = parse_slot("/p", &slot(json!({ "Image": null })));
        assert!(!s.is_occupied());
    }

    #[test]
    fn insert_bodies_follow_what_the_action_allows() {
        let url = "http://10.0.0.1/b.iso";
        let action = |v: Value| serde_json::from_value::<InsertAction>(v).unwrap();
        let info = |v: Value| serde_json::from_value::<ActionInfo>(v).unwrap();
        // Nothing said: no TransferMethod.
        assert_eq!(
            insert_body(url, Some(&action(json!({ "target": "/t" }))), None),
            json!({ "Image": url, "Inserted": true, "WriteProtected": true })
        );
        // Stream allowed on the action.
        assert_eq!(
            insert_body(
                url,
                Some(&action(
                    json!({ "TransferMethod@Redfish.AllowableValues": ["Upload", "Stream"] })
                )),
                None
            )["TransferMethod"],
            "Stream"
        );
        // Only Upload allowed: none sent.
        assert!(
            insert_body(
                url,
                Some(&action(
                    json!({ "TransferMethod@Redfish.AllowableValues": ["Upload"] })
                )),
                None
            )
            .get("TransferMethod")
            .is_none()
        );
        // An ActionInfo (Supermicro-style): only the listed parameters, Stream from it.
        let i = info(json!({ "Parameters": [
            { "Name": "Image", "Required": true, "DataType": "String" },
            { "Name": "Inserted", "DataType": "Boolean" },
            { "Name": "TransferMethod", "AllowableValues": ["Stream"] }
        ]}));
        assert_eq!(
            insert_body(url, Some(&action(json!({}))), Some(&i)),
            json!({ "Image": url, "Inserted": true, "TransferMethod": "Stream" })
        );
    }

    /// A boot by virtual media is the `Cdrom` override: Redfish `Cd`, read back as `Cdrom`.
    #[test]
    fn a_cd_boot_is_redfish_cd() {
        use crate::BootDevice;
        assert_eq!(super::super::target_name(BootDevice::Cdrom), "Cd");
        let b: super::super::Boot = serde_json::from_value(json!({
            "BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"
        }))
        .unwrap();
        let o = super::super::parse_override(&b);
        assert_eq!((o.device, o.persistent), (Some(BootDevice::Cdrom), false));
    }

    #[test]
    fn image_urls_are_checked() {
        assert!(check_image_url("http://10.0.0.1:8080/vmedia/x.iso").is_ok());
        assert!(check_image_url("https://plinth.example/x.iso").is_ok());
        for bad in ["ftp://h/x.iso", "http://u:p@h/x", "/x.iso", "nfs://h/x", ""] {
            assert!(
                matches!(check_image_url(bad), Err(BmcError::Unsupported(_))),
                "{bad}"
            );
        }
    }
}
