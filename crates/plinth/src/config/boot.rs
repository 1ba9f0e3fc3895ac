//! `[boot]`, `[images]` and `[clean]`: what network-booting machines get, the image catalog's
//! limits, and how cleaning wipes disks; checked into plinth-core's `BootSettings`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

use plinth_core::lifecycle::StuckTimeouts;

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// The provisioning listener (`/boot/*`, `/metadata/*`, the agent's endpoints), plain
    /// HTTP; unset: the same listener as `http.listen`. On another address, the management API
    /// and UI are not served here, nor these routes there.
    pub listen: Option<SocketAddr>,
    /// An HTTPS provisioning listener besides, for UEFI HTTP boot and iPXE builds that trust
    /// the CA of `tls_cert` (PEM chain and key, read again on SIGHUP).
    pub tls_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Base URL machines reach plinth's HTTP server at (e.g. `http://10.0.0.2:8080`); default:
    /// the Host the request came in on.
    pub public_url: Option<String>,
    /// A directory whose `*.ipxe` files replace the shipped boot templates of the same name.
    pub templates: Option<PathBuf>,
    /// The ramdisk's kernel and initrd, relative to the images root.
    #[serde(default = "default_kernel")]
    pub kernel: String,
    #[serde(default = "default_initrd")]
    pub initrd: String,
    #[serde(default = "default_console")]
    pub console: String,
    /// More kernel arguments for the ramdisk. The default `loglevel=4` keeps the kernel from
    /// printing its command line, agent token included, on the console.
    #[serde(default = "default_kernel_args")]
    pub kernel_args: String,
    #[serde(default = "default_local_boot_bios")]
    pub local_boot_bios: String,
    #[serde(default = "default_local_boot_efi")]
    pub local_boot_efi: String,
    /// What `ready` and `allocated` machines do when they network-boot: `local` or `poweroff`.
    #[serde(default = "default_idle")]
    pub idle: String,
    /// Seconds an agent token stays valid.
    #[serde(default = "default_token_ttl")]
    pub agent_token_ttl: u64,
    /// Seconds a script that boots nothing waits before handing back to the firmware.
    #[serde(default = "default_retry_secs")]
    pub retry_secs: u32,
    /// Boot-loop guard: more than `loop_max` script requests within `loop_window` seconds is
    /// flagged on the machine.
    #[serde(default = "default_loop_max")]
    pub loop_max: u32,
    #[serde(default = "default_loop_window")]
    pub loop_window: u64,
    /// A machine inspecting (cleaning) this long without the agent's report fails, with the
    /// reason.
    #[serde(default = "default_inspect_timeout")]
    pub inspect_timeout_secs: u64,
    #[serde(default = "default_clean_timeout")]
    pub clean_timeout_secs: u64,
    /// A machine deploying this long without a progress report from its agent fails.
    #[serde(default = "default_deploy_timeout")]
    pub deploy_timeout_secs: u64,
    /// Unknown network-booting MACs recorded as `discovered` machines per minute, per instance
    /// (0: no limit); the rest are recorded when they ask again.
    #[serde(default = "default_discover_per_minute")]
    pub discover_per_minute: u32,
}

/// The boot chain's defaults are plinth-core's; the file's keys only override them.
fn boot_defaults() -> plinth_core::boot::BootSettings {
    plinth_core::boot::BootSettings::with_root(PathBuf::new())
}

pub(crate) fn default_discover_per_minute() -> u32 {
    plinth_core::DEFAULT_DISCOVER_PER_MINUTE
}

pub(crate) fn default_kernel() -> String {
    boot_defaults().kernel
}

pub(crate) fn default_initrd() -> String {
    boot_defaults().initrd
}

pub(crate) fn default_console() -> String {
    boot_defaults().console
}

pub(crate) fn default_kernel_args() -> String {
    boot_defaults().kernel_args
}

pub(crate) fn default_local_boot_bios() -> String {
    boot_defaults().local_boot_bios
}

pub(crate) fn default_local_boot_efi() -> String {
    boot_defaults().local_boot_efi
}

pub(crate) fn default_idle() -> String {
    match boot_defaults().idle {
        plinth_core::boot::IdleBoot::LocalDisk => "local".into(),
        plinth_core::boot::IdleBoot::PowerOff => "poweroff".into(),
    }
}

pub(crate) fn default_token_ttl() -> u64 {
    boot_defaults().agent_token_ttl.as_secs()
}

pub(crate) fn default_retry_secs() -> u32 {
    boot_defaults().retry_secs
}

pub(crate) fn default_loop_max() -> u32 {
    boot_defaults().loop_max
}

pub(crate) fn default_inspect_timeout() -> u64 {
    StuckTimeouts::default().inspect.as_secs()
}

pub(crate) fn default_clean_timeout() -> u64 {
    StuckTimeouts::default().clean.as_secs()
}

pub(crate) fn default_deploy_timeout() -> u64 {
    StuckTimeouts::default().deploy.as_secs()
}

pub(crate) fn default_loop_window() -> u64 {
    boot_defaults().loop_window.as_secs()
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            listen: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            public_url: None,
            templates: None,
            kernel: default_kernel(),
            initrd: default_initrd(),
            console: default_console(),
            kernel_args: default_kernel_args(),
            local_boot_bios: default_local_boot_bios(),
            local_boot_efi: default_local_boot_efi(),
            idle: default_idle(),
            agent_token_ttl: default_token_ttl(),
            retry_secs: default_retry_secs(),
            loop_max: default_loop_max(),
            loop_window: default_loop_window(),
            inspect_timeout_secs: default_inspect_timeout(),
            clean_timeout_secs: default_clean_timeout(),
            deploy_timeout_secs: default_deploy_timeout(),
            discover_per_minute: default_discover_per_minute(),
        }
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

    /// The boot chain's settings, checked.
    pub fn boot_settings(&self) -> anyhow::Result<plinth_core::boot::BootSettings> {
        use plinth_core::boot::{BootSettings, IdleBoot};
        let b = &self.boot;
        let mut s = BootSettings::with_root(self.images_root());
        if let Some(url) = &b.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.contains(char::is_whitespace)
            {
                bail!("boot.public_url must be an http:// or https:// URL, not {url:?}");
            }
            s.public_url = Some(url.trim_end_matches('/').to_owned());
        }
        for (what, v) in [("kernel", &b.kernel), ("initrd", &b.initrd)] {
            plinth_core::files::check_name(v)
                .map_err(|e| anyhow::anyhow!("boot.{what} {v:?}: {e}"))?;
        }
        check_kernel_args("console", &b.console)?;
        check_kernel_args("kernel_args", &b.kernel_args)?;
        s.kernel = b.kernel.clone();
        s.initrd = b.initrd.clone();
        s.console = b.console.clone();
        s.kernel_args = b.kernel_args.clone();
        s.local_boot_bios = b.local_boot_bios.clone();
        s.local_boot_efi = b.local_boot_efi.clone();
        s.idle = match b.idle.as_str() {
            "local" => IdleBoot::LocalDisk,
            "poweroff" => IdleBoot::PowerOff,
            other => bail!("boot.idle must be \"local\" or \"poweroff\", not {other:?}"),
        };
        s.unknown_machines = self.dhcp.unknown_policy()?;
        s.clean = self.clean;
        if !(60..=7 * 86_400).contains(&b.agent_token_ttl) {
            bail!("boot.agent_token_ttl must be between 60 seconds and 7 days");
        }
        s.agent_token_ttl = std::time::Duration::from_secs(b.agent_token_ttl);
        if !(5..=3600).contains(&b.retry_secs) {
            bail!("boot.retry_secs must be between 5 and 3600");
        }
        s.retry_secs = b.retry_secs;
        if b.loop_max == 0 || b.loop_window == 0 {
            bail!("boot.loop_max and boot.loop_window must be positive");
        }
        s.loop_max = b.loop_max;
        if let Some(n) = self.images.max_upload_bytes {
            s.max_upload_bytes = n;
        }
        if let Some(n) = self.images.max_raw_bytes {
            s.max_raw_bytes = n;
        }
        if s.max_upload_bytes == 0 || s.max_raw_bytes == 0 {
            bail!("images.max_upload_bytes and images.max_raw_bytes must be positive");
        }
        s.loop_window = std::time::Duration::from_secs(b.loop_window);
        s.in_use = [
            Some(&self.dhcp.bios_binary),
            Some(&self.dhcp.efi_binary),
            self.dhcp.arm64_binary.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(s)
    }
}
