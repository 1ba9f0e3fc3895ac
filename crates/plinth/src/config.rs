//! Configuration: one TOML file plus `PLINTH_<SECTION>__<KEY>` environment variables.
//! Unknown keys are errors; secrets are never printed (their Debug is redacted).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where plinth keeps its files: the embedded database, the generated BMC key.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub bmc: BmcConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub dhcp: DhcpConfig,
    #[serde(default)]
    pub tftp: TftpConfig,
    #[serde(default)]
    pub images: ImagesConfig,
    #[serde(default)]
    pub boot: BootConfig,
    #[serde(default)]
    pub clean: CleanConfig,
}

/// `[clean]`: how cleaning wipes disks, for pools without a method of their own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanConfig {
    /// quick, discard, secure or full.
    #[serde(default = "default_wipe_method")]
    pub method: String,
    /// What secure (and discard) do on a disk without such an erase: full or fail.
    #[serde(default = "default_wipe_fallback")]
    pub secure_fallback: String,
}

impl Default for CleanConfig {
    fn default() -> Self {
        CleanConfig {
            method: default_wipe_method(),
            secure_fallback: default_wipe_fallback(),
        }
    }
}

fn default_wipe_method() -> String {
    "quick".into()
}

fn default_wipe_fallback() -> String {
    "full".into()
}

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

fn default_tftp_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 69))
}
fn default_max_blksize() -> u16 {
    65464
}
fn default_max_windowsize() -> u16 {
    64
}
fn default_max_transfers() -> usize {
    512
}
fn default_max_transfers_per_peer() -> usize {
    8
}
fn default_max_client_timeout() -> u8 {
    10
}
fn default_tftp_retries() -> u32 {
    5
}
fn default_tftp_timeout_ms() -> u64 {
    1000
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
    #[serde(default = "default_clean_timeout")]
    pub deploy_timeout_secs: u64,
    /// Unknown network-booting MACs recorded as `discovered` machines per minute, per instance
    /// (0: no limit); the rest are recorded when they ask again.
    #[serde(default = "default_discover_per_minute")]
    pub discover_per_minute: u32,
}

fn default_discover_per_minute() -> u32 {
    plinth_core::DEFAULT_DISCOVER_PER_MINUTE
}

fn default_kernel() -> String {
    "plinth/vmlinuz".into()
}
fn default_initrd() -> String {
    "plinth/initrd.img".into()
}
fn default_console() -> String {
    "console=tty0 console=ttyS0,115200n8".into()
}
fn default_kernel_args() -> String {
    "loglevel=4".into()
}
fn default_local_boot_bios() -> String {
    "sanboot --no-describe --drive 0x80".into()
}
fn default_local_boot_efi() -> String {
    "exit".into()
}
fn default_idle() -> String {
    "local".into()
}
fn default_token_ttl() -> u64 {
    3600
}
fn default_retry_secs() -> u32 {
    60
}
fn default_loop_max() -> u32 {
    10
}
fn default_inspect_timeout() -> u64 {
    1800
}
fn default_clean_timeout() -> u64 {
    3600
}
fn default_loop_window() -> u64 {
    600
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
            deploy_timeout_secs: default_clean_timeout(),
            discover_per_minute: default_discover_per_minute(),
        }
    }
}

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

fn default_dhcp_mode() -> String {
    "server".into()
}
fn default_unknown() -> String {
    "boot".into()
}
fn default_bios_binary() -> String {
    "undionly.kpxe".into()
}
fn default_efi_binary() -> String {
    "ipxe.efi".into()
}
fn default_offer_timeout() -> u32 {
    60
}
fn default_quarantine() -> u32 {
    3600
}
fn default_new_client_rate() -> u32 {
    1000
}
fn default_client_rate() -> u32 {
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
    fn unknown_policy(&self) -> anyhow::Result<plinth_core::dhcp::UnknownPolicy> {
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

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// PostgreSQL URL; unset: the embedded database under state_dir.
    pub url: Option<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The management listener: the REST API and the web UI (and, unless `boot.listen` names
    /// another address, the provisioning routes too).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain and private key: the management listener speaks HTTPS only.
    /// Read again on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Reverse proxies (addresses or CIDRs) whose `X-Forwarded-Proto: https` or
    /// `Forwarded: proto=https` is believed; anyone else's is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Open connections per listener; more are refused (503 on plain HTTP) until some close.
    #[serde(default = "default_max_connections_http")]
    pub max_connections: usize,
    /// Open connections from one address per listener.
    #[serde(default = "default_max_connections_per_peer")]
    pub max_connections_per_peer: usize,
}

fn default_max_connections_http() -> usize {
    plinth_api::ConnLimits::default().total
}
fn default_max_connections_per_peer() -> usize {
    plinth_api::ConnLimits::default().per_peer
}

/// One HTTP listener of `plinth serve`.
#[derive(Debug, Clone)]
pub struct ListenerPlan {
    pub addr: SocketAddr,
    pub surface: plinth_api::Surface,
    /// (certificate, key) PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub limits: plinth_api::ConnLimits,
}

/// Both or neither of a certificate and its key.
fn tls_pair(
    section: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        (Some(_), None) => bail!("{section}.tls_cert is set but {section}.tls_key is not"),
        (None, Some(_)) => bail!("{section}.tls_key is set but {section}.tls_cert is not"),
    }
}

/// `10.0.0.1`, `fd00::1`, `10.0.0.0/24`.
fn parse_proxy(s: &str) -> anyhow::Result<ipnet::IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| anyhow::anyhow!("http.trusted_proxies: {s:?} is not an address or a CIDR"))
}

impl Config {
    /// The HTTP listeners: one serving everything while `boot.listen` is unset or the same
    /// address as `http.listen`; else the management one and the provisioning one, and the
    /// provisioning HTTPS one when `boot.tls_listen` is set.
    pub fn listeners(&self) -> anyhow::Result<Vec<ListenerPlan>> {
        use plinth_api::Surface;
        let http_tls = tls_pair("http", &self.http.tls_cert, &self.http.tls_key)?;
        let boot_tls = tls_pair("boot", &self.boot.tls_cert, &self.boot.tls_key)?;
        let trusted_proxies = self
            .http
            .trusted_proxies
            .iter()
            .map(|p| parse_proxy(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.http.max_connections == 0 || self.http.max_connections_per_peer == 0 {
            bail!("http.max_connections and http.max_connections_per_peer must be at least 1");
        }
        let limits = plinth_api::ConnLimits {
            total: self.http.max_connections,
            per_peer: self
                .http
                .max_connections_per_peer
                .min(self.http.max_connections),
        };
        let split = self.boot.listen.is_some_and(|b| b != self.http.listen);
        let mut out = Vec::new();
        if split {
            out.push(ListenerPlan {
                addr: self.http.listen,
                surface: Surface::Management,
                tls: http_tls,
                trusted_proxies: trusted_proxies.clone(),
                limits,
            });
            out.push(ListenerPlan {
                addr: self.boot.listen.unwrap_or(self.http.listen),
                surface: Surface::Provisioning,
                tls: None,
                trusted_proxies: Vec::new(),
                limits,
            });
        } else {
            if http_tls.is_some() {
                bail!(
                    "http.tls_cert needs boot.listen on another address: the machines that boot \
                     from the network and their agent speak plain HTTP to the provisioning routes \
                     (set boot.listen, e.g. \"10.0.0.2:8080\", and http.listen to the management \
                     network's address)"
                );
            }
            out.push(ListenerPlan {
                addr: self.http.listen,
                surface: Surface::All,
                tls: None,
                trusted_proxies: trusted_proxies.clone(),
                limits,
            });
        }
        match (self.boot.tls_listen, boot_tls) {
            (Some(addr), Some(tls)) => {
                if out.iter().any(|l| l.addr == addr) {
                    bail!("boot.tls_listen {addr} is already the address of another listener");
                }
                out.push(ListenerPlan {
                    addr,
                    surface: Surface::Provisioning,
                    tls: Some(tls),
                    trusted_proxies: Vec::new(),
                    limits,
                });
            }
            (Some(_), None) => bail!("boot.tls_listen needs boot.tls_cert and boot.tls_key"),
            (None, Some(_)) => bail!("boot.tls_cert is set but boot.tls_listen is not"),
            (None, None) => {}
        }
        Ok(out)
    }

    /// The port machines reach the provisioning routes on over plain HTTP.
    pub fn boot_port(&self) -> u16 {
        self.boot.listen.unwrap_or(self.http.listen).port()
    }
}

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

fn default_job_concurrency() -> usize {
    64
}
fn default_call_timeout() -> u64 {
    60
}
fn default_ipmi_retries() -> u32 {
    3
}
fn default_power_wait() -> u64 {
    180
}
fn default_lease() -> u64 {
    30
}
fn default_backoff_base() -> u64 {
    5
}
fn default_backoff_max() -> u64 {
    300
}
fn default_sync_interval() -> u64 {
    60
}
fn default_sync_failures() -> i32 {
    3
}
fn default_sync_concurrency() -> usize {
    32
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

    pub fn drivers(&self) -> anyhow::Result<plinth_core::workers::Drivers> {
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
        Ok(plinth_core::workers::Drivers {
            timeout: Duration::from_secs(self.call_timeout_secs),
            ipmi_retries: self.ipmi_retries,
            ca_pem,
        })
    }

    pub fn job_settings(&self) -> plinth_core::workers::JobSettings {
        plinth_core::workers::JobSettings {
            concurrency: self.concurrency,
            cluster_concurrency: (self.cluster_concurrency > 0).then_some(self.cluster_concurrency),
            call_timeout: Duration::from_secs(self.call_timeout_secs),
            power_wait: Duration::from_secs(self.power_wait_secs),
            power_poll: Duration::from_secs(2),
            lease: Duration::from_secs(self.lease_secs),
            backoff_base: Duration::from_secs(self.backoff_base_secs),
            backoff_max: Duration::from_secs(self.backoff_max_secs.max(self.backoff_base_secs)),
            idle_poll: Duration::from_secs(2),
        }
    }

    /// `None` when the power sync is off.
    pub fn sync_settings(&self) -> Option<plinth_core::workers::SyncSettings> {
        (self.sync_interval_secs > 0).then(|| plinth_core::workers::SyncSettings {
            interval: Duration::from_secs(self.sync_interval_secs),
            jitter: 0.2,
            failures_before_unreachable: self.unreachable_after,
            concurrency: self.sync_concurrency,
            call_timeout: Duration::from_secs(self.call_timeout_secs),
            tick: Duration::from_secs(1),
            auth_hold: Duration::from_secs(3600),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `plinth=debug,info`, ...
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
}

fn default_state_dir() -> PathBuf {
    if crate::is_root() {
        return PathBuf::from("/var/lib/plinth");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("plinth")
}
/// Measured on two cores: a few connections per core serve more DHCP packets and API
/// requests per second than dozens, which only add context switches between backends.
fn default_max_connections() -> u32 {
    10
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_log_level() -> String {
    "info".into()
}
fn default_log_format() -> String {
    "text".into()
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: default_max_connections(),
        }
    }
}
impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
            max_connections: default_max_connections_http(),
            max_connections_per_peer: default_max_connections_per_peer(),
        }
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A URL may carry a password.
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("max_connections", &self.max_connections)
            .finish()
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

/// Top-level keys, settable as `PLINTH_<KEY>` (no section).
const TOP_LEVEL: &[&str] = &["state_dir"];

/// Reads `file` (if any) and overlays the environment.
pub fn load(
    file: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<Config> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<toml::Table>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => toml::Table::new(),
    };
    let mut env: Vec<(String, String)> = env.filter(|(k, _)| k.starts_with("PLINTH_")).collect();
    env.sort();
    for (key, value) in env {
        let rest = &key["PLINTH_".len()..];
        let value = parse_env_value(&value);
        if let Some((section, field)) = rest.split_once("__") {
            let (section, field) = (section.to_ascii_lowercase(), field.to_ascii_lowercase());
            if section.is_empty() || field.is_empty() {
                bail!("environment variable {key}: expected PLINTH_<SECTION>__<KEY>");
            }
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(t) = entry else {
                bail!("environment variable {key}: {section} is not a section");
            };
            t.insert(field, value);
        } else if TOP_LEVEL.contains(&rest.to_ascii_lowercase().as_str()) {
            table.insert(rest.to_ascii_lowercase(), value);
        }
        // Other PLINTH_ variables (PLINTH_TOKEN, PLINTH_API_URL, ...) belong to the CLI.
    }
    let origin = file.map_or_else(
        || "the environment".to_owned(),
        |p| format!("{} and the environment", p.display()),
    );
    let config: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            anyhow::anyhow!("invalid configuration in {origin}: {}", e.message())
        })?;
    if !matches!(config.log.format.as_str(), "text" | "json") {
        bail!("invalid configuration: log.format must be \"text\" or \"json\"");
    }
    config.bmc.validate().context("invalid configuration")?;
    Ok(config)
}

/// An environment value in TOML syntax (`["eth1"]`, `true`, `42`), or else a plain string.
fn parse_env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// A kernel argument string: printable ASCII on one line, nothing iPXE would expand.
fn check_kernel_args(what: &str, v: &str) -> anyhow::Result<()> {
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
        s.clean = plinth_core::clean::CleanSettings {
            method: self
                .clean
                .method
                .parse()
                .map_err(|e: String| anyhow::anyhow!("clean.method: {e}"))?,
            fallback: match self.clean.secure_fallback.as_str() {
                "full" => plinth_types::api::WipeFallback::Full,
                "fail" => plinth_types::api::WipeFallback::Fail,
                other => bail!("clean.secure_fallback must be \"full\" or \"fail\", not {other:?}"),
            },
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plinth.toml");
        std::fs::write(
            &file,
            "state_dir = \"/srv/plinth\"\n[http]\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let c = load(
            Some(&file),
            env(&[
                ("PLINTH_DATABASE__URL", "postgres://db/plinth"),
                ("PLINTH_HTTP__LISTEN", "127.0.0.1:9100"),
                ("PLINTH_TOKEN", "ignored: a CLI variable"),
                ("PLINTH_DATABASE__MAX_CONNECTIONS", "8"),
            ]),
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/plinth"));
        assert_eq!(c.http.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.database.url.as_deref(), Some("postgres://db/plinth"));
        assert_eq!(c.database.max_connections, 8);
        assert!(
            !format!("{c:?}").contains("postgres://db"),
            "the URL may hold a password"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = load(None, env(&[("PLINTH_HTTP__LISTN", "x")])).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `listn`"), "{e:#}");
        let e = load(None, env(&[("PLINTH_NOPE__X", "1")])).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `nope`"), "{e:#}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "[database]\nurl = \"x\"\npassword = \"y\"\n").unwrap();
        assert!(
            format!("{:#}", load(Some(&file), env(&[])).unwrap_err())
                .contains("unknown field `password`")
        );
        let e = load(None, env(&[("PLINTH_HTTP__LISTEN", "not an address")])).unwrap_err();
        assert!(format!("{e:#}").contains("invalid"), "{e:#}");
    }

    #[test]
    fn dhcp_section() {
        let c = load(
            None,
            env(&[
                ("PLINTH_DHCP__ENABLED", "true"),
                ("PLINTH_DHCP__INTERFACES", "[\"eth1\", \"eth2\"]"),
                ("PLINTH_DHCP__BOOT_SERVER", "10.0.0.2"),
                ("PLINTH_DHCP__MODE", "proxy"),
            ]),
        )
        .unwrap();
        let s = c.dhcp.server_config(8080, None).unwrap().unwrap();
        assert_eq!(s.interfaces, ["eth1", "eth2"]);
        assert_eq!(s.mode, plinth_dhcp::server::Mode::Proxy);
        let bad = load(
            None,
            env(&[
                ("PLINTH_DHCP__ENABLED", "true"),
                ("PLINTH_DHCP__INTERFACES", "[\"eth1\"]"),
            ]),
        )
        .unwrap();
        assert!(
            format!("{:#}", bad.dhcp.server_config(8080, None).unwrap_err())
                .contains("boot_server")
        );
        let bad = load(
            None,
            env(&[
                ("PLINTH_DHCP__ENABLED", "true"),
                ("PLINTH_DHCP__INTERFACES", "[\"eth1\"]"),
                ("PLINTH_DHCP__BOOT_SERVER", "10.0.0.2"),
                ("PLINTH_DHCP__MODE", "relay"),
            ]),
        )
        .unwrap();
        assert!(
            format!("{:#}", bad.dhcp.server_config(8080, None).unwrap_err()).contains("dhcp.mode")
        );
        assert!(
            load(None, env(&[]))
                .unwrap()
                .dhcp
                .server_config(8080, None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn env_values_use_toml_syntax() {
        assert_eq!(
            parse_env_value("[\"eth1\", \"eth2\"]")
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(parse_env_value("8").as_integer(), Some(8));
        assert_eq!(
            parse_env_value("0.0.0.0:8080").as_str(),
            Some("0.0.0.0:8080")
        );
        assert_eq!(
            parse_env_value("postgres://u@h/db?host=/run").as_str(),
            Some("postgres://u@h/db?host=/run")
        );
    }

    #[test]
    fn bmc_job_settings_and_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(
            None,
            env(&[
                ("PLINTH_BMC__CONCURRENCY", "8"),
                ("PLINTH_BMC__SYNC_INTERVAL_SECS", "0"),
                ("PLINTH_BMC__CLUSTER_CONCURRENCY", "100"),
            ]),
        )
        .unwrap();
        assert_eq!(c.bmc.job_settings().concurrency, 8);
        assert_eq!(c.bmc.job_settings().cluster_concurrency, Some(100));
        assert!(
            c.bmc.sync_settings().is_none(),
            "0 turns the power sync off"
        );
        assert!(c.bmc.drivers().unwrap().ca_pem.is_none());
        let e = load(None, env(&[("PLINTH_BMC__CONCURRENCY", "0")])).unwrap_err();
        assert!(format!("{e:#}").contains("bmc.concurrency"), "{e:#}");

        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "hello").unwrap();
        let c = load(None, env(&[("PLINTH_BMC__CA_FILE", bad.to_str().unwrap())])).unwrap();
        let e = c.bmc.drivers().unwrap_err();
        assert!(format!("{e:#}").contains("no PEM certificate"), "{e:#}");
        let missing = dir.path().join("missing.pem");
        let c = load(
            None,
            env(&[("PLINTH_BMC__CA_FILE", missing.to_str().unwrap())]),
        )
        .unwrap();
        assert!(format!("{:#}", c.bmc.drivers().unwrap_err()).contains("missing.pem"));
    }

    #[test]
    fn bmc_key_file_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(
            None,
            env(&[("PLINTH_STATE_DIR", dir.path().to_str().unwrap())]),
        )
        .unwrap();
        c.bmc_key().unwrap();
        let first = std::fs::read_to_string(dir.path().join("bmc-secret.key")).unwrap();
        c.bmc_key().unwrap();
        assert_eq!(
            first,
            std::fs::read_to_string(dir.path().join("bmc-secret.key")).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("bmc-secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn listeners_share_an_address_until_boot_listen_names_another() {
        use plinth_api::Surface;
        let c = load(None, env(&[])).unwrap();
        let l = c.listeners().unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].surface, Surface::All);
        assert_eq!(c.boot_port(), 8080);
        let c = load(None, env(&[("PLINTH_BOOT__LISTEN", "0.0.0.0:8080")])).unwrap();
        assert_eq!(
            c.listeners().unwrap().len(),
            1,
            "the same address is one listener"
        );
        let c = load(
            None,
            env(&[
                ("PLINTH_HTTP__LISTEN", "10.1.0.2:443"),
                ("PLINTH_HTTP__TLS_CERT", "/etc/plinth/tls.pem"),
                ("PLINTH_HTTP__TLS_KEY", "/etc/plinth/tls.key"),
                (
                    "PLINTH_HTTP__TRUSTED_PROXIES",
                    "[\"10.1.0.9\", \"10.2.0.0/16\"]",
                ),
                ("PLINTH_BOOT__LISTEN", "10.9.0.2:8080"),
            ]),
        )
        .unwrap();
        let l = c.listeners().unwrap();
        assert_eq!(
            l.iter()
                .map(|l| (l.addr.to_string(), l.surface, l.tls.is_some()))
                .collect::<Vec<_>>(),
            vec![
                ("10.1.0.2:443".to_owned(), Surface::Management, true),
                ("10.9.0.2:8080".to_owned(), Surface::Provisioning, false),
            ]
        );
        assert_eq!(l[0].trusted_proxies.len(), 2);
        assert!(l[0].trusted_proxies[0].contains(&"10.1.0.9".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(c.boot_port(), 8080);
    }

    #[test]
    fn listener_mistakes_are_named() {
        let err = |pairs: &[(&str, &str)]| {
            format!(
                "{:#}",
                load(None, env(pairs)).unwrap().listeners().unwrap_err()
            )
        };
        let e = err(&[("PLINTH_HTTP__TLS_CERT", "/c.pem")]);
        assert!(e.contains("http.tls_key is not"), "{e}");
        let e = err(&[
            ("PLINTH_HTTP__TLS_CERT", "/c.pem"),
            ("PLINTH_HTTP__TLS_KEY", "/c.key"),
        ]);
        assert!(e.contains("needs boot.listen on another address"), "{e}");
        let e = err(&[("PLINTH_HTTP__TRUSTED_PROXIES", "[\"proxy.example\"]")]);
        assert!(
            e.contains("\"proxy.example\" is not an address or a CIDR"),
            "{e}"
        );
        let e = err(&[("PLINTH_BOOT__TLS_LISTEN", "0.0.0.0:8443")]);
        assert!(e.contains("boot.tls_listen needs boot.tls_cert"), "{e}");
        let e = err(&[
            ("PLINTH_BOOT__TLS_LISTEN", "0.0.0.0:8080"),
            ("PLINTH_BOOT__TLS_CERT", "/c.pem"),
            ("PLINTH_BOOT__TLS_KEY", "/c.key"),
        ]);
        assert!(e.contains("already the address of another listener"), "{e}");
        let e = err(&[
            ("PLINTH_BOOT__TLS_CERT", "/c.pem"),
            ("PLINTH_BOOT__TLS_KEY", "/c.key"),
        ]);
        assert!(e.contains("boot.tls_listen is not"), "{e}");
    }
}
