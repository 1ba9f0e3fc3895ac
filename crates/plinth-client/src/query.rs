//! The query parameters of `/api/v1`'s lists and of an image upload, typed. (The server's own
//! parameter structs live in plinth-api, which a client must not link; these are their
//! client-side mirror, and the client's tests hold the two together against a real server.)

use chrono::{DateTime, SecondsFormat, Utc};
use plinth_types::api::ImageKind;
use plinth_types::api::JobState;
use plinth_types::{MacAddr, MachineState};
use uuid::Uuid;

/// `?k=v&...` of the pairs that have a value, each value percent-encoded; empty when none has.
pub fn encode(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| format!("{k}={}", plinth_types::percent_encode(v)))
        })
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// `GET /machines`: filters, search and a page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineFilter {
    pub state: Option<MachineState>,
    /// Rack name.
    pub rack: Option<String>,
    pub pool: Option<String>,
    pub tag: Option<String>,
    /// Hostname, MAC or serial.
    pub q: Option<String>,
    /// `ok`, `warning`, `critical` or `unknown`.
    pub health: Option<String>,
    pub limit: Option<u32>,
    /// A previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl MachineFilter {
    pub fn to_query(&self) -> String {
        encode(&[
            ("state", self.state.map(|s| s.to_string())),
            ("rack", self.rack.clone()),
            ("pool", self.pool.clone()),
            ("tag", self.tag.clone()),
            ("q", self.q.clone()),
            ("health", self.health.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor.clone()),
        ])
    }
}

/// `GET /events` and `GET /machines/{id}/events`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub since: Option<DateTime<Utc>>,
    /// Events after this id (a previous page's `last_id`).
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

impl EventFilter {
    pub fn to_query(&self) -> String {
        encode(&[
            (
                "since",
                self.since
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            ),
            ("after", self.after.map(|a| a.to_string())),
            ("limit", self.limit.map(|l| l.to_string())),
        ])
    }
}

/// `GET /events/stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFilter {
    pub machine: Option<Uuid>,
    /// Only these kinds (empty: every kind).
    pub kinds: Vec<String>,
    /// Continue after this event of the stream.
    pub after: Option<i64>,
}

impl StreamFilter {
    pub fn to_query(&self) -> String {
        encode(&[
            ("machine", self.machine.map(|m| m.to_string())),
            (
                "kind",
                (!self.kinds.is_empty()).then(|| self.kinds.join(",")),
            ),
            ("after", self.after.map(|a| a.to_string())),
        ])
    }
}

/// `GET /webhooks/{id}/deliveries`, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub state: Option<plinth_types::feed::DeliveryState>,
    /// Deliveries of events before this id.
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

impl DeliveryFilter {
    pub fn to_query(&self) -> String {
        encode(&[
            ("state", self.state.map(|s| s.as_str().to_owned())),
            ("before", self.before.map(|b| b.to_string())),
            ("limit", self.limit.map(|l| l.to_string())),
        ])
    }
}

/// `GET /jobs`, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub machine: Option<Uuid>,
    pub state: Option<JobState>,
    pub limit: Option<u32>,
    /// A previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl JobFilter {
    pub fn to_query(&self) -> String {
        encode(&[
            ("machine", self.machine.map(|m| m.to_string())),
            ("state", self.state.map(|s| s.as_str().to_owned())),
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor.clone()),
        ])
    }
}

/// `GET /leases`: live leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseFilter {
    pub subnet: Option<Uuid>,
    pub mac: Option<MacAddr>,
}

impl LeaseFilter {
    pub fn to_query(&self) -> String {
        encode(&[
            ("subnet", self.subnet.map(|s| s.to_string())),
            ("mac", self.mac.map(|m| m.to_string())),
        ])
    }
}

/// `PUT /images/{name}`: what an uploaded file is. The body is the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUpload {
    pub kind: ImageKind,
    /// `x86_64` (default), `aarch64` or `any`.
    pub arch: Option<String>,
    /// Where under the images root (default `uploads/<name>`).
    pub path: Option<String>,
    /// The file's SHA-256 (hex): the server hashes what arrives and refuses a mismatch.
    pub sha256: String,
    /// A disk image's firmware: `bios`, `uefi` or `both`.
    pub firmware: Option<String>,
}

impl ImageUpload {
    pub fn to_query(&self) -> String {
        encode(&[
            ("kind", Some(self.kind.as_str().to_owned())),
            ("arch", self.arch.clone()),
            ("path", self.path.clone()),
            ("sha256", Some(self.sha256.clone())),
            ("firmware", self.firmware.clone()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_given_values_are_sent_and_they_are_encoded() {
        assert_eq!(MachineFilter::default().to_query(), "");
        let f = MachineFilter {
            state: Some(MachineState::Ready),
            q: Some("a b&c".into()),
            limit: Some(100),
            ..Default::default()
        };
        assert_eq!(f.to_query(), "?state=ready&q=a%20b%26c&limit=100");
        let t: DateTime<Utc> = "2026-12-05T10:00:00Z".parse().unwrap();
        let e = EventFilter {
            since: Some(t),
            ..Default::default()
        };
        assert_eq!(e.to_query(), "?since=2026-12-05T10%3A00%3A00Z");
        let j = JobFilter {
            state: Some(JobState::Failed),
            ..Default::default()
        };
        assert_eq!(j.to_query(), "?state=failed");
    }
}
