//! Hardware health as a BMC reports it (issue 20): an overall status and the components that
//! are not OK. The BMC drivers produce it, the power sync stores it on the machine's BMC, the
//! API shows it and allocation reads it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How healthy: ordered from best to worst, so that the worst of several is their `max`,
/// except that [`HealthStatus::Unknown`] (nothing read) ranks below `Ok`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The BMC reports nothing plinth can read (no health resources, or not polled yet).
    Unknown,
    Ok,
    Warning,
    Critical,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "unknown",
            HealthStatus::Ok => "ok",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<HealthStatus> {
        Some(match s {
            "unknown" => HealthStatus::Unknown,
            "ok" => HealthStatus::Ok,
            "warning" => HealthStatus::Warning,
            "critical" => HealthStatus::Critical,
            _ => return None,
        })
    }

    /// A Redfish `Status.Health` value (`OK`, `Warning`, `Critical`); anything else is unknown.
    pub fn from_redfish(s: &str) -> HealthStatus {
        match s {
            "OK" | "Ok" | "ok" => HealthStatus::Ok,
            "Warning" => HealthStatus::Warning,
            "Critical" => HealthStatus::Critical,
            _ => HealthStatus::Unknown,
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One part of the machine that is not OK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthComponent {
    /// `system`, `chassis`, `temperature`, `fan`, `power_supply`, `voltage`, `sensor`, `drive`,
    /// `power`, `cooling`.
    pub kind: String,
    /// As the BMC names it (`CPU1 Temp`, `Fan 3`, `PSU 2`).
    pub name: String,
    pub status: HealthStatus,
    /// Why, in words (a reading against its threshold, the BMC's state).
    pub reason: String,
}

/// What the BMC last said about the machine's health, and when plinth read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MachineHealth {
    pub status: HealthStatus,
    /// The components that are not OK, worst first.
    pub components: Vec<HealthComponent>,
    pub checked_at: DateTime<Utc>,
}

/// A one-line reason for a status: the worst components, named.
pub fn summarize(components: &[HealthComponent]) -> String {
    let mut parts: Vec<String> = components
        .iter()
        .take(3)
        .map(|c| format!("{}: {}", c.name, c.reason))
        .collect();
    if components.len() > 3 {
        parts.push(format!("and {} more", components.len() - 3));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_order_and_round_trip() {
        use HealthStatus::*;
        assert!(Unknown < Ok && Ok < Warning && Warning < Critical);
        for s in [Unknown, Ok, Warning, Critical] {
            assert_eq!(HealthStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(HealthStatus::parse("bad"), None);
        assert_eq!(HealthStatus::from_redfish("Critical"), Critical);
        assert_eq!(HealthStatus::from_redfish("Degraded"), Unknown);
    }
}
