//! `[bmc]`: the BMC key, the drivers, the job runner and the power sync.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use plinth_core::workers::{JobSettings, SyncSettings};

use super::*;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcConfig {
    /// 32 bytes, base64: the key BMC passwords are encrypted with.
    pub secret_key: Option<String>,
    /// A file holding that key; default `<state_dir>/bmc-secret.key`, made on first start.
    pub secret_key_file: Option<PathBuf>,
    /// PEM CA certificates to trust for Redfish BMCs whose TLS is verified (besides the
    /// system's); a BMC enrolled with `verify_tls: false` is not verified at all.
    pub ca_file: Option<PathBuf>,
    /// BMC jobs running at once on this instance (each on a different BMC).
    #[serde(default = "default_job_concurrency")]
    pub concurrency: usize,
    /// BMC jobs running at once across every instance sharing the database; 0: no cap beyond
    /// each instance's `concurrency`.
    #[serde(default)]
    pub cluster_concurrency: usize,
    /// The longest one BMC call may take (a Redfish call can take 30 s on a busy BMC).
    #[serde(default = "default_call_timeout")]
    pub call_timeout_secs: u64,
    /// IPMI: datagrams sent per request before the BMC counts as unreachable.
    #[serde(default = "default_ipmi_retries")]
    pub ipmi_retries: u32,
    /// How long a power change may take to show in the power state.
    #[serde(default = "default_power_wait")]
    pub power_wait_secs: u64,
    /// A running job's lease: a job whose plinth died is run again this long after.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Backoff after a transient failure: base * 2^(attempt-1), at most max.
    #[serde(default = "default_backoff_base")]
    pub backoff_base_secs: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_secs: u64,
    /// Power sync: each BMC's power state is read about this often (jittered ±20 %); 0: off.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_secs: u64,
    /// Consecutive failed polls before a BMC is marked unreachable.
    #[serde(default = "default_sync_failures")]
    pub unreachable_after: i32,
    /// Power polls in flight at once on this instance.
    #[serde(default = "default_sync_concurrency")]
    pub sync_concurrency: usize,
}

pub(crate) fn default_job_concurrency() -> usize {
    JobSettings::default().concurrency
}

pub(crate) fn default_call_timeout() -> u64 {
    JobSettings::default().call_timeout.as_secs()
}

pub(crate) fn default_ipmi_retries() -> u32 {
    plinth_bmc::Drivers::default().ipmi_retries
}

pub(crate) fn default_power_wait() -> u64 {
    JobSettings::default().power_wait.as_secs()
}

pub(crate) fn default_lease() -> u64 {
    JobSettings::default().lease.as_secs()
}

pub(crate) fn default_backoff_base() -> u64 {
    JobSettings::default().backoff_base.as_secs()
}

pub(crate) fn default_backoff_max() -> u64 {
    JobSettings::default().backoff_max.as_secs()
}

pub(crate) fn default_sync_interval() -> u64 {
    SyncSettings::default().interval.as_secs()
}

pub(crate) fn default_sync_failures() -> i32 {
    SyncSettings::default().failures_before_unreachable
}

pub(crate) fn default_sync_concurrency() -> usize {
    SyncSettings::default().concurrency
}

impl Default for BmcConfig {
    fn default() -> Self {
        BmcConfig {
            secret_key: None,
            secret_key_file: None,
            ca_file: None,
            concurrency: default_job_concurrency(),
            cluster_concurrency: 0,
            call_timeout_secs: default_call_timeout(),
            ipmi_retries: default_ipmi_retries(),
            power_wait_secs: default_power_wait(),
            lease_secs: default_lease(),
            backoff_base_secs: default_backoff_base(),
            backoff_max_secs: default_backoff_max(),
            sync_interval_secs: default_sync_interval(),
            unreachable_after: default_sync_failures(),
            sync_concurrency: default_sync_concurrency(),
        }
    }
}

impl BmcConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.concurrency == 0 || self.sync_concurrency == 0 {
            bail!("bmc.concurrency and bmc.sync_concurrency must be at least 1");
        }
        if self.call_timeout_secs == 0 || self.lease_secs < 3 || self.power_wait_secs == 0 {
            bail!(
                "bmc.call_timeout_secs and bmc.power_wait_secs must be positive, bmc.lease_secs at least 3"
            );
        }
        if self.unreachable_after < 1 {
            bail!("bmc.unreachable_after must be at least 1");
        }
        Ok(())
    }

    pub fn drivers(&self) -> anyhow::Result<plinth_bmc::Drivers> {
        let ca_pem = match &self.ca_file {
            Some(p) => {
                let pem =
                    std::fs::read(p).with_context(|| format!("bmc.ca_file {}", p.display()))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    bail!("bmc.ca_file {}: no PEM certificate in it", p.display());
                }
                Some(pem)
            }
            None => None,
        };
        Ok(plinth_bmc::Drivers {
            timeout: Duration::from_secs(self.call_timeout_secs),
            ipmi_retries: self.ipmi_retries,
            ca_pem,
        })
    }

    /// The job runner's settings: the file's, and plinth-core's defaults for the rest.
    pub fn job_settings(&self) -> JobSettings {
        JobSettings {
            concurrency: self.concurrency,
            cluster_concurrency: (self.cluster_concurrency > 0).then_some(self.cluster_concurrency),
            call_timeout: Duration::from_secs(self.call_timeout_secs),
            power_wait: Duration::from_secs(self.power_wait_secs),
            lease: Duration::from_secs(self.lease_secs),
            backoff_base: Duration::from_secs(self.backoff_base_secs),
            backoff_max: Duration::from_secs(self.backoff_max_secs.max(self.backoff_base_secs)),
            ..JobSettings::default()
        }
    }

    /// `None` when the power sync is off.
    pub fn sync_settings(&self) -> Option<SyncSettings> {
        (self.sync_interval_secs > 0).then(|| SyncSettings {
            interval: Duration::from_secs(self.sync_interval_secs),
            failures_before_unreachable: self.unreachable_after,
            concurrency: self.sync_concurrency,
            call_timeout: Duration::from_secs(self.call_timeout_secs),
            ..SyncSettings::default()
        })
    }
}

impl std::fmt::Debug for BmcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcConfig")
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("secret_key_file", &self.secret_key_file)
            .field("ca_file", &self.ca_file)
            .field("concurrency", &self.concurrency)
            .field("call_timeout_secs", &self.call_timeout_secs)
            .field("lease_secs", &self.lease_secs)
            .field("sync_interval_secs", &self.sync_interval_secs)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The BMC key: configured, or read from (and on first start written to) the key file.
    pub fn bmc_key(&self) -> anyhow::Result<plinth_core::BmcKey> {
        if let Some(k) = &self.bmc.secret_key {
            return plinth_core::BmcKey::from_base64(k).context("bmc.secret_key");
        }
        let path = self
            .bmc
            .secret_key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("bmc-secret.key"));
        if !path.exists() {
            if self.bmc.secret_key_file.is_some() {
                bail!("bmc.secret_key_file {} does not exist", path.display());
            }
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(f, "{}", plinth_core::BmcKey::generate_base64())?;
            tracing::warn!(path = %path.display(), "generated a new BMC secret key: back it up, BMC passwords cannot be read without it");
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        plinth_core::BmcKey::from_base64(&text)
            .with_context(|| format!("the key in {}", path.display()))
    }
}
