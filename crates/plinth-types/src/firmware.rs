//! The API's firmware types (issue 21): a machine's firmware inventory, what a catalog image
//! installs, update requests and fleet rollouts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The components plinth tells apart in a firmware inventory.
pub const COMPONENTS: [&str; 5] = ["bmc", "bios", "nic", "drive", "other"];

/// One item of a machine's firmware inventory, as its BMC reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FirmwareItem {
    pub id: String,
    /// Where the BMC serves the item (what an update targets).
    pub uri: String,
    pub name: String,
    /// `bmc`, `bios`, `nic`, `drive` or `other` (guessed from the BMC's links, id and name).
    pub kind: String,
    pub version: Option<String>,
    pub updateable: bool,
    #[serde(default)]
    pub software_id: Option<String>,
}

/// `GET /machines/{id}/firmware`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FirmwareInventory {
    pub machine_id: Uuid,
    /// Empty until read (at inspection, after an update, or `POST .../firmware/read`).
    pub items: Vec<FirmwareItem>,
    pub read_at: Option<DateTime<Utc>>,
}

/// `PUT /firmware/images/{name}`: what a catalog image of kind `firmware` installs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirmwareImageDescribe {
    /// `bmc`, `bios`, `nic`, `drive` or `other`.
    #[schema(pattern = "^(bmc|bios|nic|drive|other)$")]
    pub component: String,
    /// The version the BMC reports once the image is installed (letters, digits, `.`, `_`,
    /// `+`, `:`, `-`; at most 64).
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._+:-]{0,63}$")]
    pub version: String,
}

/// A firmware image of the catalog with what it installs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FirmwareImage {
    pub image_id: Uuid,
    pub name: String,
    pub component: String,
    pub version: String,
    pub size: u64,
    pub sha256: String,
}

/// How the image reaches the BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdateMethod {
    /// SimpleUpdate when the BMC has it and plinth has a URL for it to fetch from
    /// (`boot.public_url`), else the multipart push.
    Auto,
    /// The BMC fetches the image from plinth (`SimpleUpdate`, a per-job URL).
    Simple,
    /// plinth pushes the image (`MultipartHttpPushUri`, or `HttpPushUri`).
    Push,
}

/// `POST /machines/{id}/firmware`: update one component from a catalog image. Allowed in
/// `ready` and in maintenance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirmwareUpdateRequest {
    /// A catalog image of kind `firmware`, described (component and version).
    pub image: String,
    #[serde(default)]
    pub method: Option<UpdateMethod>,
}

/// `POST /firmware/rollouts`: one image to many machines: the listed ones, a rack's, or a
/// pool's (exactly one of the three).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub image: String,
    #[serde(default)]
    pub machines: Option<Vec<Uuid>>,
    /// A rack's name.
    #[serde(default)]
    pub rack: Option<String>,
    #[serde(default)]
    pub pool: Option<String>,
    /// Machines updating at once per rack (default 1).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_per_rack: Option<u32>,
}

/// One machine of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutMachine {
    pub machine_id: Uuid,
    pub hostname: Option<String>,
    pub rack_id: Option<Uuid>,
    /// `pending`, `running`, `succeeded`, `failed` or `skipped` (the rollout stopped first).
    pub state: String,
    pub job_id: Option<Uuid>,
    pub error: Option<String>,
}

/// A rollout and its progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    pub id: Uuid,
    pub image: String,
    pub max_per_rack: u32,
    /// `running`, `succeeded`, `failed` (stopped at the first failure) or `cancelled`.
    pub state: String,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub machines: Vec<RolloutMachine>,
}
