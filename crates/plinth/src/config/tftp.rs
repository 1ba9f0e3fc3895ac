//! `[tftp]`: the TFTP server. Its keys deserialize straight into plinth-tftp's server config
//! (with that crate's defaults); this module only checks the values.

use anyhow::bail;
use serde::{Deserialize, Deserializer};

use super::section::{Section, Switch};
use super::*;

#[derive(Debug, Clone, Default)]
pub struct TftpConfig {
    pub enabled: bool,
    pub server: plinth_tftp::server::Config,
}

impl<'de> Deserialize<'de> for TftpConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut s = Section::read("tftp", d)?;
        let Switch { enabled } = s.part()?;
        let server = s.part()?;
        s.finish()?;
        Ok(TftpConfig { enabled, server })
    }
}

impl Config {
    /// The TFTP server's configuration, checked; `None` when TFTP is disabled.
    pub fn tftp_config(&self) -> anyhow::Result<Option<plinth_tftp::server::Config>> {
        if !self.tftp.enabled {
            return Ok(None);
        }
        let t = &self.tftp.server;
        if !(512..=65464).contains(&t.max_blksize) {
            bail!("tftp.max_blksize must be between 512 and 65464");
        }
        if !(1..=1024).contains(&t.max_windowsize) {
            bail!("tftp.max_windowsize must be between 1 and 1024");
        }
        if t.max_transfers == 0 || t.retries == 0 || t.max_transfers_per_peer == 0 {
            bail!(
                "tftp.max_transfers, tftp.max_transfers_per_peer and tftp.retries must be positive"
            );
        }
        if t.max_client_timeout == 0 {
            bail!("tftp.max_client_timeout must be between 1 and 255 seconds");
        }
        if !(100..=60_000).contains(&t.timeout.as_millis()) {
            bail!("tftp.timeout_ms must be between 100 and 60000");
        }
        Ok(Some(t.clone()))
    }
}
