//! The `[boot]` settings: what the script of each decision puts together (ramdisk files,
//! console, local-boot commands), what idle and unknown machines get, and the limits of the
//! boot chain (agent token lifetime, boot-loop guard, upload sizes).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::dhcp::UnknownPolicy;

/// What `ready` and `allocated` machines are told when they network-boot anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleBoot {
    /// `local` in the configuration file.
    #[serde(rename(deserialize = "local"))]
    LocalDisk,
    #[serde(rename(deserialize = "poweroff"))]
    PowerOff,
}

/// The `[boot]` settings (and the images root they point into): `[boot]` deserializes into
/// this, with these defaults for what it leaves out. The skipped fields come from other
/// sections (`[images]`, `[dhcp]`, `[clean]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootSettings {
    #[serde(skip)]
    pub images_root: PathBuf,
    /// Base URL machines reach plinth's HTTP server at; default: the request's Host.
    pub public_url: Option<String>,
    /// Kernel and initrd of the ramdisk, relative to the images root.
    pub kernel: String,
    pub initrd: String,
    pub console: String,
    /// Appended to the ramdisk's kernel command line.
    pub kernel_args: String,
    pub local_boot_bios: String,
    pub local_boot_efi: String,
    pub idle: IdleBoot,
    #[serde(skip)]
    pub unknown_machines: UnknownPolicy,
    #[serde(deserialize_with = "plinth_types::de::secs")]
    pub agent_token_ttl: Duration,
    /// Seconds a script that boots nothing (or failed) waits before handing back.
    pub retry_secs: u32,
    /// Boot-loop guard: more than `loop_max` requests within `loop_window` is flagged.
    pub loop_max: u32,
    #[serde(deserialize_with = "plinth_types::de::secs")]
    pub loop_window: Duration,
    /// Script-request batches in the database at once (1 to 4): another starts beside those
    /// under way when a full batch waits (docs/decisions.md, "Script batches: two at once").
    pub batches_in_flight: usize,
    /// Files (relative to the images root) the configuration boots besides the kernel and
    /// initrd, e.g. the iPXE binaries DHCP hands out: catalog entries naming them cannot be
    /// deleted.
    #[serde(skip)]
    pub in_use: Vec<String>,
    /// How cleaning wipes disks where a pool does not say (`[clean]`).
    #[serde(skip)]
    pub clean: crate::clean::CleanSettings,
    /// The largest image upload (`[images]`).
    #[serde(skip)]
    pub max_upload_bytes: u64,
    /// The largest a compressed disk image may decompress to (`[images]`).
    #[serde(skip)]
    pub max_raw_bytes: u64,
}

impl Default for BootSettings {
    fn default() -> Self {
        BootSettings::with_root(PathBuf::new())
    }
}

impl BootSettings {
    /// The defaults, for an images root.
    pub fn with_root(images_root: PathBuf) -> BootSettings {
        BootSettings {
            images_root,
            public_url: None,
            kernel: "plinth/vmlinuz".into(),
            initrd: "plinth/initrd.img".into(),
            console: "console=tty0 console=ttyS0,115200n8".into(),
            // The kernel echoes its command line (the agent token in it) at notice level.
            kernel_args: "loglevel=4".into(),
            local_boot_bios: "sanboot --no-describe --drive 0x80".into(),
            local_boot_efi: "exit".into(),
            idle: IdleBoot::LocalDisk,
            unknown_machines: UnknownPolicy::Boot,
            agent_token_ttl: Duration::from_secs(3600),
            retry_secs: 60,
            loop_max: 10,
            loop_window: Duration::from_secs(600),
            batches_in_flight: 2,
            clean: crate::clean::CleanSettings::default(),
            in_use: vec![
                "undionly.kpxe".into(),
                "ipxe.efi".into(),
                "snponly.efi".into(),
            ],
            max_upload_bytes: 64 << 30,
            max_raw_bytes: 4 << 40,
        }
    }
}
