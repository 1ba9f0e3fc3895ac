//! BMC discovery's API types (issue 21, part 4): `POST /api/v1/bmc/scans`, `GET
//! /api/v1/bmc/scans[/{id}]`. A result names the factory credential that logged in by its user
//! name only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /bmc/scans`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcScanRequest {
    /// The addresses to probe, e.g. `10.1.0.0/24` (at most 1024 addresses); nothing else is
    /// ever contacted.
    pub cidr: String,
    /// TCP ports probed for Redfish (HTTPS, then HTTP); default `[443]`.
    #[serde(default)]
    pub redfish_ports: Option<Vec<u16>>,
    /// UDP ports probed for IPMI; default `[623]`.
    #[serde(default)]
    pub ipmi_ports: Option<Vec<u16>>,
    /// Addresses started per second, at most (default `bmc.scan_rate`).
    #[serde(default)]
    pub rate: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BmcScanResult {
    /// How plinth would reach it: a Redfish base URL, or `ip:port` for IPMI.
    pub address: String,
    /// `redfish` or `ipmi`.
    pub protocol: String,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<Uuid>,
    pub macs: Vec<String>,
    /// The user name of the factory credential that logged in (never its password).
    pub credential: Option<String>,
    /// The discovered machine this BMC was attached to (and enrolled), when a MAC matched.
    pub machine_id: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BmcScan {
    pub id: Uuid,
    pub cidr: String,
    pub redfish_ports: Vec<u16>,
    pub ipmi_ports: Vec<u16>,
    pub rate: u32,
    pub addresses: u32,
    /// `queued`, `running`, `done`, `failed`.
    pub state: String,
    pub requested_by: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub results: Vec<BmcScanResult>,
}
