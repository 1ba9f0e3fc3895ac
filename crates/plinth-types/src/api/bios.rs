//! BIOS settings (issue 21): a machine's BIOS as plinth last read it through the BMC, a change
//! asked of it, and the named profiles pools apply on the way to `ready`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Job, Name};

/// The most attributes one change names, the longest name, and the longest string value (in
/// characters): a BIOS has a few hundred attributes, each name and value short.
pub const MAX_BIOS_ATTRIBUTES: usize = 256;
pub const MAX_BIOS_NAME: usize = 128;
pub const MAX_BIOS_STRING: usize = 1024;

/// The schema of a change's attributes: 1-256 names of letters, digits, `_ - . :`, each a
/// string, a number or a boolean.
fn attributes_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "attribute name -> value (a string, a number or a boolean), as the BMC names them",
        ))
        .min_properties(Some(1))
        .max_properties(Some(MAX_BIOS_ATTRIBUTES))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(format!("^[A-Za-z0-9_.:-]{{1,{MAX_BIOS_NAME}}}$"))),
        ))
        .additional_properties(Some(Schema::OneOf(
            OneOfBuilder::new()
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .max_length(Some(MAX_BIOS_STRING)),
                )
                .item(ObjectBuilder::new().schema_type(Type::Number))
                .item(ObjectBuilder::new().schema_type(Type::Boolean))
                .build(),
        )))
        .build()
}

/// `PATCH /machines/{id}/bios`: attributes to set at the next boot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BiosRequest {
    /// Attribute name → value (a string, an integer or a boolean), as the BMC names them.
    #[schema(schema_with = attributes_schema)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Also on a machine in use (allocated or deployed): the change reboots it.
    #[serde(default)]
    pub force: bool,
}

/// `GET /machines/{id}/bios`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineBios {
    pub machine_id: Uuid,
    /// The attributes in effect at the last read; `None`: never read (no Redfish BMC, or no
    /// job has read them yet).
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
    /// What the BMC's pending settings held at that read.
    #[schema(value_type = Option<Object>)]
    pub pending: Option<BTreeMap<String, serde_json::Value>>,
    pub read_at: Option<DateTime<Utc>>,
    /// Whether plinth knows the BMC's attribute registry (changes are checked against it).
    pub registry: bool,
    /// The BIOS profile of the machine's pool.
    pub profile: Option<String>,
    /// The latest change asked (a `bios_apply` job), with its outcome.
    pub last_apply: Option<Job>,
}

/// A named set of BIOS attributes (`GET /bios-profiles`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BiosProfile {
    pub name: String,
    #[schema(value_type = Object)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The pools whose machines get it on their way to `ready`.
    pub pools: Vec<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /bios-profiles`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BiosProfileCreate {
    #[schema(value_type = Name)]
    pub name: String,
    #[schema(schema_with = attributes_schema)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// `PUT /bios-profiles/{name}`: its attributes replaced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BiosProfileUpdate {
    #[schema(schema_with = attributes_schema)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// `PUT /pools/{name}/bios-profile`: `null` clears it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolBiosProfile {
    #[schema(value_type = Option<Name>)]
    pub profile: Option<String>,
}

/// One BIOS assignment as a person writes it (the CLI's `--set`, the web UI's form):
/// `NAME=VALUE`, the value a boolean (`true`, `false`) or an integer when it reads as one, else
/// a string; or `NAME:=JSON`, the value as written (`AssetTag:="42"`, a string of digits).
pub fn parse_bios_assignment(s: &str) -> Result<(String, serde_json::Value), String> {
    use serde_json::Value;
    let (k, v) = if let Some((k, json)) = s.split_once(":=") {
        let v: Value = serde_json::from_str(json)
            .map_err(|_| format!("{s}: the value after := is not JSON"))?;
        (k, v)
    } else if let Some((k, v)) = s.split_once('=') {
        let v = match v {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => match v.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::String(v.to_owned()),
            },
        };
        (k, v)
    } else {
        return Err(format!("{s}: NAME=VALUE or NAME:=JSON"));
    };
    Ok((k.trim().to_owned(), v))
}

/// Several assignments; a name given twice is an error.
pub fn parse_bios_assignments<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, serde_json::Value>, String> {
    let mut out = BTreeMap::new();
    for s in items {
        let (k, v) = parse_bios_assignment(s)?;
        if out.insert(k.clone(), v).is_some() {
            return Err(format!("{k} is given twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn assignments_parse() {
        assert_eq!(
            json!(
                parse_bios_assignments([
                    "BootMode=Uefi",
                    "NumCores=4",
                    "PxeEnabled=false",
                    "AssetTag:=\"42\""
                ])
                .unwrap()
            ),
            json!({"BootMode": "Uefi", "NumCores": 4, "PxeEnabled": false, "AssetTag": "42"})
        );
        assert!(parse_bios_assignments(["BootMode"]).is_err());
        assert!(parse_bios_assignments(["A=1", "A=2"]).is_err());
        assert!(parse_bios_assignments(["A:={"]).is_err());
    }
}
