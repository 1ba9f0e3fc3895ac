//! The embedded default database: a private PostgreSQL cluster under plinth's state
//! directory, made with the server binaries Debian's `postgresql` package installs.
//!
//! It listens only on a Unix socket in a directory only its owner can enter. PostgreSQL
//! refuses to run as root, so when plinth runs as root the cluster runs as the unprivileged
//! `postgres` user that the package creates.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; install Debian's postgresql package or set database.url"
    )]
    NoBinaries,
    #[error(
        "plinth runs as root but there is no 'postgres' user to run the embedded database as; install Debian's postgresql package or set database.url"
    )]
    NoPostgresUser,
    #[error("{what} failed; see {log}")]
    Command { what: &'static str, log: PathBuf },
    #[error("embedded database I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("embedded database setup")]
    Sql(#[from] sqlx::Error),
}

/// A running embedded cluster.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bindir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    run_as: Option<(u32, u32)>,
    adopted: bool,
}

const DATABASE: &str = "plinth";
const SUPERUSER: &str = "plinth";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedError + '_ {
    move |source| EmbeddedError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The newest `/usr/lib/postgresql/N/bin` holding `pg_ctl`, or `PLINTH_PG_BINDIR`.
pub fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PLINTH_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4 && f[0] == "postgres")
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective uid, without unsafe libc calls.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl EmbeddedPostgres {
    /// Creates the cluster on first use, starts it (or adopts one left running), and makes
    /// sure the `plinth` database exists.
    pub async fn start(state_dir: &Path) -> Result<Self, EmbeddedError> {
        let bindir = find_bindir().ok_or(EmbeddedError::NoBinaries)?;
        let run_as = if is_root() {
            Some(postgres_user().ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        let root = state_dir.join("postgres");
        let pg = EmbeddedPostgres {
            bindir,
            data_dir: root.join("data"),
            socket_dir: root.join("run"),
            log: root.join("server.log"),
            run_as,
            adopted: false,
        };
        let mut pg = pg;
        std::fs::create_dir_all(&pg.socket_dir).map_err(io(&pg.socket_dir))?;
        // The cluster's owner must be able to pass through the state directory.
        let meta = std::fs::metadata(state_dir).map_err(io(state_dir))?;
        if run_as.is_some() && meta.permissions().mode() & 0o001 == 0 {
            let mode = meta.permissions().mode() | 0o011;
            std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(mode))
                .map_err(io(state_dir))?;
        }
        for dir in [&root, &pg.socket_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io(dir))?;
            }
        }
        if !pg.data_dir.join("PG_VERSION").exists() {
            tracing::info!(data_dir = %pg.data_dir.display(), "creating the embedded PostgreSQL cluster");
            let initdb_log = root.join("initdb.log");
            pg.run(
                "initdb",
                &initdb_log,
                &[
                    "-D".as_ref(),
                    pg.data_dir.as_os_str(),
                    "-U".as_ref(),
                    SUPERUSER.as_ref(),
                    "-A".as_ref(),
                    "trust".as_ref(),
                    "-E".as_ref(),
                    "UTF8".as_ref(),
                    "--no-locale".as_ref(),
                ],
            )
            .await?;
        }
        if pg.is_running().await {
            pg.adopted = true;
            tracing::info!(data_dir = %pg.data_dir.display(), "adopting the embedded PostgreSQL that is already running");
        } else {
            let opts = format!(
                "-c listen_addresses='' -k {} -c unix_socket_permissions=0700 -c max_connections=200",
                pg.socket_dir.display()
            );
            let log_arg = pg.log.clone();
            pg.run(
                "pg_ctl start",
                &pg.log,
                &[
                    "-D".as_ref(),
                    pg.data_dir.as_os_str(),
                    "-l".as_ref(),
                    log_arg.as_os_str(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "-o".as_ref(),
                    opts.as_ref(),
                    "start".as_ref(),
                ],
            )
            .await?;
            tracing::info!(socket_dir = %pg.socket_dir.display(), "embedded PostgreSQL started");
        }
        pg.ensure_database().await?;
        Ok(pg)
    }

    /// Whether the cluster was already running (another plinth process owns it).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The URL of the `plinth` database.
    pub fn url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost/{DATABASE}?host={}",
            self.socket_dir.display()
        )
    }

    /// Stops the cluster (fast shutdown: open sessions are ended, data is safe).
    pub async fn stop(&self) -> Result<(), EmbeddedError> {
        self.run(
            "pg_ctl stop",
            &self.log,
            &[
                "-D".as_ref(),
                self.data_dir.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
        .await?;
        tracing::info!("embedded PostgreSQL stopped");
        Ok(())
    }

    async fn is_running(&self) -> bool {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).arg("status");
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        matches!(cmd.status().await, Ok(s) if s.success())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.current_dir(self.data_dir.parent().unwrap_or(Path::new("/")));
        cmd.stdin(std::process::Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    async fn run(
        &self,
        what: &'static str,
        log: &Path,
        args: &[&std::ffi::OsStr],
    ) -> Result<(), EmbeddedError> {
        let program = what.split(' ').next().unwrap_or(what);
        let out = self
            .command(program)
            .args(args)
            .output()
            .await
            .map_err(io(&self.bindir))?;
        if !out.status.success() {
            let mut text = out.stdout;
            text.extend_from_slice(&out.stderr);
            // Keep what the tool said next to the server log for the operator.
            let side = log.with_extension("err");
            std::fs::write(&side, &text).ok();
            tracing::error!(what, output = %String::from_utf8_lossy(&text), "embedded PostgreSQL command failed");
            return Err(EmbeddedError::Command { what, log: side });
        }
        Ok(())
    }

    async fn ensure_database(&self) -> Result<(), EmbeddedError> {
        let admin_url = format!(
            "postgres://{SUPERUSER}@localhost/postgres?host={}",
            self.socket_dir.display()
        );
        let mut last = None;
        // The server accepts connections once pg_ctl -w returns, but allow it a moment.
        for _ in 0..50 {
            match crate::connect(&admin_url, 1).await {
                Ok(pool) => {
                    let exists: bool = sqlx::query_scalar(
                        "select exists (select 1 from pg_database where datname = $1)",
                    )
                    .bind(DATABASE)
                    .fetch_one(&pool)
                    .await?;
                    if !exists {
                        sqlx::query("create database plinth").execute(&pool).await?;
                    }
                    pool.close().await;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(EmbeddedError::Sql(
            last.unwrap_or(sqlx::Error::PoolTimedOut),
        ))
    }
}
