//! plinth-testkit: what plinth's tests stand on (dev-dependency only).
//!
//! [`TestDb`] gives every test a fresh, migrated database on a real PostgreSQL server:
//! the one named by `PLINTH_TEST_DATABASE_URL` (the test command starts one), or else a
//! scratch cluster this crate starts under the system temp dir and leaves running for the
//! next test binary.
//!
//! The rest is the world plinth talks to, for real:
//! - [`netns`]: network namespaces, veth pairs, bridges and taps, and processes inside them;
//! - [`dhcp_clients`]: dhclient, udhcpc, dhcpcd, dnsmasq, dhcrelay and friends in a namespace;
//! - [`redfish`]: a Redfish BMC that misbehaves on purpose, or drives a machine (a [`redfish::Host`]);
//! - [`ipmi`]: an IPMI 2.0 (RMCP+) BMC, cipher suites 3 and 17, with packet loss on demand;
//! - [`ipmi_sim`]: OpenIPMI's `ipmi_sim` as a child process, with ipmitool as its client;
//! - [`sushy`]: sushy-tools' Redfish emulator as a child process;
//! - [`vm`]: QEMU virtual machines a BMC powers and boots;
//! - [`rack`]: the virtual rack: VMs behind virtual BMCs and `plinth serve` on their network
//!   (the rack tests and the `plinth-lab demo` binary stand on it);
//! - [`storm`]: the boot storm, N simulated machines doing what a PXE ROM, iPXE and the
//!   ramdisk agent do (DHCP, TFTP, HTTP, the inspection report) at once (`plinth-lab storm`);
//! - [`patroni`]: a Patroni-managed PostgreSQL cluster (etcd, streaming replication in
//!   synchronous mode) whose primary a test can kill, for the failover tests;
//! - [`browser`]: headless Chromium over WebDriver (chromedriver), for tests of the web UI;
//! - [`TestDb::app`] (feature `app`): plinth-core's `App` on a test database;
//! - [`api`] (feature `api`): plinth's API in this process on a loopback port, with an admin
//!   token;
//! - [`logs`]: what a test's code logs (for the throttled lines anyone can cause);
//! - [`mac`]: the MAC addresses tests give their machines.

#[cfg(feature = "api")]
pub mod api;
pub mod browser;
pub mod dhcp_clients;
pub mod ipmi;
pub mod ipmi_sim;
pub mod logs;
pub mod netns;
pub mod patroni;
pub mod rack;
pub mod redfish;
pub mod storm;
pub mod sushy;
pub mod vm;

use std::sync::OnceLock;

use anyhow::Context;
use plinth_types::MacAddr;
use sqlx::PgPool;

/// Test machine number `n`'s MAC address: QEMU's locally administered prefix `52:54`, then `n`
/// big-endian (`mac(0x0a0b0c)` is `52:54:00:0a:0b:0c`).
pub fn mac(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])
}

/// A fresh database with the schema applied. Not dropped when its test ends, so that a failing
/// test leaves its data to look at; the scratch server (kept from one run to the next) drops the
/// test databases more than [`STALE_AFTER`] old when a test process first uses it.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
}

fn server_url() -> anyhow::Result<String> {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("PLINTH_TEST_DATABASE_URL") {
            return Ok(url);
        }
        // Start (or adopt) a scratch cluster on a thread with its own runtime, since each
        // #[tokio::test] has a runtime of its own.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let dir = std::env::temp_dir().join("plinth-testkit");
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let pg = plinth_db::embedded::EmbeddedPostgres::start(&dir)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                let url = pg.url().replace("/plinth?", "/postgres?");
                // Earlier runs' databases, dropped beside this process's tests (a few seconds
                // for a run's hundred; a database in use is skipped).
                let stale_url = url.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    if let Ok(rt) = rt {
                        rt.block_on(drop_stale_databases(&stale_url)).ok();
                    }
                });
                Ok(url)
            })
        })
        .join()
        .map_err(|_| "scratch PostgreSQL start panicked".to_string())?
    })
    .clone()
    .map_err(|e| {
        anyhow::anyhow!(
            "no test PostgreSQL: set PLINTH_TEST_DATABASE_URL or install postgresql ({e})"
        )
    })
}

/// How old a test database may get before a later test process drops it.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// A test database's name: `plinth_test_<unix seconds>_<random>`, so that its age can be told.
fn test_database_name(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("plinth_test_{secs}_{}", uuid::Uuid::new_v4().simple())
}

/// Whether `name` is a test database made more than [`STALE_AFTER`] before `now`: one named as
/// [`test_database_name`] names them, or as test databases were named before they carried their
/// time (`plinth_test_<32 hex digits>`). Any other database is not the test kit's.
fn stale_test_database(name: &str, now: std::time::SystemTime) -> bool {
    let Some(rest) = name.strip_prefix("plinth_test_") else {
        return false;
    };
    let hex32 = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex32(rest) {
        return true;
    }
    let Some((secs, id)) = rest.split_once('_') else {
        return false;
    };
    let (Ok(secs), true) = (secs.parse::<u64>(), hex32(id)) else {
        return false;
    };
    let made = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    now.duration_since(made).is_ok_and(|age| age > STALE_AFTER)
}

/// Drops the test databases on the server at `server_url` that are more than [`STALE_AFTER`]
/// old; one in use is skipped (PostgreSQL refuses to drop it). Returns how many were dropped.
pub async fn drop_stale_databases(server_url: &str) -> anyhow::Result<usize> {
    let admin = plinth_db::connect(server_url, 1)
        .await
        .context("connecting to the test PostgreSQL")?;
    let names: Vec<String> = sqlx::query_scalar(
        "select datname::text from pg_database where datname like 'plinth\\_test\\_%'",
    )
    .fetch_all(&admin)
    .await
    .context("listing the test databases")?;
    let now = std::time::SystemTime::now();
    let mut dropped = 0;
    for name in names.into_iter().filter(|n| stale_test_database(n, now)) {
        let drop = format!("drop database if exists \"{name}\"");
        if sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&admin)
            .await
            .is_ok()
        {
            dropped += 1;
        }
    }
    admin.close().await;
    Ok(dropped)
}

/// `url` with its database (the path) replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    /// A fresh database with the schema applied (`plinth_db::migrate`, as `plinth serve` does).
    pub async fn new() -> anyhow::Result<TestDb> {
        let db = TestDb::empty().await?;
        plinth_db::migrate(&db.pool)
            .await
            .context("migrating the test database")?;
        Ok(db)
    }

    /// plinth-core's [`App`](plinth_core::App) on this database, with a BMC key of its own
    /// (feature `app`).
    #[cfg(feature = "app")]
    pub fn app(&self) -> plinth_core::App {
        plinth_core::App::new(
            self.pool.clone(),
            plinth_core::BmcKey::from_base64(&plinth_core::BmcKey::generate_base64())
                .expect("a generated BMC key"),
        )
    }

    /// A fresh database with nothing in it: for tests of the migrations themselves.
    pub async fn empty() -> anyhow::Result<TestDb> {
        let server = server_url()?;
        let name = test_database_name(std::time::SystemTime::now());
        let admin = plinth_db::connect(&server, 1)
            .await
            .context("connecting to the test PostgreSQL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&admin)
            .await
            .context("creating the test database")?;
        admin.close().await;
        let url = with_database(&server, &name);
        let pool = plinth_db::connect(&url, 40)
            .await
            .context("connecting to the test database")?;
        Ok(TestDb { pool, url, name })
    }

    /// Runs an SQL file with psql (a pg_dump, with its `\restrict` lines and all), stopping at
    /// the first error.
    pub fn psql_file(&self, file: &std::path::Path) -> anyhow::Result<()> {
        let out = std::process::Command::new(pg_tool("psql")?)
            .args(["-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", &self.url, "-f"])
            .arg(file)
            .env("PGOPTIONS", "-c client_min_messages=warning")
            .output()
            .context("running psql")?;
        anyhow::ensure!(
            out.status.success(),
            "psql -f {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The database's schema as `pg_dump --schema-only` prints it, without what changes from
    /// one dump to the next (comments, session settings, the `\restrict` key) and without
    /// sqlx's own bookkeeping table.
    pub fn schema(&self) -> anyhow::Result<String> {
        let out = std::process::Command::new(pg_tool("pg_dump")?)
            .args([
                "--schema-only",
                "--no-owner",
                "--no-privileges",
                "--exclude-table=_sqlx_migrations",
                "-d",
                &self.url,
            ])
            .output()
            .context("running pg_dump")?;
        anyhow::ensure!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(normalize_dump(&String::from_utf8(out.stdout)?))
    }
}

/// A pg_dump's text without comments, `SET` lines, `\restrict` lines and runs of blank lines.
pub fn normalize_dump(dump: &str) -> String {
    let mut out = String::new();
    let mut blank = true;
    for line in dump.lines() {
        let skip = line.starts_with("--")
            || line.starts_with("SET ")
            || line.starts_with("SELECT pg_catalog.set_config")
            || line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict");
        if skip {
            continue;
        }
        if line.trim().is_empty() {
            if !blank {
                out.push('\n');
            }
            blank = true;
            continue;
        }
        blank = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A PostgreSQL client program (psql, pg_dump) of the same version as the server binaries
/// plinth finds, else the one on PATH.
pub fn pg_tool(name: &str) -> anyhow::Result<std::path::PathBuf> {
    if let Some(bin) = plinth_db::embedded::find_bindir()
        && bin.join(name).exists()
    {
        return Ok(bin.join(name));
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.exists())
        })
        .with_context(|| format!("{name} is not installed (Debian package postgresql-client)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_in_urls() {
        assert_eq!(
            with_database("postgres://u@localhost/postgres?host=/tmp/x", "t1"),
            "postgres://u@localhost/t1?host=/tmp/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5432/db", "t2"),
            "postgres://u:p@h:5432/t2"
        );
        assert_eq!(with_database("postgres://h", "t3"), "postgres://h/t3");
    }

    #[test]
    fn test_databases_are_stale_after_an_hour() {
        let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let fresh = test_database_name(t0);
        assert!(fresh.starts_with("plinth_test_1800000000_"), "{fresh}");
        assert!(fresh.len() <= 63, "PostgreSQL's name limit: {fresh}");
        assert!(!stale_test_database(&fresh, t0));
        assert!(!stale_test_database(&fresh, t0 + STALE_AFTER));
        assert!(stale_test_database(
            &fresh,
            t0 + STALE_AFTER + std::time::Duration::from_secs(1)
        ));
        // Made "later" than now (a clock set back): kept.
        assert!(!stale_test_database(
            &fresh,
            t0 - std::time::Duration::from_secs(10)
        ));
        let old_style = format!("plinth_test_{}", uuid::Uuid::new_v4().simple());
        assert!(stale_test_database(&old_style, t0));
        for other in [
            "plinth",
            "postgres",
            "plinth_test_",
            "plinth_test_abc",
            "plinth_test_12_notahexid",
            "plinth_test_x_0123456789abcdef0123456789abcdef",
            "plinth_bench",
        ] {
            assert!(!stale_test_database(other, t0), "{other}");
        }
    }

    #[test]
    fn test_macs_are_qemus_prefix_then_the_number() {
        assert_eq!(mac(1).to_string(), "52:54:00:00:00:01");
        assert_eq!(mac(0x0a0b0c).to_string(), "52:54:00:0a:0b:0c");
        assert_eq!(mac(0x01020304).to_string(), "52:54:01:02:03:04");
    }
}
