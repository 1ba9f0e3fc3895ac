//! Firmware inventory and updates (issue 21): what a BMC says is installed, what ways of
//! updating it offers, and the asynchronous task an update becomes (DSP0266 §"Asynchronous
//! operations": `202 Accepted` with a `Location` to a task monitor, and a Task resource with
//! `TaskState`, `TaskStatus`, `PercentComplete` and `Messages`).
//!
//! The judges here are sans-IO: which component an inventory item is ([`classify`]), what a
//! Task says ([`parse_task`]). The Redfish walk is `redfish/firmware.rs`; IPMI has none.
//!
//! A BMC that says "done" is not believed: the caller reads the inventory again after the
//! task (and the reboot it asks for) and compares the version (plinth-core's
//! `workers::firmware`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a firmware inventory item is the firmware of, guessed from its `RelatedItem` links,
/// its id and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    Bmc,
    Bios,
    Nic,
    Drive,
    Other,
}

impl ComponentKind {
    pub const ALL: [ComponentKind; 5] = [
        ComponentKind::Bmc,
        ComponentKind::Bios,
        ComponentKind::Nic,
        ComponentKind::Drive,
        ComponentKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Bmc => "bmc",
            ComponentKind::Bios => "bios",
            ComponentKind::Nic => "nic",
            ComponentKind::Drive => "drive",
            ComponentKind::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<ComponentKind> {
        ComponentKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One item of the firmware inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareItem {
    /// The item's `Id`.
    pub id: String,
    /// Where the BMC serves it (`@odata.id`): what an update names as its target.
    pub uri: String,
    pub name: String,
    pub kind: ComponentKind,
    pub version: Option<String>,
    pub updateable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software_id: Option<String>,
}

/// How a BMC accepts an update image (its UpdateService).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCapabilities {
    /// `#UpdateService.SimpleUpdate`'s target, when the BMC has the action.
    pub simple_update: Option<String>,
    /// `TransferProtocol@Redfish.AllowableValues` (empty: the BMC does not say).
    pub transfer_protocols: Vec<String>,
    pub multipart_push_uri: Option<String>,
    pub http_push_uri: Option<String>,
}

/// An update in progress on the BMC: where to ask how it goes. Stored with the job, so that
/// plinth, restarted, asks about the same task instead of pushing the image again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateTask {
    /// The task monitor (`Location` of the 202).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    /// The Task resource (`@odata.id` of the body, or `Location` when it names a Task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The BMC finished the update within the request (no task to follow).
    #[serde(default)]
    pub immediate: bool,
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskPhase {
    Running,
    Completed,
    Failed,
}

/// What a task says now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub phase: TaskPhase,
    /// `TaskState` as the BMC wrote it.
    pub state: String,
    pub percent: Option<u8>,
    /// The task's messages (`Messages[].Message`, else their `MessageId`).
    pub messages: Vec<String>,
    /// A message asks for a reset to activate the image (`ResetRequired`,
    /// `AwaitToActivate`, or its text says reboot/reset/power cycle).
    pub needs_reboot: bool,
}

/// The component kind of an inventory item: its `RelatedItem` links first (a Manager is the
/// BMC; a NetworkAdapter a NIC; a Drive a drive; a ComputerSystem or its `Bios` the BIOS),
/// then words of its id and name.
pub fn classify(id: &str, name: &str, related: &[String]) -> ComponentKind {
    for r in related {
        let r = r.to_ascii_lowercase();
        if r.contains("/managers/") {
            return ComponentKind::Bmc;
        }
        if r.contains("/networkadapters/") || r.contains("/ethernetinterfaces/") {
            return ComponentKind::Nic;
        }
        if r.contains("/drives/") {
            return ComponentKind::Drive;
        }
        if r.ends_with("/bios") {
            return ComponentKind::Bios;
        }
    }
    let text = format!("{id} {name}").to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if has(&["bmc", "idrac", "ilo ", "ilo5", "ilo6", "xcc", "manager"]) {
        ComponentKind::Bmc
    } else if has(&["bios", "uefi", "system rom", "systemrom"]) {
        ComponentKind::Bios
    } else if has(&["nic", "network", "ethernet", "connectx", "adapter", "lom"]) {
        ComponentKind::Nic
    } else if has(&["disk", "drive", "ssd", "nvme", "hdd", "raid", "storage"]) {
        ComponentKind::Drive
    } else {
        ComponentKind::Other
    }
}

/// Reads a Task resource (or a monitor's body that is one).
pub fn parse_task(v: &Value) -> TaskStatus {
    let state = v
        .get("TaskState")
        .and_then(Value::as_str)
        .unwrap_or("Running")
        .to_owned();
    let status = v.get("TaskStatus").and_then(Value::as_str).unwrap_or("OK");
    let percent = v
        .get("PercentComplete")
        .and_then(Value::as_u64)
        .map(|p| p.min(100) as u8);
    let mut messages = Vec::new();
    let mut needs_reboot = false;
    if let Some(ms) = v.get("Messages").and_then(Value::as_array) {
        for m in ms.iter().take(64) {
            let id = m.get("MessageId").and_then(Value::as_str).unwrap_or("");
            let text = m.get("Message").and_then(Value::as_str).unwrap_or(id);
            if id.ends_with("ResetRequired")
                || id.ends_with("AwaitToActivate")
                || id.contains("RestartRequired")
            {
                needs_reboot = true;
            }
            let low = text.to_ascii_lowercase();
            if ["reboot", "reset", "power cycle", "restart"]
                .iter()
                .any(|w| low.contains(w))
                && !low.contains("no reboot")
            {
                needs_reboot = true;
            }
            if !text.is_empty() {
                messages.push(text.chars().take(512).collect());
            }
        }
    }
    let phase = match state.as_str() {
        "Completed" if status == "Critical" => TaskPhase::Failed,
        "Completed" => TaskPhase::Completed,
        "Killed" | "Exception" | "Cancelled" => TaskPhase::Failed,
        _ => TaskPhase::Running,
    };
    TaskStatus {
        phase,
        state,
        percent,
        messages,
        needs_reboot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn components_are_recognised() {
        use ComponentKind::*;
        let cases: &[(&str, &str, &[&str], ComponentKind)] = &[
            ("BMC", "Manager firmware", &[], Bmc),
            (
                "Installed-25227-6.10.30.00",
                "Integrated Dell Remote Access Controller",
                &["/redfish/v1/Managers/iDRAC.Embedded.1"],
                Bmc,
            ),
            ("Current-159-2.19.1__BIOS.Setup.1-1", "BIOS", &[], Bios),
            ("1", "System ROM", &[], Bios),
            ("bios", "x", &["/redfish/v1/Systems/1/Bios"], Bios),
            ("NIC.Slot.3", "Mellanox ConnectX-6", &[], Nic),
            ("5", "y", &["/redfish/v1/Chassis/1/NetworkAdapters/1"], Nic),
            ("Disk.Bay.0", "SSD 480GB", &[], Drive),
            (
                "6",
                "z",
                &["/redfish/v1/Systems/1/Storage/1/Drives/0"],
                Drive,
            ),
            ("CPLD", "System CPLD", &[], Other),
        ];
        for (id, name, related, want) in cases {
            let related: Vec<String> = related.iter().map(|s| s.to_string()).collect();
            assert_eq!(classify(id, name, &related), *want, "{id} {name}");
        }
        for k in ComponentKind::ALL {
            assert_eq!(ComponentKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ComponentKind::parse("BIOS"), None);
    }

    #[test]
    fn tasks_are_read() {
        let t = parse_task(&json!({
            "TaskState": "Running", "TaskStatus": "OK", "PercentComplete": 40,
            "Messages": [{"MessageId": "Update.1.1.TransferringToComponent", "Message": "Transferring image."}]
        }));
        assert_eq!(
            (t.phase, t.percent, t.needs_reboot),
            (TaskPhase::Running, Some(40), false)
        );
        let t = parse_task(&json!({
            "TaskState": "Completed", "TaskStatus": "OK",
            "Messages": [{"MessageId": "Base.1.8.ResetRequired"}]
        }));
        assert_eq!((t.phase, t.needs_reboot), (TaskPhase::Completed, true));
        assert_eq!(t.messages, vec!["Base.1.8.ResetRequired".to_owned()]);
        let t = parse_task(&json!({ "TaskState": "Completed", "TaskStatus": "Critical" }));
        assert_eq!(t.phase, TaskPhase::Failed);
        let t = parse_task(
            &json!({ "TaskState": "Exception", "Messages": [{"Message": "Image verification failed."}] }),
        );
        assert_eq!(t.phase, TaskPhase::Failed);
        assert_eq!(t.messages, vec!["Image verification failed.".to_owned()]);
        // A vendor's state plinth does not know: still running (the caller's deadline ends it).
        assert_eq!(
            parse_task(&json!({ "TaskState": "Verifying" })).phase,
            TaskPhase::Running
        );
        assert_eq!(
            parse_task(&json!({ "PercentComplete": 250 })).percent,
            Some(100)
        );
    }
}
