//! `[tftp]`: the TFTP server, checked into plinth-tftp's server config.

use std::net::SocketAddr;

use anyhow::bail;
use serde::Deserialize;

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_tftp_listen")]
    pub listen: SocketAddr,
    /// Largest block size granted (RFC 2348 allows up to 65464).
    #[serde(default = "default_max_blksize")]
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440).
    #[serde(default = "default_max_windowsize")]
    pub max_windowsize: u16,
    /// Transfers at once; more are refused with "server busy".
    #[serde(default = "default_max_transfers")]
    pub max_transfers: usize,
    /// Transfers at once to one address; more are refused with "server busy".
    #[serde(default = "default_max_transfers_per_peer")]
    pub max_transfers_per_peer: usize,
    /// The longest timeout (seconds) a client may ask for with the RFC 2349 option; a longer
    /// one is not granted.
    #[serde(default = "default_max_client_timeout")]
    pub max_client_timeout: u8,
    /// Retransmissions of one packet before a transfer is abandoned.
    #[serde(default = "default_tftp_retries")]
    pub retries: u32,
    /// First retransmission timeout when the client sets none (doubles with each retry).
    #[serde(default = "default_tftp_timeout_ms")]
    pub timeout_ms: u64,
}

pub(crate) fn default_tftp_listen() -> SocketAddr {
    plinth_tftp::server::Config::default().listen
}

pub(crate) fn default_max_blksize() -> u16 {
    plinth_tftp::server::Config::default().max_blksize
}

pub(crate) fn default_max_windowsize() -> u16 {
    plinth_tftp::server::Config::default().max_windowsize
}

pub(crate) fn default_max_transfers() -> usize {
    plinth_tftp::server::Config::default().max_transfers
}

pub(crate) fn default_max_transfers_per_peer() -> usize {
    plinth_tftp::server::Config::default().max_transfers_per_peer
}

pub(crate) fn default_max_client_timeout() -> u8 {
    plinth_tftp::server::Config::default().max_client_timeout
}

pub(crate) fn default_tftp_retries() -> u32 {
    plinth_tftp::server::Config::default().retries
}

pub(crate) fn default_tftp_timeout_ms() -> u64 {
    plinth_tftp::server::Config::default().timeout.as_millis() as u64
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            enabled: false,
            listen: default_tftp_listen(),
            max_blksize: default_max_blksize(),
            max_windowsize: default_max_windowsize(),
            max_transfers: default_max_transfers(),
            max_transfers_per_peer: default_max_transfers_per_peer(),
            max_client_timeout: default_max_client_timeout(),
            retries: default_tftp_retries(),
            timeout_ms: default_tftp_timeout_ms(),
        }
    }
}

impl Config {
    /// The TFTP server's configuration, checked; `None` when TFTP is disabled.
    pub fn tftp_config(&self) -> anyhow::Result<Option<plinth_tftp::server::Config>> {
        let t = &self.tftp;
        if !t.enabled {
            return Ok(None);
        }
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
        if !(100..=60_000).contains(&t.timeout_ms) {
            bail!("tftp.timeout_ms must be between 100 and 60000");
        }
        Ok(Some(plinth_tftp::server::Config {
            listen: t.listen,
            max_blksize: t.max_blksize,
            max_windowsize: t.max_windowsize,
            max_transfers: t.max_transfers,
            max_transfers_per_peer: t.max_transfers_per_peer,
            max_client_timeout: t.max_client_timeout,
            retries: t.retries,
            timeout: std::time::Duration::from_millis(t.timeout_ms),
        }))
    }
}
