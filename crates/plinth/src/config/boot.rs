//! `[boot]`, `[images]` and `[clean]`: what network-booting machines get, the image catalog's
//! limits, and how cleaning wipes disks; checked into plinth-core's `BootSettings`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Deserializer};

use plinth_core::lifecycle::StuckTimeouts;

use super::section::Section;
use super::*;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Where boot images live (iPXE binaries, ramdisk, OS images); default `<state_dir>/images`.
    pub root: Option<PathBuf>,
    /// The largest image upload, in bytes (default 64 GiB).
    pub max_upload_bytes: Option<u64>,
    /// The largest a gzip or zstd disk image may decompress to, in bytes (default 4 TiB).
    pub max_raw_bytes: Option<u64>,
}

/// `[boot]`: one flat section. The ramdisk, script and token keys deserialize straight into
/// plinth-core's `BootSettings`, the `*_timeout_secs` into its `StuckTimeouts` (each with
/// plinth-core's defaults); the listeners and templates are this binary's.
#[derive(Debug, Clone, Default)]
pub struct BootConfig {
    pub listeners: BootListeners,
    pub settings: plinth_core::boot::BootSettings,
    pub timeouts: StuckTimeouts,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootListeners {
    /// The provisioning listener (`/boot/*`, `/metadata/*`, the agent's endpoints), plain
    /// HTTP; unset: the same listener as `http.listen`. On another address, the management API
    /// and UI are not served here, nor these routes there.
    pub listen: Option<SocketAddr>,
    /// An HTTPS provisioning listener besides, for UEFI HTTP boot and iPXE builds that trust
    /// the CA of `tls_cert` (PEM chain and key, read again on SIGHUP).
    pub tls_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A directory whose `*.ipxe` files replace the shipped boot templates of the same name.
    pub templates: Option<PathBuf>,
    /// Unknown network-booting MACs recorded as `discovered` machines per minute, per instance
    /// (0: no limit); the rest are recorded when they ask again.
    pub discover_per_minute: u32,
}

impl Default for BootListeners {
    fn default() -> Self {
        BootListeners {
            listen: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            templates: None,
            discover_per_minute: plinth_core::DEFAULT_DISCOVER_PER_MINUTE,
        }
    }
}

impl<'de> Deserialize<'de> for BootConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut s = Section::read("boot", d)?;
        let c = BootConfig {
            listeners: s.part()?,
            settings: s.part()?,
            timeouts: s.part()?,
        };
        s.finish()?;
        Ok(c)
    }
}

/// A kernel argument string: printable ASCII on one line, nothing iPXE would expand.
pub(crate) fn check_kernel_args(what: &str, v: &str) -> anyhow::Result<()> {
    if v.len() > 1024 || v.chars().any(|c| !(' '..='~').contains(&c) || c == '$') {
        bail!("boot.{what} must be printable ASCII on one line, without `$`, at most 1024 bytes");
    }
    Ok(())
}

impl Config {
    pub fn images_root(&self) -> PathBuf {
        self.images
            .root
            .clone()
            .unwrap_or_else(|| self.state_dir.join("images"))
    }

    /// The boot chain's settings, checked, with what other sections give them: the images
    /// root and limits, the unknown-machine policy, the cleaning defaults, the boot files in use.
    pub fn boot_settings(&self) -> anyhow::Result<plinth_core::boot::BootSettings> {
        let mut s = self.boot.settings.clone();
        s.images_root = self.images_root();
        if let Some(url) = &s.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.contains(char::is_whitespace)
            {
                bail!("boot.public_url must be an http:// or https:// URL, not {url:?}");
            }
            s.public_url = Some(url.trim_end_matches('/').to_owned());
        }
        for (what, v) in [("kernel", &s.kernel), ("initrd", &s.initrd)] {
            plinth_core::files::check_name(v)
                .map_err(|e| anyhow::anyhow!("boot.{what} {v:?}: {e}"))?;
        }
        check_kernel_args("console", &s.console)?;
        check_kernel_args("kernel_args", &s.kernel_args)?;
        s.unknown_machines = self.dhcp.server.boot.unknown_machines;
        s.clean = self.clean;
        if !(60..=7 * 86_400).contains(&s.agent_token_ttl.as_secs()) {
            bail!("boot.agent_token_ttl must be between 60 seconds and 7 days");
        }
        if !(5..=3600).contains(&s.retry_secs) {
            bail!("boot.retry_secs must be between 5 and 3600");
        }
        if s.loop_max == 0 || s.loop_window.is_zero() {
            bail!("boot.loop_max and boot.loop_window must be positive");
        }
        if !(1..=4).contains(&s.batches_in_flight) {
            bail!("boot.batches_in_flight must be between 1 and 4");
        }
        if let Some(n) = self.images.max_upload_bytes {
            s.max_upload_bytes = n;
        }
        if let Some(n) = self.images.max_raw_bytes {
            s.max_raw_bytes = n;
        }
        if s.max_upload_bytes == 0 || s.max_raw_bytes == 0 {
            bail!("images.max_upload_bytes and images.max_raw_bytes must be positive");
        }
        s.in_use = [
            Some(&self.dhcp.server.boot.bios_binary),
            Some(&self.dhcp.server.boot.efi_binary),
            self.dhcp.server.boot.arm64_binary.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(s)
    }

    /// The stuck-machine timeouts, at least a minute each.
    pub fn stuck_timeouts(&self) -> StuckTimeouts {
        let (t, floor) = (self.boot.timeouts, std::time::Duration::from_secs(60));
        StuckTimeouts {
            inspect: t.inspect.max(floor),
            clean: t.clean.max(floor),
            deploy: t.deploy.max(floor),
        }
    }
}
