//! `[bmc]`: the BMC key, the drivers, the job runner and the power sync.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};

use plinth_core::workers::{JobSettings, SyncSettings};

use super::section::Section;
use super::*;

/// `[bmc]`: one flat section whose keys deserialize straight into the types they configure:
/// plinth-bmc's `Drivers`, plinth-core's `JobSettings` and `SyncSettings` (each with its own
/// defaults; `call_timeout_secs` goes to all three), and the key files, which are this
/// binary's.
#[derive(Debug, Clone, Default)]
pub struct BmcConfig {
    pub files: BmcFiles,
    pub drivers: plinth_bmc::Drivers,
    pub jobs: JobSettings,
    pub sync: SyncSettings,
    /// BMC discovery (`plinth bmc scan`): factory credentials, probe concurrency and timeout.
    pub scan: plinth_core::scan::ScanSettings,
}

#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BmcFiles {
    /// 32 bytes, base64: the key BMC passwords are encrypted with.
    pub secret_key: Option<String>,
    /// A file holding that key; default `<state_dir>/bmc-secret.key`, made on first start.
    pub secret_key_file: Option<PathBuf>,
    /// PEM CA certificates to trust for Redfish BMCs whose TLS is verified (besides the
    /// system's); a BMC enrolled with `verify_tls: false` is not verified at all.
    pub ca_file: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for BmcConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut s = Section::read("bmc", d)?;
        let c = BmcConfig {
            files: s.part()?,
            drivers: s.part()?,
            jobs: s.part()?,
            sync: s.part()?,
            scan: s.part()?,
        };
        s.finish()?;
        Ok(c)
    }
}

impl BmcConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let (j, s) = (&self.jobs, &self.sync);
        if j.concurrency == 0 || s.concurrency == 0 {
            bail!("bmc.concurrency and bmc.sync_concurrency must be at least 1");
        }
        if j.call_timeout.is_zero() || j.lease < Duration::from_secs(3) || j.power_wait.is_zero() {
            bail!(
                "bmc.call_timeout_secs and bmc.power_wait_secs must be positive, bmc.lease_secs at least 3"
            );
        }
        if s.failures_before_unreachable < 1 {
            bail!("bmc.unreachable_after must be at least 1");
        }
        Ok(())
    }

    /// The drivers, with the CA certificates of `bmc.ca_file` read and checked.
    pub fn drivers(&self) -> anyhow::Result<plinth_bmc::Drivers> {
        let ca_pem = match &self.files.ca_file {
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
            ca_pem,
            ..self.drivers.clone()
        })
    }

    /// The job runner's settings (a backoff maximum below its base is the base).
    pub fn job_settings(&self) -> JobSettings {
        JobSettings {
            backoff_max: self.jobs.backoff_max.max(self.jobs.backoff_base),
            ..self.jobs.clone()
        }
    }

    /// `None` when the power sync is off (`sync_interval_secs = 0`).
    pub fn sync_settings(&self) -> Option<SyncSettings> {
        (!self.sync.interval.is_zero()).then(|| self.sync.clone())
    }
}

impl std::fmt::Debug for BmcFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcFiles")
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("secret_key_file", &self.secret_key_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Config {
    /// The BMC key: configured, or read from (and on first start written to) the key file.
    pub fn bmc_key(&self) -> anyhow::Result<plinth_core::BmcKey> {
        if let Some(k) = &self.bmc.files.secret_key {
            return plinth_core::BmcKey::from_base64(k).context("bmc.secret_key");
        }
        let path = self
            .bmc
            .files
            .secret_key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("bmc-secret.key"));
        if !path.exists() {
            if self.bmc.files.secret_key_file.is_some() {
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
