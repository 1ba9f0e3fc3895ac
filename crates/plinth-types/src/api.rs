//! Request and response bodies of the REST API (`/api/v1`).
//!
//! Requests reject unknown fields, so a typo is an error rather than a silently ignored
//! setting. The OpenAPI document is generated from these types.

use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{MacAddr, MachineState, Role};

mod bios;
pub use bios::{
    BiosProfile, BiosProfileCreate, BiosProfileUpdate, BiosRequest, MAX_BIOS_ATTRIBUTES,
    MAX_BIOS_NAME, MAX_BIOS_STRING, MachineBios, PoolBiosProfile, parse_bios_assignment,
    parse_bios_assignments,
};

/// For PATCH bodies: absent → `None` (leave alone), `null` → `Some(None)` (clear),
/// a value → `Some(Some(v))` (set).
fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Schema-only string types: the rules plinth-core's validation enforces (crates/plinth-core/src/
/// validate.rs and its callers), said once in the OpenAPI document as named schemas, so that a
/// client generated from it refuses what plinth would. Lengths count bytes on the server and
/// characters in JSON Schema: the same for ASCII.
macro_rules! string_schema {
    ($(#[doc = $doc:literal])+ $name:ident { pattern: $pat:expr $(, min: $min:literal)? $(, max: $max:literal)?, example: $ex:literal $(,)? }) => {
        $(#[doc = $doc])+
        pub struct $name;

        impl $name {
            /// The pattern (ECMA 262, as JSON Schema has it).
            pub const PATTERN: &'static str = $pat;
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some(concat!($($doc, "\n"),+).trim().replace("\n ", "\n")))
                    .pattern(Some(Self::PATTERN))
                    $(.min_length(Some($min)))?
                    $(.max_length(Some($max)))?
                    .examples([$ex])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

string_schema! {
    /// A rack or pool name: 1-63 letters, digits, `.`, `_` or `-`, starting with a letter or digit.
    Name { pattern: PAT_NAME, example: "r12" }
}
string_schema! {
    /// A tag: 1-63 letters, digits, `.`, `_`, `-`, `:` or `=`, starting with a letter or digit.
    Tag { pattern: PAT_TAG, example: "gpu" }
}
string_schema! {
    /// A token name: 1-128 letters, digits, `.`, `_`, `-` or `@`, starting with a letter or digit.
    TokenName { pattern: PAT_TOKEN_NAME, example: "ci@build" }
}
string_schema! {
    /// An image name: 1-128 letters, digits, `.`, `_` or `-`, starting with a letter or digit.
    ImageName { pattern: PAT_IMAGE_NAME, example: "debian-12" }
}
string_schema! {
    /// A DNS name (RFC 1123): labels of letters, digits and `-` separated by `.`; stored lower-case.
    Hostname { pattern: PAT_HOSTNAME, max: 253, example: "node-01" }
}
string_schema! {
    /// 1-128 printable characters (no control characters).
    Label { pattern: PAT_PRINTABLE, min: 1, max: 128, example: "ams1" }
}
string_schema! {
    /// A BMC's address: `host` or `host:port` (an IPv4 address, `[IPv6]` or a DNS name); for
    /// Redfish also `https://host[:port]` (or `http://` with `plain_http`). At most 255.
    BmcAddress { pattern: PAT_BMC_ADDRESS, max: 255, example: "10.1.0.21" }
}
string_schema! {
    /// An IPMI endpoint: `host` or `host:port` (an IPv4 address, `[IPv6]` or a DNS name; UDP
    /// 623 unless named). At most 255.
    IpmiAddress { pattern: PAT_IPMI_ADDRESS, max: 255, example: "10.1.0.21:623" }
}
string_schema! {
    /// A BMC user name: 1-64 printable characters.
    BmcUsername { pattern: PAT_PRINTABLE, min: 1, max: 64, example: "root" }
}
string_schema! {
    /// An IPv4 address a NIC can have: not 0.0.0.0, 255.255.255.255, loopback or multicast.
    HostIpv4 { pattern: PAT_HOST_IPV4, example: "10.0.0.21" }
}
string_schema! {
    /// A TFTP file name or an http(s):// URL: 1-255 printable ASCII characters without spaces or `..`.
    BootFile { pattern: PAT_BOOT_FILE, example: "ipxe.efi" }
}
string_schema! {
    /// SHA-256 as 64 hexadecimal digits.
    Sha256 { pattern: PAT_SHA256, example: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" }
}
string_schema! {
    /// An IPv4 network in CIDR notation, its host bits zero, prefix length 8-30.
    Cidr { pattern: PAT_CIDR, example: "10.20.0.0/24" }
}
string_schema! {
    /// A file under the images root: a relative path of `/`-separated components, none of them
    /// empty, `.` or `..`, without backslashes; at most 255.
    ImagePath { pattern: PAT_IMAGE_PATH, min: 1, max: 255, example: "uploads/debian-12.raw" }
}
string_schema! {
    /// An image's architecture: `x86_64`, `aarch64` or `any`.
    ImageArch { pattern: "^(x86_64|aarch64|any)$", example: "x86_64" }
}
string_schema! {
    /// A disk image's firmware: `bios`, `uefi` or `both`.
    ImageFirmware { pattern: "^(bios|uefi|both)$", example: "uefi" }
}

/// An IPv4 address in dotted-decimal notation (no leading zeros).
pub struct Ipv4;

impl utoipa::PartialSchema for Ipv4 {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4)))
            .description(Some(
                "An IPv4 address in dotted-decimal notation (no leading zeros).",
            ))
            .pattern(Some(PAT_IPV4))
            .examples(["10.20.0.1"])
            .into()
    }
}

impl utoipa::ToSchema for Ipv4 {}

const PAT_IPV4: &str = r"^(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}$";

const PAT_NAME: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";
const PAT_TAG: &str = r"^[A-Za-z0-9][A-Za-z0-9._:=-]{0,62}$";
const PAT_TOKEN_NAME: &str = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$";
const PAT_IMAGE_NAME: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";
const PAT_PRINTABLE: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";
const PAT_HOSTNAME: &str = r#"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"#;
const PAT_BMC_ADDRESS: &str = r#"^(https?://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,7}:|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}|:((:[0-9A-Fa-f]{1,4}){1,7}|:)|::([Ff]{4}(:0{1,4})?:)?(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})\])(:\+?0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?/?|([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,7}:|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}|:((:[0-9A-Fa-f]{1,4}){1,7}|:)|::([Ff]{4}(:0{1,4})?:)?(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})\])(:\+?0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?)$"#;
const PAT_IPMI_ADDRESS: &str = r#"^(([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,7}:|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}|:((:[0-9A-Fa-f]{1,4}){1,7}|:)|::([Ff]{4}(:0{1,4})?:)?(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})\])(:\+?0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?)$"#;
const PAT_HOST_IPV4: &str = r#"^(?!0\.0\.0\.0$|255\.255\.255\.255$)(25[0-5]|24[0-9]|22[0-3]|2[01][0-9]|1[3-9][0-9]|12[89]|12[0-6]|1[01][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}$"#;
const PAT_BOOT_FILE: &str = r"^[ \t\n\r]*(?!.*\.\.)[!-~]{1,255}[ \t\n\r]*$";
const PAT_SHA256: &str = r"^[ \t\n\r]*[0-9A-Fa-f]{64}[ \t\n\r]*$";
const PAT_IMAGE_PATH: &str = r"^(?!\.{1,2}(/|$)|.*/\.{1,2}(/|$))[^/\\\x00]+(/[^/\\\x00]+)*$";
const PAT_CIDR: &str = r#"^[ \t\n\r]*(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}/\+?0*(8|9|1[0-9]|2[0-9]|30)[ \t\n\r]*$"#;

// ---------------------------------------------------------------- racks

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RackCreate {
    /// Unique name, e.g. `r12`.
    #[schema(value_type = Name)]
    pub name: String,
    #[schema(value_type = Option<Label>)]
    pub site: Option<String>,
    #[schema(value_type = Option<Label>)]
    pub room: Option<String>,
    #[schema(value_type = Option<Label>)]
    pub row: Option<String>,
    /// Usable height in rack units.
    #[schema(minimum = 1, maximum = 100)]
    pub height_u: i32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RackPatch {
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Label>)]
    pub site: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Label>)]
    pub room: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Label>)]
    pub row: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub height_u: Option<i32>,
    /// How the rack's machines boot the ramdisk, unless a machine says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_method: Option<BootMethod>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rack {
    pub id: Uuid,
    pub name: String,
    pub site: Option<String>,
    pub room: Option<String>,
    pub row: Option<String>,
    pub height_u: i32,
    /// Machines currently mounted in the rack.
    pub machine_count: i64,
    /// Rack units occupied by those machines.
    pub used_u: i64,
    /// How the rack's machines boot the ramdisk, unless a machine says otherwise.
    #[serde(default)]
    pub boot_method: BootMethod,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// ---------------------------------------------------------------- machines

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BmcProtocol {
    Redfish,
    Ipmi,
}

impl BmcProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            BmcProtocol::Redfish => "redfish",
            BmcProtocol::Ipmi => "ipmi",
        }
    }
}

impl std::str::FromStr for BmcProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "redfish" => Ok(BmcProtocol::Redfish),
            "ipmi" => Ok(BmcProtocol::Ipmi),
            _ => Err(format!(
                "unknown BMC protocol {s:?}: expected redfish or ipmi"
            )),
        }
    }
}

/// How a machine boots plinth's ramdisk: by the network (PXE, iPXE, UEFI HTTP) or from a
/// per-boot ISO its BMC attaches as virtual media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BootMethod {
    #[default]
    Network,
    VirtualMedia,
}

impl BootMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            BootMethod::Network => "network",
            BootMethod::VirtualMedia => "virtual_media",
        }
    }
}

impl std::str::FromStr for BootMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "network" => Ok(BootMethod::Network),
            "virtual_media" => Ok(BootMethod::VirtualMedia),
            _ => Err(format!(
                "unknown boot method {s:?} (network, virtual_media)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" => Ok(Arch::X86_64),
            "aarch64" => Ok(Arch::Aarch64),
            _ => Err(format!(
                "unknown architecture {s:?}: expected x86_64 or aarch64"
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub mac: MacAddr,
    /// A reserved IPv4 address: DHCP always hands this NIC exactly this address.
    #[schema(value_type = Option<HostIpv4>)]
    pub ipv4: Option<Ipv4Addr>,
    /// Boot this NIC from the network. When no NIC says, the first one does.
    pub pxe: Option<bool>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcSpec {
    pub protocol: BmcProtocol,
    /// `host` or `host:port`; for Redfish also `https://host[:port]` (`http://` for emulators).
    #[schema(value_type = BmcAddress)]
    pub address: String,
    #[schema(value_type = BmcUsername)]
    pub username: String,
    /// Stored encrypted; never returned. 1-256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    pub password: String,
    pub verify_tls: Option<bool>,
    /// A Redfish address `http://...`: allowed only with this set (the password crosses the
    /// network in clear; emulators, or a BMC network the operator accepts that on).
    #[serde(default)]
    pub plain_http: Option<bool>,
}

impl std::fmt::Debug for BmcSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcSpec")
            .field("protocol", &self.protocol)
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("verify_tls", &self.verify_tls)
            .field("plain_http", &self.plain_http)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineCreate {
    #[schema(value_type = Option<Hostname>)]
    pub hostname: Option<String>,
    /// Rack name (a rack that exists; with `rack_unit`).
    pub rack: Option<String>,
    /// Lowest rack unit the machine occupies (1 = bottom; with `rack`).
    #[schema(minimum = 1)]
    pub rack_unit: Option<i32>,
    /// Height in rack units (default 1).
    #[schema(minimum = 1, maximum = 100)]
    pub size_u: Option<i32>,
    /// Default `default`.
    #[schema(value_type = Option<Name>)]
    pub pool: Option<String>,
    #[schema(value_type = Option<Vec<Tag>>, max_items = 64)]
    pub tags: Option<Vec<String>>,
    pub arch: Option<Arch>,
    /// At least one; each MAC once.
    #[schema(min_items = 1)]
    pub nics: Vec<NicSpec>,
    pub bmc: Option<BmcSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachinePatch {
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Hostname>)]
    pub hostname: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Tag>>, max_items = 64)]
    pub tags: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Name>)]
    pub pool: Option<String>,
    /// Rack name; `null` takes the machine out of its rack (then omit rack_unit).
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub rack: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub rack_unit: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub size_u: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// A new BMC (replaces the old one); `null` removes it.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<BmcSpec>)]
    pub bmc: Option<Option<BmcSpec>>,
    /// Per-machine boot file override (a TFTP file name or an http:// URL); `null` restores the default.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<BootFile>)]
    pub boot_file: Option<Option<String>>,
    /// How the machine boots the ramdisk (`network`, `virtual_media`); `null`: its rack's.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_method: Option<Option<BootMethod>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Nic {
    pub mac: MacAddr,
    #[schema(value_type = Option<Ipv4>)]
    pub ipv4: Option<Ipv4Addr>,
    pub pxe: bool,
}

/// A machine's BMC as the API shows it: never with the password.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BmcInfo {
    pub protocol: BmcProtocol,
    /// Absent for clients (see docs/api.md, roles).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    pub verify_tls: bool,
    /// Reached over plain http:// (the BMC's opt-in): its password crosses the network in clear.
    #[serde(default)]
    pub plain_http: bool,
    /// The power state plinth last read from the BMC (`on`, `off`, `powering_on`,
    /// `powering_off`), and when.
    pub power_state: Option<String>,
    pub power_checked_at: Option<DateTime<Utc>>,
    /// `None` until plinth has talked to the BMC; false after repeated failures.
    pub reachable: Option<bool>,
    /// Why the last call failed, when it did.
    pub last_error: Option<String>,
    /// What the BMC reports about the machine: manufacturer, model, serial, uuid, macs.
    #[schema(value_type = Option<Object>)]
    pub identity: Option<serde_json::Value>,
    /// Hardware health as the BMC last reported it (issue 20); absent until read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::MachineHealth>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    pub id: Uuid,
    pub hostname: Option<String>,
    pub rack: Option<String>,
    pub rack_unit: Option<i32>,
    pub size_u: i32,
    pub pool: String,
    pub tags: Vec<String>,
    pub arch: Option<Arch>,
    /// Hardware facts from the last inspection (an [`InspectionReport`]), or `{}`.
    #[schema(value_type = Object)]
    pub facts: serde_json::Value,
    pub state: MachineState,
    /// Increases with every state or maintenance change; send it in `If-Match`.
    pub state_version: i64,
    pub state_changed_at: DateTime<Utc>,
    pub state_reason: Option<String>,
    pub maintenance: bool,
    pub maintenance_reason: Option<String>,
    pub allocation_id: Option<Uuid>,
    pub nics: Vec<Nic>,
    pub bmc: Option<BmcInfo>,
    /// Boot file handed to this machine's PXE firmware instead of the default for its architecture.
    pub boot_file: Option<String>,
    /// Client architecture (DHCP option 93) from the machine's last PXE request.
    pub pxe_arch: Option<i32>,
    /// Client UUID (DHCP option 97) from the machine's last PXE request.
    pub pxe_uuid: Option<Uuid>,
    /// How the machine boots the ramdisk: its own `boot_method_setting`, else its rack's, else
    /// `network`.
    #[serde(default)]
    pub boot_method: BootMethod,
    /// The machine's own boot method; `null`: its rack's.
    #[serde(default)]
    pub boot_method_setting: Option<BootMethod>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachinePage {
    pub machines: Vec<Machine>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why: recorded in the machine's state_reason and its event (at most 1024 bytes).
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
    /// Admins only, with a reason: run an agent outcome (`inspect_complete`, `clean_complete`,
    /// `deploy_complete`, `decommission_complete`) without the agent's report.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// `POST /machines/{id}/actions/deploy`: what to write to the allocated machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// A `disk-image` of the image catalog (required; checked after the machine's state).
    #[serde(default)]
    #[schema(required = true, value_type = ImageName)]
    pub image: String,
    /// Which disk of the machine's facts gets the image; default: the smallest that holds it.
    pub root_device: Option<RootDeviceHint>,
    /// The OS's hostname (cloud-init `local-hostname`); default: the machine's.
    #[schema(value_type = Option<Hostname>)]
    pub hostname: Option<String>,
    /// cloud-init user data, as given (at most 64 KiB).
    #[schema(max_length = 65536)]
    pub user_data: Option<String>,
    /// At most 64, each one public key line (`ssh-ed25519 AAAA... comment`).
    #[schema(max_items = 64)]
    pub ssh_authorized_keys: Option<Vec<String>>,
    /// cloud-init network-config (version 1 or 2 YAML), as given (at most 64 KiB).
    #[schema(max_length = 65536)]
    pub network_config: Option<String>,
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
}

/// A disk of the machine's facts: by name, by serial, or the smallest / largest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RootDeviceHint {
    pub name: Option<String>,
    pub serial: Option<String>,
    pub size: Option<DiskSize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskSize {
    Smallest,
    Largest,
}

/// A machine's deployment as the API shows it. Its tenant's data (the instance id, which is
/// the key of the metadata endpoint, the user data, network config and SSH keys) is shown to
/// the allocation's client, operators and admins; viewers see that there is a deployment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub image: String,
    pub root_device: String,
    /// `None` for viewers.
    pub instance_id: Option<Uuid>,
    pub hostname: Option<String>,
    pub has_user_data: bool,
    pub ssh_authorized_keys: usize,
    pub has_network_config: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// The tenant's data; `None` for viewers.
    pub data: Option<DeploymentData>,
}

/// What a deployment's tenant gave it (see [`Deployment`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentData {
    pub user_data: Option<String>,
    pub network_config: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
}

/// `GET /machines/{id}/deployment/manifest`: what the deploy agent writes, and where from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployManifest {
    pub image: String,
    /// The image file's path on plinth's HTTP server (under `/boot/`).
    pub url_path: String,
    /// SHA-256 of the file as served (compressed, if it is).
    pub sha256: String,
    pub size: u64,
    pub compression: Compression,
    /// Bytes once written (uncompressed), when the catalog knows.
    pub raw_size: Option<u64>,
    /// SHA-256 of the bytes once written (uncompressed), when the catalog knows: the agent
    /// reads the disk back and compares.
    #[serde(default)]
    pub raw_sha256: Option<String>,
    /// The disk to write, a name of the machine's facts (`/dev/<name>`).
    pub root_device: String,
    pub seed: NoCloudSeed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Size of the partition the deploy agent adds after the image for the cloud-init seed.
pub const SEED_PARTITION_BYTES: u64 = 4 << 20;
/// Room a disk needs beyond the written image: the seed partition, its 1 MiB alignment, and a
/// GPT's backup table at the disk's end.
pub const SEED_RESERVE_BYTES: u64 = SEED_PARTITION_BYTES + (2 << 20);

/// The cloud-init NoCloud seed the agent writes beside the image (a `cidata` filesystem).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NoCloudSeed {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: Option<String>,
}

/// `POST /machines/{id}/deploy-progress`: how far the image is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployProgress {
    pub bytes_written: u64,
    pub total_bytes: Option<u64>,
    pub bytes_per_sec: u64,
}

/// `POST /machines/{id}/deploy-report`: the deploy agent's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployReport {
    /// `complete` → deployed (boot from disk, power cycle); `failed` → deploy_failed.
    pub result: CleanResult,
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
    pub bytes_written: Option<u64>,
    /// SHA-256 of what was written, as the agent read it back.
    pub sha256: Option<String>,
}

// ---------------------------------------------------------------- inspection

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuFacts {
    #[schema(max_length = 256)]
    pub model: String,
    #[schema(minimum = 1)]
    pub cores: u32,
    /// At least `cores`.
    #[schema(minimum = 1)]
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskFacts {
    pub name: String,
    #[schema(maximum = 9223372036854775807_u64)]
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub rotational: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicFacts {
    pub name: String,
    pub mac: MacAddr,
    pub speed_mbps: Option<u32>,
    /// Carrier seen when the agent looked.
    #[serde(default)]
    pub link: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemFacts {
    pub vendor: String,
    pub product: String,
    #[schema(max_length = 256)]
    pub serial: String,
    pub uuid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    Bios,
    Uefi,
}

/// What the inspection agent found on a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InspectionReport {
    pub cpu: CpuFacts,
    #[schema(minimum = 1, maximum = 9223372036854775807_u64)]
    pub memory_mib: u64,
    pub disks: Vec<DiskFacts>,
    pub nics: Vec<NicFacts>,
    pub system: SystemFacts,
    pub firmware: Firmware,
    pub arch: Arch,
}

/// `POST /machines/{id}/clean`: what the cleaning agent did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanReport {
    /// `complete` moves the machine to `ready`, `failed` to `clean_failed`.
    pub result: CleanResult,
    /// Why it failed, for the machine's state reason (only with `failed`): at most 1024 bytes,
    /// no control characters but newlines.
    #[schema(pattern = r"^[^\x00-\x09\x0b-\x1f\x7f-\x9f]*$", max_length = 1024)]
    pub reason: Option<String>,
    /// At most 256.
    #[schema(max_items = 256)]
    pub disks: Vec<WipedDisk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CleanResult {
    Complete,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WipedDisk {
    /// 1-64 printable characters.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", min_length = 1, max_length = 64)]
    pub name: String,
    /// The disk's serial number, as the agent read it: how plinth matches the report to the
    /// disks of the machine's facts.
    #[serde(default)]
    pub serial: Option<String>,
    #[schema(maximum = 9223372036854775807_u64)]
    pub size_bytes: u64,
    /// Bytes erased: the first and last MiB at least (quick), the whole disk otherwise.
    pub zeroed_bytes: u64,
    /// Whether the whole disk was erased.
    pub full: bool,
    /// The method used (the one asked for, or `full` when a secure or discard wipe fell back).
    /// Absent from agents older than wipe methods: taken as `quick`.
    #[serde(default)]
    pub method: Option<WipeMethod>,
    /// How the wipe was checked (samples read back, the NVMe command that erased it, a
    /// fallback and why).
    #[serde(default)]
    pub verification: Option<String>,
    /// Why this disk could not be wiped.
    pub error: Option<String>,
}

/// How the cleaning agent wipes a machine's disks: chosen per pool (`clean.method` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WipeMethod {
    /// Partition tables and every partition's first and last MiB: the data between stays.
    Quick,
    /// The whole device discarded (secure discard where it has one), then read back as zeros.
    Discard,
    /// The drive's own erase (NVMe Format with user data erase); else the fallback.
    Secure,
    /// Every byte overwritten with zeros, then samples read back.
    Full,
}

impl WipeMethod {
    pub const ALL: [WipeMethod; 4] = [
        WipeMethod::Quick,
        WipeMethod::Discard,
        WipeMethod::Secure,
        WipeMethod::Full,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WipeMethod::Quick => "quick",
            WipeMethod::Discard => "discard",
            WipeMethod::Secure => "secure",
            WipeMethod::Full => "full",
        }
    }

    /// How much of a disk's old data it leaves unreadable: quick 0 (the data between the
    /// partitions' ends stays), discard 1 (the device's own promise, checked on samples),
    /// secure and full 2 (every block). A report satisfies a method when each disk's method is
    /// at least as strong.
    pub fn strength(self) -> u8 {
        match self {
            WipeMethod::Quick => 0,
            WipeMethod::Discard => 1,
            WipeMethod::Secure | WipeMethod::Full => 2,
        }
    }
}

impl std::fmt::Display for WipeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WipeMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WipeMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown wipe method {s:?}: expected quick, discard, secure or full")
            })
    }
}

/// What a `secure` (or `discard`) wipe does on a disk that has no such erase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WipeFallback {
    /// Overwrite the disk instead (`full`).
    Full,
    /// Fail the clean: the machine goes to clean_failed.
    Fail,
}

/// `GET /machines/{id}/clean-plan`: how the cleaning agent is to wipe this machine's disks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CleanPlan {
    pub method: WipeMethod,
    pub fallback: WipeFallback,
    /// The disks of the machine's facts: the report must account for each.
    pub disks: Vec<DiskFacts>,
}

/// A pool's settings (`GET /pools`, `PUT /pools/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub name: String,
    /// Set for this pool; `None`: the default (`clean.method`).
    pub wipe_method: Option<WipeMethod>,
    /// What its machines are wiped with.
    pub effective_wipe_method: WipeMethod,
    /// Machines in the pool.
    pub machines: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolUpdate {
    /// `null`: back to the default.
    pub wipe_method: Option<WipeMethod>,
}

// ---------------------------------------------------------------- allocations

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationRequest {
    /// How many machines (default 1). All or nothing.
    #[schema(minimum = 1, maximum = 1000)]
    pub count: Option<u32>,
    pub arch: Option<Arch>,
    /// Minimum logical CPUs (inspected `cpu.threads`).
    pub min_cpus: Option<u32>,
    #[schema(maximum = 9223372036854775807_u64)]
    pub min_memory_mib: Option<u64>,
    /// Minimum size of the machine's largest disk, in GiB.
    #[schema(maximum = 8589934591_u64)]
    pub min_disk_gib: Option<u64>,
    /// The machine must carry all of these tags.
    #[schema(value_type = Option<Vec<Tag>>, max_items = 64)]
    pub tags: Option<Vec<String>>,
    #[schema(value_type = Option<Name>)]
    pub pool: Option<String>,
    /// Rack name.
    pub rack: Option<String>,
    /// Which machines' hardware health is acceptable (see docs/api.md, allocations): by
    /// default every machine but a `critical` one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthRequirement>,
}

/// An allocation's health requirement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthRequirement {
    /// The default: anything but `critical` (`ok`, `warning`, and `unknown`: no BMC, or its
    /// health not read yet).
    #[default]
    NotCritical,
    /// Only machines whose BMC reports them `ok`.
    Ok,
    /// Any machine, `critical` ones too (to allocate a machine for its repair, say).
    Any,
}

impl HealthRequirement {
    /// The stored healths a machine may have.
    pub fn allowed(self) -> &'static [&'static str] {
        match self {
            HealthRequirement::NotCritical => &["ok", "warning", "unknown"],
            HealthRequirement::Ok => &["ok"],
            HealthRequirement::Any => &["ok", "warning", "unknown", "critical"],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    pub id: Uuid,
    /// Name of the token that made it.
    pub owner: String,
    /// What was asked for.
    #[schema(value_type = AllocationRequest)]
    pub request: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    pub machines: Vec<Machine>,
}

// ---------------------------------------------------------------- events

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Name of the token (or `system`, or `cli:...`) that caused it.
    pub actor: String,
    pub machine_id: Option<Uuid>,
    pub kind: String,
    pub from_state: Option<MachineState>,
    pub to_state: Option<MachineState>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Pass as `after` to continue.
    pub last_id: Option<i64>,
}

// ---------------------------------------------------------------- tokens

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    #[schema(value_type = TokenName)]
    pub name: String,
    pub role: Role,
    /// Seconds until the token expires (at least 60, at most ten years); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 60, maximum = 316224000)]
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it stops working; none: never.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Returned once when a token is made: the secret is not stored and cannot be shown again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token: TokenInfo,
    pub secret: String,
}

// ---------------------------------------------------------------- errors

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_state: Option<MachineState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_distinguishes_absent_null_and_value() {
        let p: MachinePatch = serde_json::from_str(r#"{"hostname": null}"#).unwrap();
        assert_eq!(p.hostname, Some(None));
        let p: MachinePatch = serde_json::from_str(r#"{"hostname": "n1"}"#).unwrap();
        assert_eq!(p.hostname, Some(Some("n1".into())));
        let p: MachinePatch = serde_json::from_str("{}").unwrap();
        assert_eq!(p.hostname, None);
    }

    #[test]
    fn requests_reject_unknown_fields() {
        let e =
            serde_json::from_str::<MachineCreate>(r#"{"nics": [], "hostnme": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `hostnme`"), "{e}");
    }

    #[test]
    fn bmc_debug_hides_password() {
        let b = BmcSpec {
            protocol: BmcProtocol::Ipmi,
            address: "10.0.0.1".into(),
            username: "admin".into(),
            password: "hunter2".into(),
            verify_tls: None,
            plain_http: None,
        };
        assert!(!format!("{b:?}").contains("hunter2"));
    }
}

// ---------------------------------------------------------------- subnets and leases

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressRange {
    #[schema(value_type = Ipv4)]
    pub start: Ipv4Addr,
    #[schema(value_type = Ipv4)]
    pub end: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubnetCreate {
    /// Network in CIDR notation, e.g. `10.20.0.0/24`.
    #[schema(value_type = Cidr)]
    pub cidr: String,
    /// The dynamic pool: addresses DHCP may hand to clients without a reservation.
    pub ranges: Vec<AddressRange>,
    #[schema(value_type = Option<Ipv4>)]
    pub router: Option<Ipv4Addr>,
    #[schema(value_type = Option<Vec<Ipv4>>)]
    pub dns_servers: Option<Vec<Ipv4Addr>>,
    #[schema(value_type = Option<Hostname>)]
    pub domain: Option<String>,
    /// Seconds (default 3600), one minute to one year.
    #[schema(minimum = 60, maximum = 31536000)]
    pub lease_time: Option<u32>,
    /// Where clients on this subnet fetch boot files (TFTP/HTTP); default: the DHCP config's boot_server.
    #[schema(value_type = Option<Ipv4>)]
    pub boot_server: Option<Ipv4Addr>,
    /// Relay agent addresses (giaddr) that serve this subnet.
    #[schema(value_type = Option<Vec<Ipv4>>)]
    pub relay_addresses: Option<Vec<Ipv4Addr>>,
    /// Also serve packets relayed from any giaddr inside this subnet (default false: only the
    /// listed relays; a giaddr can be forged by anyone on a segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_any_in_cidr: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubnetPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<AddressRange>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Ipv4>)]
    pub router: Option<Option<Ipv4Addr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Ipv4>>)]
    pub dns_servers: Option<Vec<Ipv4Addr>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Hostname>)]
    pub domain: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 60, maximum = 31536000)]
    pub lease_time: Option<u32>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Ipv4>)]
    pub boot_server: Option<Option<Ipv4Addr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Ipv4>>)]
    pub relay_addresses: Option<Vec<Ipv4Addr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_any_in_cidr: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Subnet {
    pub id: Uuid,
    pub cidr: String,
    pub ranges: Vec<AddressRange>,
    #[schema(value_type = Option<Ipv4>)]
    pub router: Option<Ipv4Addr>,
    #[schema(value_type = Vec<Ipv4>)]
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_time: u32,
    #[schema(value_type = Option<Ipv4>)]
    pub boot_server: Option<Ipv4Addr>,
    #[schema(value_type = Vec<Ipv4>)]
    pub relay_addresses: Vec<Ipv4Addr>,
    /// Whether packets relayed from any giaddr inside the subnet are served.
    pub relay_any_in_cidr: bool,
    /// Addresses in the dynamic pool.
    pub pool_size: i64,
    /// Leases offered or bound and not expired.
    pub active_leases: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    Offered,
    Bound,
    Declined,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
            LeaseState::Declined => "declined",
        }
    }
}

impl std::str::FromStr for LeaseState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "offered" => LeaseState::Offered,
            "bound" => LeaseState::Bound,
            "declined" => LeaseState::Declined,
            other => {
                return Err(format!(
                    "unknown lease state {other:?} (offered, bound, declined)"
                ));
            }
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    #[schema(value_type = Ipv4)]
    pub address: Ipv4Addr,
    pub subnet_id: Uuid,
    pub state: LeaseState,
    /// As the client sent it (a multicast address too).
    #[schema(value_type = Option<String>)]
    pub mac: Option<MacAddr>,
    pub hostname: Option<String>,
    pub expires_at: DateTime<Utc>,
    /// The inventory machine behind the MAC, if any.
    pub machine_id: Option<Uuid>,
}

// ---------------------------------------------------------------- images

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    Ipxe,
    Kernel,
    Initrd,
    Rootfs,
    DiskImage,
    /// A BMC firmware image (issue 21); what it installs is said with
    /// `PUT /firmware/images/{name}`.
    Firmware,
}

impl ImageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Ipxe => "ipxe",
            ImageKind::Kernel => "kernel",
            ImageKind::Initrd => "initrd",
            ImageKind::Rootfs => "rootfs",
            ImageKind::DiskImage => "disk-image",
            ImageKind::Firmware => "firmware",
        }
    }
}

impl std::str::FromStr for ImageKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ipxe" => ImageKind::Ipxe,
            "kernel" => ImageKind::Kernel,
            "initrd" => ImageKind::Initrd,
            "rootfs" => ImageKind::Rootfs,
            "disk-image" => ImageKind::DiskImage,
            "firmware" => ImageKind::Firmware,
            other => {
                return Err(format!(
                    "unknown image kind {other:?} (ipxe, kernel, initrd, rootfs, disk-image, firmware)"
                ));
            }
        })
    }
}

/// Register a file that is already under the images root.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRegister {
    /// Unique name: letters, digits, `.`, `_`, `-`; at most 128.
    #[schema(value_type = ImageName)]
    pub name: String,
    pub kind: ImageKind,
    /// `x86_64`, `aarch64` or `any` (default `x86_64`).
    #[schema(value_type = Option<ImageArch>)]
    pub arch: Option<String>,
    /// Path relative to the images root.
    #[schema(value_type = ImagePath)]
    pub path: String,
    /// Expected SHA-256 (hex); the file is hashed and must match.
    #[schema(value_type = Option<Sha256>)]
    pub sha256: Option<String>,
    /// For a disk image: the firmware it boots with, `bios`, `uefi` or `both`.
    #[serde(default)]
    #[schema(value_type = Option<ImageFirmware>)]
    pub firmware: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: Uuid,
    pub name: String,
    pub kind: ImageKind,
    pub arch: String,
    /// Relative to the images root; served at `/boot/<path>`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// `registered` or `uploaded`.
    pub source: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// A disk image's firmware: `bios`, `uefi` or `both` (null: not said).
    pub firmware: Option<String>,
    /// A disk image's size once written (decompressed); null for other kinds.
    pub raw_size: Option<u64>,
    /// SHA-256 of a disk image once written (decompressed); null for other kinds and for
    /// images registered before plinth recorded it.
    #[serde(default)]
    pub raw_sha256: Option<String>,
}

// ---------------------------------------------------------------- BMC jobs

/// `POST /machines/{id}/power`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerOp {
    On,
    /// Graceful (ACPI) unless `force`.
    Off,
    /// Off then on; on for a machine that is off.
    Cycle,
    /// Hard reset of a running machine.
    Reset,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    pub action: PowerOp,
    /// With `off`: cut the power instead of asking the OS to shut down.
    pub force: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BootTarget {
    Pxe,
    Disk,
    BiosSetup,
    Cdrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FirmwareMode {
    Bios,
    Uefi,
}

/// `POST /machines/{id}/boot-device`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootDeviceRequest {
    pub device: BootTarget,
    /// Every boot rather than the next one only (default false).
    pub persistent: Option<bool>,
    /// BIOS or UEFI; omitted: as the BMC has it.
    pub mode: Option<FirmwareMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// Not run: an earlier job of the same action failed.
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => {
                return Err(format!(
                    "unknown job state {s:?}: expected queued, running, succeeded, failed or cancelled"
                ));
            }
        })
    }
}

/// A BMC action, durable in the database.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub machine_id: Uuid,
    /// `power`, `boot_device` or `identify` (read identity and check the credentials).
    pub kind: String,
    /// What was asked: `{action, force}` or `{device, persistent, mode}`.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: i32,
    pub max_attempts: i32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// What the BMC answered, for jobs that read something.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Who asked (a person, a client, or `system` for lifecycle work).
    pub requested_by: String,
    /// Jobs queued by one lifecycle action share a chain; a failure cancels the rest.
    pub chain: Option<Uuid>,
    /// A queued job waits until then (backoff after a transient failure).
    pub not_before: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get older jobs; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The IPMI endpoint of a Redfish BMC's serial console (`PUT /machines/{id}/bmc/console`):
/// where the BMC also speaks IPMI, its Serial over LAN is reached there. The BMC's
/// credentials are used unless the endpoint has its own (then both username and password).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleEndpoint {
    /// `host` or `host:port` (UDP 623 unless named).
    #[schema(value_type = IpmiAddress)]
    pub address: String,
    #[serde(default)]
    #[schema(value_type = Option<BmcUsername>)]
    pub username: Option<String>,
    /// Stored encrypted; never returned. 1-256 bytes; only with `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub password: Option<String>,
}

impl std::fmt::Debug for ConsoleEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleEndpoint")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A machine's console as plinth can reach it (`GET /machines/{id}/console/status`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleInfo {
    /// Where the console is reached: the IPMI BMC, or the endpoint recorded for a Redfish BMC
    /// (absent for clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Why plinth cannot open the console, when it cannot.
    pub unavailable: Option<String>,
    /// The names of the viewers attached through this plinth instance.
    pub viewers: Vec<String>,
    /// The size of the recording in bytes.
    pub log_bytes: i64,
}
