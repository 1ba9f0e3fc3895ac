//! BIOS settings over Redfish (issue 21).
//!
//! - The `Bios` resource is the ComputerSystem's `Bios` link; without one the BMC does not
//!   offer BIOS settings ([`BmcError::Unsupported`]).
//! - Current values: `Bios.Attributes`. Pending values: the `Attributes` of the settings object
//!   `Bios` names in `@Redfish.Settings.SettingsObject` (usually `Bios/Settings`); a BMC without
//!   one takes changes at `Bios` itself and has nothing pending to show.
//! - A change is a PATCH of `{"Attributes": …}` at the settings object, with `If-Match` when the
//!   target has an ETag (one retry on 412/428); a BMC that refuses PATCH there (405) gets it
//!   at `Bios`.
//! - The registry: `Bios.AttributeRegistry` names it; the service's `Registries` collection has
//!   a file for it (matched by `Id` or `Registry`, or the one BIOS registry there is) whose
//!   `Location[].Uri` holds `RegistryEntries.Attributes`. Missing anywhere: `Ok(None)`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Redfish, status_error};
use crate::bios::{AttributeDef, AttributeType, BiosAttributes, Registry};
use crate::{BmcError, Result};

/// Registry files and entries read at most (a registry has a few hundred attributes).
const MAX_REGISTRY_FILES: usize = 32;
const MAX_REGISTRY_ENTRIES: usize = 4096;

fn attributes(v: &Value, path: &str) -> Result<BiosAttributes> {
    match v.get("Attributes") {
        Some(Value::Object(m)) => Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        Some(Value::Null) | None => Ok(BiosAttributes::new()),
        Some(_) => Err(BmcError::Protocol(format!(
            "{path}: Attributes is not an object"
        ))),
    }
}

fn settings_link(bios: &Value) -> Option<String> {
    bios["@Redfish.Settings"]["SettingsObject"]["@odata.id"]
        .as_str()
        .map(str::to_owned)
}

/// Every link plinth may follow from a body of the BIOS walk (a system's `Bios`, a `Bios`'s
/// settings object, a registry file's locations, a collection's members): for the fuzz target.
#[cfg(fuzzing)]
pub(super) fn links(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    out.extend(v["Bios"]["@odata.id"].as_str().map(str::to_owned));
    out.extend(settings_link(v));
    out.extend(v["Registries"]["@odata.id"].as_str().map(str::to_owned));
    for l in v["Location"].as_array().into_iter().flatten() {
        out.extend(l["Uri"].as_str().map(str::to_owned));
    }
    let _ = attributes(v, "/fuzz");
    out
}

/// The registry entries plinth understands; others are skipped.
pub(super) fn parse_registry(v: &Value) -> Registry {
    let mut out = Registry::new();
    let Some(entries) = v["RegistryEntries"]["Attributes"].as_array() else {
        return out;
    };
    for e in entries.iter().take(MAX_REGISTRY_ENTRIES) {
        let Some(name) = e["AttributeName"].as_str() else {
            continue;
        };
        let kind = match e["Type"].as_str().unwrap_or_default() {
            "Enumeration" => AttributeType::Enumeration,
            "String" => AttributeType::String,
            "Integer" => AttributeType::Integer,
            "Boolean" => AttributeType::Boolean,
            "Password" => AttributeType::Password,
            other => AttributeType::Other(other.to_owned()),
        };
        let values = e["Value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v["ValueName"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            name.to_owned(),
            AttributeDef {
                name: name.to_owned(),
                kind,
                values,
                read_only: e["ReadOnly"].as_bool().unwrap_or(false),
                min: e["LowerBound"].as_i64(),
                max: e["UpperBound"].as_i64(),
            },
        );
    }
    out
}

impl Redfish {
    async fn bios_get(&self, path: &str) -> Result<(Value, Option<String>)> {
        let (v, etag) = self.get::<Value>(path).await?;
        let etag = v["@odata.etag"].as_str().map(str::to_owned).or(etag);
        Ok((v, etag))
    }

    /// The `Bios` resource's path and body.
    async fn bios_resource(&self) -> Result<(String, Value)> {
        let path = self.system_path().await?;
        let (sys, _) = self.bios_get(&path).await?;
        let bios = sys["Bios"]["@odata.id"].as_str().ok_or_else(|| {
            BmcError::Unsupported("BIOS settings (the system has no Bios resource)".into())
        })?;
        let (v, _) = self.bios_get(bios).await?;
        Ok((bios.to_owned(), v))
    }

    pub(super) async fn do_bios_attributes(&self) -> Result<BiosAttributes> {
        let (path, v) = self.bios_resource().await?;
        attributes(&v, &path)
    }

    pub(super) async fn do_bios_pending(&self) -> Result<Option<BiosAttributes>> {
        let (_, bios) = self.bios_resource().await?;
        match settings_link(&bios) {
            Some(s) => {
                let (v, _) = self.bios_get(&s).await?;
                attributes(&v, &s).map(Some)
            }
            None => Ok(None),
        }
    }

    pub(super) async fn do_set_bios_pending(&self, attrs: &BiosAttributes) -> Result<()> {
        let (bios_path, bios) = self.bios_resource().await?;
        let body = json!({ "Attributes": attrs });
        let mut targets = vec![settings_link(&bios).unwrap_or_else(|| bios_path.clone())];
        if targets[0] != bios_path {
            targets.push(bios_path);
        }
        let mut last = None;
        for target in &targets {
            for attempt in 0..2 {
                let (_, etag) = self.bios_get(target).await?;
                let (status, _, resp) = self
                    .call(Method::PATCH, target, Some(&body), etag.as_deref())
                    .await?;
                if status.is_success() {
                    return Ok(());
                }
                if (status == StatusCode::PRECONDITION_FAILED
                    || status == StatusCode::PRECONDITION_REQUIRED)
                    && attempt == 0
                {
                    continue;
                }
                last = Some(status_error(status, &resp));
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    break; // try the next target
                }
                return Err(status_error(status, &resp));
            }
        }
        Err(last.unwrap_or_else(|| BmcError::Busy("the BIOS settings kept changing".into())))
    }

    pub(super) async fn do_bios_registry(&self) -> Result<Option<Registry>> {
        let (_, bios) = self.bios_resource().await?;
        let Some(name) = bios["AttributeRegistry"].as_str().map(str::to_owned) else {
            return Ok(None);
        };
        let (root, _) = self.bios_get("/redfish/v1").await?;
        let Some(regs) = root["Registries"]["@odata.id"].as_str() else {
            return Ok(None);
        };
        let (coll, _) = self.bios_get(regs).await?;
        let members: Vec<String> = coll["Members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["@odata.id"].as_str().map(str::to_owned))
                    .take(MAX_REGISTRY_FILES)
                    .collect()
            })
            .unwrap_or_default();
        let mut bios_files = Vec::new();
        for m in members {
            let Ok((file, _)) = self.bios_get(&m).await else {
                continue;
            };
            let id = file["Id"].as_str().unwrap_or_default();
            let registry = file["Registry"].as_str().unwrap_or_default();
            let exact = id == name || registry == name;
            if exact || id.contains("BiosAttributeRegistry") {
                bios_files.push((exact, file));
            }
        }
        // The file named exactly, else the only BIOS registry there is.
        let file = match bios_files.iter().position(|(e, _)| *e) {
            Some(i) => bios_files.swap_remove(i).1,
            None if bios_files.len() == 1 => bios_files.swap_remove(0).1,
            None => return Ok(None),
        };
        let Some(uri) = file["Location"]
            .as_array()
            .and_then(|a| a.iter().find_map(|l| l["Uri"].as_str()))
        else {
            return Ok(None);
        };
        let (reg, _) = self.bios_get(uri).await?;
        let reg = parse_registry(&reg);
        Ok((!reg.is_empty()).then_some(reg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_entries_parse() {
        let r = parse_registry(&json!({ "RegistryEntries": { "Attributes": [
            { "AttributeName": "BootMode", "Type": "Enumeration", "ReadOnly": false,
              "Value": [{ "ValueName": "Uefi" }, { "ValueName": "Bios" }] },
            { "AttributeName": "NumCores", "Type": "Integer", "LowerBound": 1, "UpperBound": 64 },
            { "AttributeName": "AdminPw", "Type": "Password" },
            { "Type": "String" },
            { "AttributeName": "Odd", "Type": "OemThing" }
        ]}}));
        assert_eq!(r.len(), 4);
        assert_eq!(r["BootMode"].values, ["Uefi", "Bios"]);
        assert_eq!(r["NumCores"].max, Some(64));
        assert_eq!(r["AdminPw"].kind, AttributeType::Password);
        assert_eq!(r["Odd"].kind, AttributeType::Other("OemThing".into()));
        assert!(parse_registry(&json!({"x": 1})).is_empty());
        assert!(attributes(&json!({"Attributes": [1]}), "/b").is_err());
    }
}
