//! `[dhcp]`: the DHCP server (or ProxyDHCP). Its keys deserialize straight into plinth-dhcp's
//! server config and plinth-core's lease timers and boot files (with those crates' defaults);
//! this module checks the values and adds the boot URL's port, which comes from the listeners.

use std::net::Ipv4Addr;

use anyhow::bail;
use serde::{Deserialize, Deserializer};

use super::section::{Section, Switch};

#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub enabled: bool,
    /// Base of HTTP boot URLs; default `boot.public_url`, else
    /// `http://<boot_server>:<boot.listen port>`.
    pub boot_url: Option<String>,
    /// New clients' DISCOVERs in large pools answered from the instance's client view
    /// (plinth-core's `dhcp::view`); false: every DISCOVER goes to the database.
    pub client_view: bool,
    pub server: plinth_dhcp::server::Config,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            enabled: false,
            boot_url: None,
            client_view: ClientView::default().client_view,
            server: plinth_dhcp::server::Config::default(),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BootUrl {
    boot_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ClientView {
    client_view: bool,
}

impl Default for ClientView {
    fn default() -> Self {
        ClientView { client_view: true }
    }
}

impl<'de> Deserialize<'de> for DhcpConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut s = Section::read("dhcp", d)?;
        let Switch { enabled } = s.part()?;
        let BootUrl { boot_url } = s.part()?;
        let ClientView { client_view } = s.part()?;
        let mut server: plinth_dhcp::server::Config = s.part()?;
        server.timers = s.part()?;
        server.boot = s.part()?;
        s.finish()?;
        Ok(DhcpConfig {
            enabled,
            boot_url,
            client_view,
            server,
        })
    }
}

impl DhcpConfig {
    /// The address clients use for TFTP and HTTP (next-server), when configured.
    pub fn boot_server(&self) -> Option<Ipv4Addr> {
        Some(self.server.boot_server).filter(|ip| !ip.is_unspecified())
    }

    /// The DHCP server's configuration, checked; `None` when DHCP is disabled.
    pub fn server_config(
        &self,
        http_port: u16,
        public_url: Option<&str>,
    ) -> anyhow::Result<Option<plinth_dhcp::server::Config>> {
        if !self.enabled {
            return Ok(None);
        }
        let mut c = self.server.clone();
        if c.interfaces.is_empty() {
            bail!("dhcp.interfaces must name at least one interface when dhcp.enabled is true");
        }
        if !matches!(c.boot.efi_binary.as_str(), "ipxe.efi" | "snponly.efi") {
            tracing::warn!(efi_binary = %c.boot.efi_binary, "dhcp.efi_binary is neither ipxe.efi nor snponly.efi");
        }
        if self.boot_server().is_none() {
            bail!("dhcp.boot_server is required when dhcp.enabled is true");
        }
        if !(10..=86_400).contains(&c.timers.offer_secs) {
            bail!("dhcp.offer_timeout must be between 10 and 86400 seconds");
        }
        if c.batch_window_ms > 1000 {
            bail!("dhcp.batch_window_ms must be between 0 and 1000 milliseconds");
        }
        if !(1..=4).contains(&c.batches_in_flight) {
            bail!("dhcp.batches_in_flight must be between 1 and 4");
        }
        c.boot.http_base = self
            .boot_url
            .clone()
            .or_else(|| public_url.map(str::to_owned));
        c.boot.http_port = http_port;
        c.per_client_rate = c.per_client_rate.max(1);
        Ok(Some(c))
    }
}
