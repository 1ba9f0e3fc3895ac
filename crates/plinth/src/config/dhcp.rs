//! `[dhcp]`: the DHCP server (or ProxyDHCP), checked into plinth-dhcp's server config.

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Interfaces to serve (names); plinth listens on no other.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// `server` (addresses and boot) or `proxy` (boot only, beside another DHCP server).
    #[serde(default = "default_dhcp_mode")]
    pub mode: String,
    /// `boot` (network-boot unknown PXE clients) or `record` (only record them as discovered).
    #[serde(default = "default_unknown")]
    pub unknown_machines: String,
    /// The address clients use for TFTP and HTTP (next-server); required when enabled.
    pub boot_server: Option<std::net::Ipv4Addr>,
    /// Base of HTTP boot URLs; default `http://<boot_server>:<boot.listen port>`.
    pub boot_url: Option<String>,
    #[serde(default = "default_bios_binary")]
    pub bios_binary: String,
    /// `ipxe.efi` or `snponly.efi`.
    #[serde(default = "default_efi_binary")]
    pub efi_binary: String,
    pub arm64_binary: Option<String>,
    /// Seconds an OFFER holds its address.
    #[serde(default = "default_offer_timeout")]
    pub offer_timeout: u32,
    /// Seconds a DECLINEd address stays out of the pool.
    #[serde(default = "default_quarantine")]
    pub decline_quarantine: u32,
    /// Packets accepted per client MAC per second.
    #[serde(default = "default_client_rate")]
    pub client_rate_limit: u32,
    /// New clients (MACs not heard for 10 minutes) accepted per second in all; 0: no limit.
    #[serde(default = "default_new_client_rate")]
    pub new_client_rate: u32,
}

pub(crate) fn default_dhcp_mode() -> String {
    "server".into()
}

pub(crate) fn default_unknown() -> String {
    "boot".into()
}

pub(crate) fn default_bios_binary() -> String {
    "undionly.kpxe".into()
}

pub(crate) fn default_efi_binary() -> String {
    "ipxe.efi".into()
}

pub(crate) fn default_offer_timeout() -> u32 {
    60
}

pub(crate) fn default_quarantine() -> u32 {
    3600
}

pub(crate) fn default_new_client_rate() -> u32 {
    1000
}

pub(crate) fn default_client_rate() -> u32 {
    50
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            enabled: false,
            interfaces: Vec::new(),
            mode: default_dhcp_mode(),
            unknown_machines: default_unknown(),
            boot_server: None,
            boot_url: None,
            bios_binary: default_bios_binary(),
            efi_binary: default_efi_binary(),
            arm64_binary: None,
            offer_timeout: default_offer_timeout(),
            decline_quarantine: default_quarantine(),
            client_rate_limit: default_client_rate(),
            new_client_rate: default_new_client_rate(),
        }
    }
}

impl DhcpConfig {
    /// The unknown-machine policy the DHCP and boot script paths share.
    pub(crate) fn unknown_policy(&self) -> anyhow::Result<plinth_core::dhcp::UnknownPolicy> {
        use plinth_core::dhcp::UnknownPolicy;
        match self.unknown_machines.as_str() {
            "boot" => Ok(UnknownPolicy::Boot),
            "record" => Ok(UnknownPolicy::Record),
            other => bail!("dhcp.unknown_machines must be \"boot\" or \"record\", not {other:?}"),
        }
    }

    /// The DHCP server's configuration, checked; `None` when DHCP is disabled.
    pub fn server_config(
        &self,
        http_port: u16,
        public_url: Option<&str>,
    ) -> anyhow::Result<Option<plinth_dhcp::server::Config>> {
        use plinth_core::dhcp::{BootConfig, LeaseTimers};
        use plinth_dhcp::server::Mode;
        if !self.enabled {
            return Ok(None);
        }
        if self.interfaces.is_empty() {
            bail!("dhcp.interfaces must name at least one interface when dhcp.enabled is true");
        }
        let mode = match self.mode.as_str() {
            "server" => Mode::Server,
            "proxy" => Mode::Proxy,
            other => bail!("dhcp.mode must be \"server\" or \"proxy\", not {other:?}"),
        };
        let unknown_machines = self.unknown_policy()?;
        if !matches!(self.efi_binary.as_str(), "ipxe.efi" | "snponly.efi") {
            tracing::warn!(efi_binary = %self.efi_binary, "dhcp.efi_binary is neither ipxe.efi nor snponly.efi");
        }
        let boot_server = self
            .boot_server
            .context("dhcp.boot_server is required when dhcp.enabled is true")?;
        if !(10..=86_400).contains(&self.offer_timeout) {
            bail!("dhcp.offer_timeout must be between 10 and 86400 seconds");
        }
        Ok(Some(plinth_dhcp::server::Config {
            interfaces: self.interfaces.clone(),
            mode,
            boot_server,
            timers: LeaseTimers {
                offer_secs: self.offer_timeout,
                quarantine_secs: self.decline_quarantine,
            },
            boot: BootConfig {
                bios_binary: self.bios_binary.clone(),
                efi_binary: self.efi_binary.clone(),
                arm64_binary: self.arm64_binary.clone(),
                http_base: self
                    .boot_url
                    .clone()
                    .or_else(|| public_url.map(str::to_owned)),
                http_port,
                unknown_machines,
            },
            max_in_flight: 1024,
            per_client_rate: self.client_rate_limit.max(1),
            new_client_rate: self.new_client_rate,
        }))
    }
}
