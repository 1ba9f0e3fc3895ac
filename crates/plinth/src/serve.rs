//! `plinth serve`, `plinth migrate` and `plinth admin`: configuration, the database (given
//! or embedded), tracing, and the tasks of the service under one cancellation token.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use plinth_core::reconcile::{Pass, Reconciler};
use plinth_core::{App, Principal};
use plinth_db::embedded::EmbeddedPostgres;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ServerArgs;
use crate::config::{self, Config};

/// How often the reconciler reclaims expired leases, purges dead agent tokens and fails machines
/// stuck past their state's deadline.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// How often the consoles of busy machines are checked (opened when a machine starts a step).
const CONSOLE_EVERY: Duration = Duration::from_secs(2);
/// How often the file fetches this instance served are written, and machines whose ramdisk
/// powered them off are looked for (plinth-core's `sightings`).
const SIGHTINGS_EVERY: Duration = Duration::from_secs(3);

fn load_config(args: &ServerArgs) -> anyhow::Result<Config> {
    let mut c = config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(url) = &args.database_url {
        c.database.url = vec![url.clone()];
    }
    Ok(c)
}

fn init_tracing(c: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_new(&c.log.level).with_context(|| format!("log.level {:?}", c.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = if c.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    res.map_err(|e| anyhow::anyhow!("tracing: {e}"))
}

/// The database plinth talks to, and the embedded cluster behind it if there is one.
struct Database {
    pool: plinth_db::PgPool,
    embedded: Option<EmbeddedPostgres>,
}

async fn open_database(c: &Config) -> anyhow::Result<Database> {
    let (urls, embedded) = if c.database.url.is_empty() {
        std::fs::create_dir_all(&c.state_dir)
            .with_context(|| format!("creating state_dir {}", c.state_dir.display()))?;
        let pg = EmbeddedPostgres::start(&c.state_dir)
            .await
            .context("starting the embedded database")?;
        (vec![pg.url()], Some(pg))
    } else {
        (c.database.url.clone(), None)
    };
    let pool = plinth_db::connect_all(&urls, c.database.max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    plinth_db::migrate(&pool)
        .await
        .context("applying database migrations")?;
    Ok(Database { pool, embedded })
}

impl Database {
    /// Closes the pool; stops the embedded cluster if `always` or if this process started it.
    async fn close(self, always: bool) {
        self.pool.close().await;
        if let Some(pg) = self.embedded
            && (always || !pg.adopted())
            && let Err(e) = pg.stop().await
        {
            tracing::error!(error = %format!("{e:#}"), "stopping the embedded database");
        }
    }
}

pub async fn serve(args: &ServerArgs, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut c = load_config(args)?;
    if let Some(l) = listen {
        c.http.listen = l;
    }
    init_tracing(&c)?;
    // The listeners' configuration is checked before anything starts.
    let plans = c.listeners().context("invalid configuration")?;
    let mut certs = Vec::new();
    let mut plans_tls = Vec::new();
    for plan in plans {
        let tls = match &plan.tls {
            Some((cert, key)) => {
                let files = plinth_api::tls::TlsFiles::load(cert, key)
                    .map_err(|e| anyhow::anyhow!("TLS for {}: {e}", plan.addr))?;
                certs.push(files.clone());
                Some(files)
            }
            None => None,
        };
        plans_tls.push((plan, tls));
    }
    std::fs::create_dir_all(&c.state_dir)
        .with_context(|| format!("creating state_dir {}", c.state_dir.display()))?;
    let bmc_key = c.bmc_key()?;
    let db = open_database(&c).await?;
    let boot = c.boot_settings()?;
    let templates = plinth_core::boot::Templates::load(c.boot.listeners.templates.as_deref())
        .context("loading the boot templates")?;
    for (name, origin) in &templates.origins {
        if origin != "shipped" {
            tracing::info!(template = %name, %origin, "boot template overridden");
        }
    }
    if !boot.images_root.is_dir() {
        tracing::warn!(root = %boot.images_root.display(), "the images root does not exist: run images/build.sh to fill it");
    }
    let mut app = App::new(db.pool.clone(), bmc_key)
        .with_boot(boot, templates)
        .with_discovery_limit(c.boot.listeners.discover_per_minute)
        .with_consoles(std::sync::Arc::new(c.bmc.drivers()?), c.console.clone())
        .with_stream_settings(c.events.stream.clone());
    if !c.dhcp.client_view {
        tracing::info!("dhcp.client_view is off: every DISCOVER goes to the database");
        app = app.without_dhcp_view();
    }
    app.metrics().allow(c.http.metrics_allow()?);
    let mut listeners = Vec::new();
    for (plan, tls) in plans_tls {
        let listener = tokio::net::TcpListener::bind(plan.addr)
            .await
            .with_context(|| format!("listening on {}", plan.addr))?;
        let addr = listener.local_addr()?;
        let serves_management = plan.surface != plinth_api::Surface::Provisioning;
        if serves_management && tls.is_none() && !addr.ip().to_canonical().is_loopback() {
            tracing::warn!(%addr, "the management API is plain HTTP on a network address: API tokens and passwords cross it in clear text (set http.tls_cert and http.tls_key, and boot.listen; or put a TLS proxy in front and list it in http.trusted_proxies)");
        }
        tracing::info!(%addr, surface = ?plan.surface, tls = tls.is_some(), embedded_db = db.embedded.is_some(), "plinth is serving");
        listeners.push((
            listener,
            plinth_api::ServeOptions {
                surface: plan.surface,
                tls,
                trusted_proxies: plan.trusted_proxies,
                limits: plan.limits,
                ..Default::default()
            },
        ));
    }
    // Machines reach the provisioning routes over plain HTTP on this port.
    let boot_port = listeners
        .iter()
        .find(|(_, o)| o.surface != plinth_api::Surface::Management && o.tls.is_none())
        .and_then(|(l, _)| l.local_addr().ok())
        .map_or(c.boot_port(), |a| a.port());
    let dhcp = c
        .dhcp
        .server_config(boot_port, c.boot.settings.public_url.as_deref())?;
    let tftp = c.tftp_config()?;

    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    // Script requests are recorded in batches, by a worker that starts before the first request
    // can arrive and stops with the rest.
    if let Some(batches) = app.boot_batches() {
        let cancel = cancel.clone();
        tasks.spawn(async move {
            batches.run(cancel).await;
            Ok(())
        });
    }
    for (listener, opts) in listeners {
        let cancel = cancel.clone();
        let app = app.clone();
        tasks.spawn(async move {
            let shutdown = cancel.clone().cancelled_owned();
            plinth_api::serve_with(listener, app, opts, shutdown)
                .await
                .context("HTTP server")
        });
    }
    {
        // SIGHUP reads the TLS certificates again (a renewal takes effect without a restart).
        let cancel = cancel.clone();
        tasks.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return Ok(());
            };
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = hup.recv() => {
                        if certs.is_empty() {
                            tracing::info!("SIGHUP: no TLS certificate to read again");
                        }
                        for files in &certs {
                            match files.reload() {
                                Ok(()) => tracing::info!(files = %files.describe(), "TLS certificate read again"),
                                Err(e) => tracing::error!(error = %e, "TLS certificate not read again; the one in use stays"),
                            }
                        }
                    }
                }
            }
        });
    }
    if let Some(dhcp) = dhcp {
        let (app, cancel) = (app.clone(), cancel.clone());
        let counters = std::sync::Arc::new(plinth_dhcp::server::Counters::default());
        app.metrics().register(counters.clone());
        tasks.spawn(async move {
            plinth_dhcp::server::run(app, dhcp, counters, cancel)
                .await
                .context("DHCP server")
        });
    }
    if let Some(cfg) = tftp {
        let http_base = c.boot.settings.public_url.clone().or_else(|| {
            c.dhcp
                .boot_server()
                .map(|ip| format!("http://{ip}:{boot_port}"))
        });
        let source = crate::tftp::source(app.clone(), c.images_root(), http_base);
        let server = plinth_tftp::server::Server::bind(cfg.clone(), source)
            .await
            .with_context(|| format!("TFTP: listening on {}", cfg.listen))?;
        tracing::info!(addr = %cfg.listen, root = %c.images_root().display(), "TFTP is serving");
        app.metrics()
            .register(std::sync::Arc::new(crate::tftp::TftpMetrics(
                server.counters(),
            )));
        let cancel = cancel.clone();
        tasks.spawn(async move { server.serve(cancel).await.context("TFTP server") });
    }
    {
        // BMC jobs: every instance runs them; the database shares the work.
        let connector: std::sync::Arc<dyn plinth_bmc::Connector> =
            std::sync::Arc::new(c.bmc.drivers()?);
        let runner = plinth_core::workers::JobRunner::new(
            app.clone(),
            connector.clone(),
            c.bmc.job_settings(),
        );
        // The reconciler: what happens because time passed, safe on every instance at once.
        let stuck = c.stuck_timeouts();
        let mut reconciler = Reconciler::new()
            .with(Pass::new("lease reclaim", RECONCILE_EVERY, {
                let app = app.clone();
                move |_| {
                    let app = app.clone();
                    async move { app.reclaim_leases().await.map(drop) }
                }
            }))
            .with(Pass::new("agent token purge", RECONCILE_EVERY, {
                let app = app.clone();
                move |_| {
                    let app = app.clone();
                    async move { app.purge_agent_tokens().await.map(drop) }
                }
            }))
            .with(Pass::new("stuck machines", RECONCILE_EVERY, {
                let app = app.clone();
                move |_| {
                    let app = app.clone();
                    async move { app.fail_stuck(&stuck).await.map(drop) }
                }
            }))
            .with(Pass::new("file fetches", SIGHTINGS_EVERY, {
                let app = app.clone();
                move |_| {
                    let app = app.clone();
                    async move { app.flush_fetches().await.map(drop) }
                }
            }))
            .with(Pass::new("powered off", SIGHTINGS_EVERY, {
                let app = app.clone();
                // A power reading taken before plinth's power-on lands within a call timeout.
                let grace = c.bmc.job_settings().call_timeout;
                move |_| {
                    let app = app.clone();
                    async move { app.fail_powered_off(grace).await.map(drop) }
                }
            }))
            .with(runner.stale_pass())
            .with(Pass::new("firmware rollouts", RECONCILE_EVERY, {
                let app = app.clone();
                move |_| {
                    let app = app.clone();
                    async move { app.rollout_pass().await.map(drop) }
                }
            }))
            .with(runner.recovery_pass())
            .with(plinth_core::scan::Scanner::new(app.clone(), c.bmc.scan.clone()).pass())
            .with(Pass::new("console recording", CONSOLE_EVERY, {
                let app = app.clone();
                move |_| {
                    let app = app.clone();
                    async move { app.record_consoles().await.map(drop) }
                }
            }));
        if let Some(sync) = c.bmc.sync_settings() {
            let sync = plinth_core::workers::PowerSync::new(app.clone(), connector, sync);
            reconciler = reconciler.with(sync.pass());
        }
        let cancel_jobs = cancel.clone();
        tasks.spawn(async move {
            runner
                .run(cancel_jobs)
                .await
                .map_err(|e| anyhow::anyhow!("BMC job runner: {}", e.message))
        });
        let cancel = cancel.clone();
        let app = app.clone();
        tasks.spawn(async move {
            reconciler.run(cancel).await;
            // The file fetches noted since the last pass, so a restart loses none.
            if let Err(e) = app.flush_fetches().await {
                tracing::warn!(error = %e.message, "file fetches not written at shutdown");
            }
            Ok(())
        });
    }
    {
        // Webhooks: every instance delivers; the database shares the queues. When stopping,
        // the event streams end at once (they would hold the HTTP drain otherwise).
        let worker =
            plinth_core::workers::WebhookWorker::new(app.clone(), c.events.webhooks.clone())
                .map_err(|e| anyhow::anyhow!("webhook worker: {}", e.message))?;
        let (app, cancel) = (app.clone(), cancel.clone());
        tasks.spawn(async move {
            let closing = cancel.clone();
            let streams = async move {
                closing.cancelled().await;
                app.close_event_streams();
            };
            let (delivered, ()) = tokio::join!(worker.run(cancel), streams);
            delivered.map_err(|e| anyhow::anyhow!("webhook worker: {}", e.message))
        });
    }
    let mut result = Ok(());
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        Some(done) = tasks.join_next() => {
            result = done.context("a task panicked").and_then(|r| r);
            if let Err(e) = &result { tracing::error!(error = %format!("{e:#}"), "a task failed; shutting down"); }
        }
    }
    cancel.cancel();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::error!(error = %format!("{e:#}"), "task ended with an error");
        }
    }
    db.close(true).await;
    tracing::info!("plinth stopped");
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers there is nothing to wait for but the tasks themselves.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub async fn migrate_only(args: &ServerArgs) -> anyhow::Result<()> {
    let c = load_config(args)?;
    init_tracing(&c)?;
    let db = open_database(&c).await?;
    eprintln!("migrations applied");
    db.close(false).await;
    Ok(())
}

/// The principal for commands run by whoever can reach the database directly.
fn local_admin() -> Principal {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    Principal {
        token_id: None,
        name: format!("cli:{user}"),
        role: plinth_types::Role::Admin,
    }
}

pub async fn create_token(
    args: &ServerArgs,
    name: &str,
    role: plinth_types::Role,
) -> anyhow::Result<()> {
    let c = load_config(args)?;
    let db = open_database(&c).await?;
    let app = App::new(db.pool.clone(), c.bmc_key()?);
    let res = app.create_token(&local_admin(), name, role).await;
    db.close(false).await;
    let created = res.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    println!("{}", created.secret);
    Ok(())
}

pub async fn create_user(
    args: &ServerArgs,
    username: &str,
    role: plinth_types::Role,
    password: Option<String>,
) -> anyhow::Result<()> {
    // Checked before asking for a password or opening the database.
    plinth_core::users::validate_username(username)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let password = match password {
        Some(p) => p,
        None => read_password(username)?,
    };
    plinth_core::users::validate_password(&password)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let c = load_config(args)?;
    let db = open_database(&c).await?;
    let app = App::new(db.pool.clone(), c.bmc_key()?);
    let res = app
        .set_user(&local_admin(), username, role, &password)
        .await;
    db.close(false).await;
    let (user, created) = res.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    eprintln!(
        "user {} {} with role {}",
        user.username,
        if created {
            "created"
        } else {
            "updated (its sessions ended)"
        },
        user.role
    );
    Ok(())
}

/// The new password: asked twice on the terminal, or one line of standard input.
fn read_password(username: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {username}: "))?;
        let again = rpassword::prompt_password("again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let p = line.trim_end_matches(['\r', '\n']).to_owned();
        anyhow::ensure!(!p.is_empty(), "no password on standard input");
        Ok(p)
    }
}

pub async fn revoke_token(args: &ServerArgs, name: &str) -> anyhow::Result<()> {
    let c = load_config(args)?;
    let db = open_database(&c).await?;
    let app = App::new(db.pool.clone(), c.bmc_key()?);
    let res = app.revoke_token(&local_admin(), name).await;
    db.close(false).await;
    res.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    eprintln!("token {name} revoked");
    Ok(())
}
