//! BIOS settings (issue 21): the attributes a BMC reports (`Bios.Attributes` in Redfish), the
//! attribute registry some BMCs publish (what each attribute may hold), and the two sans-IO
//! judges plinth needs around a change: [`check_registry`] (refuse an unknown attribute or a
//! wrong type before touching the BMC) and [`mismatches`] (which asked values did not stick:
//! BMCs accept a change and silently do something else, so plinth reads everything back).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Attribute name → value: a string (enumerations too), a number or a boolean.
pub type BiosAttributes = BTreeMap<String, Value>;

/// The most attributes one change may name, and the longest name and string value (in
/// characters, as JSON Schema counts): a BIOS has a few hundred attributes, each name and
/// value short. The API's schema says the same (plinth-types' `MAX_BIOS_*`).
pub const MAX_ATTRIBUTES: usize = 256;
pub const MAX_NAME: usize = 128;
pub const MAX_STRING: usize = 1024;

/// What an attribute may hold, from the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeType {
    /// One of `values`.
    Enumeration,
    String,
    Integer,
    Boolean,
    /// Write-only: plinth never sets or shows passwords through attributes.
    Password,
    /// A type plinth does not know: any scalar.
    Other(String),
}

/// One attribute of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeDef {
    pub name: String,
    pub kind: AttributeType,
    /// The allowed values of an enumeration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

/// The attribute registry of a BMC, by attribute name.
pub type Registry = BTreeMap<String, AttributeDef>;

/// Checks the shape of a change, with or without a registry: names and values within the
/// limits, scalars only. Returns one message per problem.
pub fn check_shape(attrs: &BiosAttributes) -> Vec<String> {
    let mut out = Vec::new();
    if attrs.is_empty() {
        out.push("no attributes given".to_owned());
    }
    if attrs.len() > MAX_ATTRIBUTES {
        out.push(format!(
            "{} attributes given, at most {MAX_ATTRIBUTES} at once",
            attrs.len()
        ));
    }
    for (k, v) in attrs {
        if k.is_empty()
            || k.len() > MAX_NAME
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        {
            out.push(format!(
                "{:?} is not an attribute name (letters, digits, _ - . :, at most {MAX_NAME})",
                k.chars().take(MAX_NAME).collect::<String>()
            ));
            continue;
        }
        match v {
            Value::String(s) if s.chars().count() > MAX_STRING => {
                out.push(format!("{k}: a value longer than {MAX_STRING} characters"))
            }
            Value::String(_) | Value::Bool(_) | Value::Number(_) => {}
            other => out.push(format!(
                "{k}: {} is not a BIOS value (a string, number or boolean)",
                kind_of(other)
            )),
        }
    }
    out
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Checks a change against the BMC's registry: every attribute known, writable, of its type,
/// an enumeration's value among its values, an integer within its bounds. One message each.
pub fn check_registry(reg: &Registry, attrs: &BiosAttributes) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in attrs {
        let Some(def) = reg.get(k) else {
            out.push(format!(
                "{k}: the BMC's attribute registry has no such attribute"
            ));
            continue;
        };
        if def.read_only {
            out.push(format!("{k}: read-only"));
            continue;
        }
        match (&def.kind, v) {
            (AttributeType::Enumeration, Value::String(s)) => {
                if !def.values.is_empty() && !def.values.iter().any(|a| a == s) {
                    out.push(format!(
                        "{k}: {s:?} is not one of {}",
                        def.values.join(", ")
                    ));
                }
            }
            (AttributeType::String, Value::String(_)) => {}
            (AttributeType::Integer, Value::Number(n)) => match n.as_i64() {
                Some(i) => {
                    if def.min.is_some_and(|m| i < m) || def.max.is_some_and(|m| i > m) {
                        out.push(format!(
                            "{k}: {i} is outside {}..={}",
                            def.min.map_or("".into(), |m| m.to_string()),
                            def.max.map_or("".into(), |m| m.to_string())
                        ));
                    }
                }
                None => out.push(format!("{k}: {n} is not an integer")),
            },
            (AttributeType::Boolean, Value::Bool(_)) => {}
            (AttributeType::Password, _) => out.push(format!(
                "{k}: a password attribute; plinth does not set those"
            )),
            (AttributeType::Other(_), _) => {}
            (kind, v) => out.push(format!("{k}: {} given, the attribute is {}", kind_of(v), {
                match kind {
                    AttributeType::Enumeration => "an enumeration (a string)",
                    AttributeType::String => "a string",
                    AttributeType::Integer => "an integer",
                    AttributeType::Boolean => "a boolean",
                    _ => "of another type",
                }
            })),
        }
    }
    out
}

/// Whether two attribute values are the same (numbers by value: `1` and `1.0`).
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// A value as a person reads it: strings without quotes.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One asked value that did not stick, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub attribute: String,
    pub asked: Value,
    /// `None`: the BMC no longer reports the attribute.
    pub reads: Option<Value>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reads {
            Some(r) => write!(
                f,
                "{}: asked {}, reads {}",
                self.attribute,
                show(&self.asked),
                show(r)
            ),
            None => write!(
                f,
                "{}: asked {}, the BMC does not report it",
                self.attribute,
                show(&self.asked)
            ),
        }
    }
}

/// The asked values that `got` does not show, by name.
pub fn mismatches(asked: &BiosAttributes, got: &BiosAttributes) -> Vec<Mismatch> {
    asked
        .iter()
        .filter(|(k, v)| !got.get(*k).is_some_and(|g| same_value(v, g)))
        .map(|(k, v)| Mismatch {
            attribute: k.clone(),
            asked: v.clone(),
            reads: got.get(k).cloned(),
        })
        .collect()
}

/// Whether a change is waiting: every asked value is either in the pending settings or
/// already in effect (a BMC may leave out of its settings object what does not change).
/// Returns the asked values neither shows.
pub fn not_pending(
    asked: &BiosAttributes,
    pending: &BiosAttributes,
    current: &BiosAttributes,
) -> Vec<Mismatch> {
    asked
        .iter()
        .filter(|(k, v)| match pending.get(*k) {
            Some(p) => !same_value(v, p),
            None => !current.get(*k).is_some_and(|c| same_value(v, c)),
        })
        .map(|(k, v)| Mismatch {
            attribute: k.clone(),
            asked: v.clone(),
            reads: pending.get(k).or(current.get(k)).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: Value) -> BiosAttributes {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn mismatches_name_each_attribute() {
        let asked = attrs(json!({"BootMode": "Uefi", "ProcTurboMode": "Enabled", "NumCores": 8}));
        let got = attrs(json!({"BootMode": "Bios", "ProcTurboMode": "Enabled", "NumCores": 8.0}));
        let m = mismatches(&asked, &got);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].to_string(), "BootMode: asked Uefi, reads Bios");
        let m = mismatches(
            &asked,
            &attrs(json!({"ProcTurboMode": "Enabled", "NumCores": 8})),
        );
        assert_eq!(
            m[0].to_string(),
            "BootMode: asked Uefi, the BMC does not report it"
        );
        // Pending: in the settings object, or already in effect.
        let pending = attrs(json!({"BootMode": "Uefi"}));
        let current = attrs(json!({"ProcTurboMode": "Enabled", "NumCores": 4}));
        let np = not_pending(&asked, &pending, &current);
        assert_eq!(np.len(), 1);
        assert_eq!(np[0].to_string(), "NumCores: asked 8, reads 4");
    }

    #[test]
    fn shape_and_registry_checks() {
        assert!(check_shape(&attrs(json!({"A": "x", "B": 1, "C": true}))).is_empty());
        let bad = check_shape(&attrs(json!({"A": [1], "bad name": 1, "N": null})));
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert_eq!(check_shape(&BiosAttributes::new()), ["no attributes given"]);
        let reg: Registry = [
            AttributeDef {
                name: "BootMode".into(),
                kind: AttributeType::Enumeration,
                values: vec!["Uefi".into(), "Bios".into()],
                read_only: false,
                min: None,
                max: None,
            },
            AttributeDef {
                name: "NumCores".into(),
                kind: AttributeType::Integer,
                values: vec![],
                read_only: false,
                min: Some(1),
                max: Some(64),
            },
            AttributeDef {
                name: "SerialNumber".into(),
                kind: AttributeType::String,
                values: vec![],
                read_only: true,
                min: None,
                max: None,
            },
        ]
        .into_iter()
        .map(|d| (d.name.clone(), d))
        .collect();
        assert!(
            check_registry(&reg, &attrs(json!({"BootMode": "Bios", "NumCores": 4}))).is_empty()
        );
        let e = check_registry(
            &reg,
            &attrs(json!({"BootMode": "Legacy", "NumCores": 65, "SerialNumber": "x", "Nope": 1})),
        );
        assert_eq!(
            e,
            [
                "BootMode: \"Legacy\" is not one of Uefi, Bios",
                "Nope: the BMC's attribute registry has no such attribute",
                "NumCores: 65 is outside 1..=64",
                "SerialNumber: read-only",
            ]
        );
        assert_eq!(
            check_registry(&reg, &attrs(json!({"NumCores": "4"}))),
            ["NumCores: a string given, the attribute is an integer"]
        );
    }
}
