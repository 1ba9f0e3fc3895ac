//! The API types of the event stream and of webhooks (`/api/v1/events/stream`,
//! `/api/v1/webhooks`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The most kinds a stream or a webhook may name.
pub const MAX_KINDS: usize = 32;

/// Whether `k` can be an event kind: lowercase letters, digits and `_`, 1 to 64 characters.
pub fn valid_kind(k: &str) -> bool {
    (1..=64).contains(&k.len())
        && k.starts_with(|c: char| c.is_ascii_lowercase())
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A new webhook.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookCreate {
    /// Where events are POSTed: an `http` or `https` URL.
    #[schema(max_length = 2048)]
    pub url: String,
    /// The HMAC key the signatures are made with (16 to 512 characters); absent: plinth
    /// makes one, returned once in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 16, max_length = 512)]
    pub secret: Option<String>,
    /// Only these event kinds; absent: every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
}

/// A webhook as listed. Its secret is never shown again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    /// Only these event kinds; none: every kind.
    pub kinds: Option<Vec<String>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Deliveries not made yet.
    pub pending: i64,
    /// Deliveries given up after failing for too long.
    pub dead: i64,
}

/// Returned once when a webhook is made, with its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookCreated {
    pub webhook: Webhook,
    pub secret: String,
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "dead" => Some(DeliveryState::Dead),
            _ => None,
        }
    }
}

/// One event's delivery to one webhook.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub event_id: i64,
    pub machine_id: Option<Uuid>,
    pub kind: String,
    pub state: DeliveryState,
    pub attempts: i32,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: DateTime<Utc>,
    /// The receiver's last HTTP status, if it answered.
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        for k in ["boot", "state_changed", "bmc_job_failed", "a1"] {
            assert!(valid_kind(k), "{k}");
        }
        for k in ["", "Boot", "1boot", "boot-x", "boot x", &"a".repeat(65)] {
            assert!(!valid_kind(k), "{k}");
        }
    }
}
