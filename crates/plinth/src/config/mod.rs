//! Configuration: one TOML file plus `PLINTH_<SECTION>__<KEY>` environment variables.
//! Unknown keys are errors; secrets are never printed (their Debug is redacted).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

mod bmc;
mod boot;
mod dhcp;
mod events;
mod http;
mod section;
mod tftp;

pub use bmc::*;
pub use boot::*;
pub use dhcp::*;
pub use events::*;
pub use http::*;
pub use tftp::*;

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
    /// `[events]`: the event stream and the webhook worker.
    pub events: EventsConfig,
    #[serde(default)]
    /// `[clean]`: how cleaning wipes disks, for pools without a method of their own.
    pub clean: plinth_core::clean::CleanSettings,
    #[serde(default)]
    /// `[console]`: machines' serial consoles and their recordings.
    pub console: plinth_core::console::ConsoleSettings,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// PostgreSQL URL, or a list of them; a URL may name several hosts
    /// (`postgres://plinth@db1,db2,db3/plinth`), and plinth connects to the primary among
    /// them and follows a failover. Unset (empty): the embedded database under state_dir.
    #[serde(default, deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
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

fn default_log_level() -> String {
    "info".into()
}

fn default_log_format() -> String {
    "text".into()
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Vec::new(),
            max_connections: default_max_connections(),
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

/// A string, or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A URL may carry a password.
        f.debug_struct("DatabaseConfig")
            .field("urls", &self.url.len())
            .field("max_connections", &self.max_connections)
            .finish()
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
    let con = &config.console;
    if !(64 * 1024..=64 * 1024 * 1024).contains(&con.max_log_bytes) {
        bail!(
            "invalid configuration: console.max_log_bytes must be between 65536 (64 KiB) and 67108864 (64 MiB)"
        );
    }
    if con.flush.is_zero()
        || con.lease < std::time::Duration::from_secs(3)
        || con.reconnect.is_zero()
    {
        bail!(
            "invalid configuration: console.flush_secs and console.reconnect_secs must be positive, console.lease_secs at least 3"
        );
    }
    config.events.validate().context("invalid configuration")?;
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
        assert_eq!(c.database.url, ["postgres://db/plinth"]);
        assert_eq!(c.database.max_connections, 8);
        assert!(
            !format!("{c:?}").contains("postgres://db"),
            "the URL may hold a password"
        );
        let c = load(
            None,
            env(&[(
                "PLINTH_DATABASE__URL",
                "[\"postgres://p@db1,db2/plinth\", \"postgres://p@db3/plinth\"]",
            )]),
        )
        .unwrap();
        assert_eq!(
            c.database.url,
            ["postgres://p@db1,db2/plinth", "postgres://p@db3/plinth"],
            "a list of URLs"
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

    /// The sections deserialize straight into the types they configure, so an empty file
    /// gives exactly those types' defaults, defined once, in their crates.
    #[test]
    fn defaults_are_the_consumers_own() {
        let c = load(None, env(&[])).unwrap();
        let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        };
        same(&c.tftp.server, &plinth_tftp::server::Config::default());
        same(&c.dhcp.server, &plinth_dhcp::server::Config::default());
        same(&c.bmc.drivers, &plinth_bmc::Drivers::default());
        same(&c.bmc.jobs, &plinth_core::workers::JobSettings::default());
        same(&c.bmc.sync, &plinth_core::workers::SyncSettings::default());
        same(
            &c.boot.timeouts,
            &plinth_core::lifecycle::StuckTimeouts::default(),
        );
        same(
            &c.boot.settings,
            &plinth_core::boot::BootSettings::default(),
        );
        same(&c.clean, &plinth_core::clean::CleanSettings::default());
        let b = c.boot_settings().unwrap();
        let core = plinth_core::boot::BootSettings::with_root(c.images_root());
        assert_eq!((b.kernel, b.loop_window), (core.kernel, core.loop_window));
        assert_eq!(
            c.boot.listeners.discover_per_minute,
            plinth_core::DEFAULT_DISCOVER_PER_MINUTE
        );
    }

    /// The file's names and units reach the consumers' fields; a key two of them share
    /// reaches both; a bad value names its key.
    #[test]
    fn keys_reach_the_consumers_fields() {
        use std::time::Duration;
        let c = load(
            None,
            env(&[
                ("PLINTH_BMC__CALL_TIMEOUT_SECS", "7"),
                ("PLINTH_BMC__LEASE_SECS", "9"),
                ("PLINTH_BMC__IPMI_RETRIES", "1"),
                ("PLINTH_BMC__UNREACHABLE_AFTER", "5"),
                ("PLINTH_TFTP__TIMEOUT_MS", "250"),
                ("PLINTH_TFTP__ENABLED", "true"),
                ("PLINTH_BOOT__IDLE", "\"poweroff\""),
                ("PLINTH_BOOT__LOOP_WINDOW", "120"),
                ("PLINTH_BOOT__INSPECT_TIMEOUT_SECS", "30"),
                ("PLINTH_BOOT__DEPLOY_TIMEOUT_SECS", "7200"),
                ("PLINTH_DHCP__OFFER_TIMEOUT", "20"),
                ("PLINTH_DHCP__UNKNOWN_MACHINES", "record"),
                ("PLINTH_DHCP__CLIENT_RATE_LIMIT", "9"),
            ]),
        )
        .unwrap();
        let secs = Duration::from_secs;
        assert_eq!(c.bmc.drivers.timeout, secs(7));
        assert_eq!(c.bmc.jobs.call_timeout, secs(7));
        assert_eq!(c.bmc.sync.call_timeout, secs(7));
        assert_eq!(c.bmc.jobs.lease, secs(9));
        assert_eq!(c.bmc.drivers.ipmi_retries, 1);
        assert_eq!(c.bmc.sync.failures_before_unreachable, 5);
        let t = c.tftp_config().unwrap().unwrap();
        assert_eq!(t.timeout, Duration::from_millis(250));
        let b = c.boot_settings().unwrap();
        assert_eq!(b.idle, plinth_core::boot::IdleBoot::PowerOff);
        assert_eq!(b.loop_window, secs(120));
        assert_eq!(
            b.unknown_machines,
            plinth_core::dhcp::UnknownPolicy::Record,
            "[dhcp]'s policy is the boot path's too"
        );
        let stuck = c.stuck_timeouts();
        assert_eq!((stuck.inspect, stuck.deploy), (secs(60), secs(7200)));
        assert_eq!(c.dhcp.server.timers.offer_secs, 20);
        assert_eq!(c.dhcp.server.per_client_rate, 9);

        for (key, value, said) in [
            (
                "PLINTH_BOOT__IDLE",
                "\"sleep\"",
                "boot.idle: unknown variant `sleep`",
            ),
            (
                "PLINTH_DHCP__MODE",
                "relay",
                "dhcp.mode: unknown variant `relay`",
            ),
            (
                "PLINTH_BMC__LEASE_SECS",
                "-1",
                "bmc.lease_secs: invalid value",
            ),
            (
                "PLINTH_TFTP__TIMEOUT",
                "5",
                "unknown field `timeout` in [tftp]",
            ),
            (
                "PLINTH_BOOT__INSPECT_TIMEOUT",
                "5",
                "unknown field `inspect_timeout` in [boot]",
            ),
        ] {
            let e = format!("{:#}", load(None, env(&[(key, value)])).unwrap_err());
            assert!(e.contains(said), "{key}={value}: {e}");
        }
    }

    /// `boot.batches_in_flight`: two by default, the value set, and outside 1 to 4 refused by
    /// its name at start.
    #[test]
    fn boot_batches_in_flight() {
        let with = |n: Option<&str>| {
            let vars: Vec<(&str, &str)> = n
                .map(|n| ("PLINTH_BOOT__BATCHES_IN_FLIGHT", n))
                .into_iter()
                .collect();
            load(None, env(&vars)).unwrap().boot_settings()
        };
        assert_eq!(with(None).unwrap().batches_in_flight, 2);
        assert_eq!(with(Some("3")).unwrap().batches_in_flight, 3);
        for bad in ["0", "5"] {
            let e = with(Some(bad)).unwrap_err();
            assert!(
                format!("{e:#}").contains("boot.batches_in_flight must be between 1 and 4"),
                "{e:#}"
            );
        }
    }

    #[test]
    fn clean_section() {
        let c = load(
            None,
            env(&[
                ("PLINTH_CLEAN__METHOD", "secure"),
                ("PLINTH_CLEAN__SECURE_FALLBACK", "fail"),
            ]),
        )
        .unwrap();
        assert_eq!(c.clean.method, plinth_types::api::WipeMethod::Secure);
        assert_eq!(c.clean.fallback, plinth_types::api::WipeFallback::Fail);
        let e = load(None, env(&[("PLINTH_CLEAN__METHOD", "shred")])).unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown variant `shred`"),
            "{e:#}"
        );
    }

    #[test]
    fn events_section() {
        use std::time::Duration;
        let c = load(
            None,
            env(&[
                ("PLINTH_EVENTS__STREAMS_PER_CALLER", "4"),
                ("PLINTH_EVENTS__STREAM_KEEPALIVE_SECS", "30"),
                ("PLINTH_EVENTS__WEBHOOK_TIMEOUT_SECS", "5"),
                ("PLINTH_EVENTS__WEBHOOK_DEAD_AFTER_SECS", "3600"),
            ]),
        )
        .unwrap();
        assert_eq!(c.events.stream.streams_per_caller, 4);
        assert_eq!(c.events.stream.keepalive, Duration::from_secs(30));
        assert_eq!(c.events.stream.poll, Duration::from_secs(2), "the default");
        assert_eq!(c.events.webhooks.timeout, Duration::from_secs(5));
        assert_eq!(c.events.webhooks.dead_after, Duration::from_secs(3600));
        assert_eq!(c.events.webhooks.backoff_max, Duration::from_secs(300));
        let e = load(None, env(&[("PLINTH_EVENTS__WEBHOOK_RETRIES", "3")])).unwrap_err();
        assert!(format!("{e:#}").contains("webhook_retries"), "{e:#}");
        let e = load(
            None,
            env(&[
                ("PLINTH_EVENTS__WEBHOOK_BACKOFF_BASE_SECS", "10"),
                ("PLINTH_EVENTS__WEBHOOK_BACKOFF_MAX_SECS", "5"),
            ]),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("webhook_backoff_max_secs"),
            "{e:#}"
        );
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
        assert_eq!(s.batch_window_ms, 0, "no window unless configured");
        assert_eq!(
            s.batches_in_flight, 1,
            "one batch at a time unless configured"
        );
        assert!(
            c.dhcp.client_view,
            "the client view is on unless switched off"
        );
        assert!(load(None, env(&[])).unwrap().dhcp.client_view);
        let off = load(None, env(&[("PLINTH_DHCP__CLIENT_VIEW", "false")])).unwrap();
        assert!(!off.dhcp.client_view);
        let e = load(None, env(&[("PLINTH_DHCP__CLIENT_VIEW", "sometimes")])).unwrap_err();
        assert!(format!("{e:#}").contains("client_view"), "{e:#}");
        // An enabled server with one more key set, checked.
        let dhcp_with = |key: &str, value: &str| {
            load(
                None,
                env(&[
                    ("PLINTH_DHCP__ENABLED", "true"),
                    ("PLINTH_DHCP__INTERFACES", "[\"eth1\"]"),
                    ("PLINTH_DHCP__BOOT_SERVER", "10.0.0.2"),
                    (key, value),
                ]),
            )
            .unwrap()
            .dhcp
            .server_config(8080, None)
        };
        let dhcp = |window: &str| dhcp_with("PLINTH_DHCP__BATCH_WINDOW_MS", window);
        assert_eq!(dhcp("10").unwrap().unwrap().batch_window_ms, 10);
        let e = dhcp("3600000").unwrap_err();
        assert!(format!("{e:#}").contains("dhcp.batch_window_ms"), "{e:#}");
        let in_flight = |n: &str| dhcp_with("PLINTH_DHCP__BATCHES_IN_FLIGHT", n);
        assert_eq!(in_flight("2").unwrap().unwrap().batches_in_flight, 2);
        for bad in ["0", "5"] {
            let e = in_flight(bad).unwrap_err();
            assert!(format!("{e:#}").contains("dhcp.batches_in_flight"), "{e:#}");
        }
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
    fn bmc_rotation_and_discovery_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plinth.toml");
        std::fs::write(
            &file,
            "[bmc]\nrotate_on_enroll = true\nscan_concurrency = 4\n\
             [[bmc.factory_credentials]]\nusername = \"root\"\npassword = \"calvin-factory\"\n",
        )
        .unwrap();
        let c = load(Some(&file), env(&[])).unwrap();
        assert!(c.bmc.jobs.rotate_on_enroll);
        assert_eq!(c.bmc.scan.scan_concurrency, 4);
        assert_eq!(c.bmc.scan.factory_credentials[0].username, "root");
        assert!(
            !format!("{c:?}").contains("calvin-factory"),
            "never in Debug"
        );
        let c = load(None, env(&[])).unwrap();
        assert!(!c.bmc.jobs.rotate_on_enroll, "off unless asked for");
        assert!(c.bmc.scan.factory_credentials.is_empty());
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
