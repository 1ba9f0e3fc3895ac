//! A database that may be a cluster: a libpq-style URL with several hosts
//! (`postgres://plinth@db1,db2:5433,db3/plinth?target_session_attrs=read-write`) or several
//! URLs. plinth writes, so with more than one host it connects only to the writable primary:
//! every new connection checks it is not a standby (a standby's is refused), and a watcher
//! checks the primary every second; when it is gone or has become a standby (a failover), the
//! watcher finds the new one among the hosts, points the pool's new connections at it, and has
//! every connection opened before the switch dropped instead of handed out. The watcher ends
//! when the pool is closed.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// How often the watcher checks that the primary is still the primary.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How long one probe of a host may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `database.url` may say that plinth cannot use.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("the database URL must start with postgres:// or postgresql://")]
    Scheme,
    #[error(
        "target_session_attrs={0} is not supported: plinth writes, so it connects to the primary (read-write or primary)"
    )]
    SessionAttrs(String),
    #[error("no database URL given")]
    Empty,
    #[error(
        "the database URL lists {hosts} hosts but {ports} ports: give one port, or one per host"
    )]
    Ports { hosts: usize, ports: usize },
    #[error("database URL host {host:?}: {source}")]
    Host {
        host: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Where plinth may find its database: one or more hosts, and whether it must be the primary.
#[derive(Debug, Clone)]
pub struct Targets {
    pub hosts: Vec<PgConnectOptions>,
    /// Only a writable server will do: more than one host, or `target_session_attrs` said so.
    pub read_write: bool,
}

impl Targets {
    /// Parses each URL (libpq style; a URL may list several `host[:port]`, comma-separated).
    pub fn parse<S: AsRef<str>>(urls: &[S]) -> Result<Targets, UrlError> {
        let mut hosts = Vec::new();
        let mut read_write = false;
        for url in urls {
            let (expanded, rw) = expand(url.as_ref())?;
            read_write |= rw;
            for u in expanded {
                let opts = PgConnectOptions::from_str(&u).map_err(|source| UrlError::Host {
                    host: host_of(&u),
                    source,
                })?;
                // `application_name` from the URL names the instance in pg_stat_activity.
                let opts = match opts.get_application_name() {
                    Some(_) => opts,
                    None => opts.application_name("plinth"),
                };
                hosts.push(opts);
            }
        }
        if hosts.is_empty() {
            return Err(UrlError::Empty);
        }
        read_write |= hosts.len() > 1;
        Ok(Targets { hosts, read_write })
    }
}

/// One URL per host of `url`, `target_session_attrs` taken out (sqlx does not know it), and
/// whether it asked for a writable server.
fn expand(url: &str) -> Result<(Vec<String>, bool), UrlError> {
    let scheme_end = ["postgres://", "postgresql://"]
        .iter()
        .find(|s| url.starts_with(*s))
        .map(|s| s.len())
        .ok_or(UrlError::Scheme)?;
    let (scheme, rest) = url.split_at(scheme_end);
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    let mut read_write = false;
    let mut kept = Vec::new();
    // libpq's other form: `?host=/run/a,/run/b&port=5432,5433` (Unix sockets among them).
    let (mut hosts_param, mut ports_param) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", v)) => match v {
                "read-write" | "primary" => read_write = true,
                "any" => {}
                other => return Err(UrlError::SessionAttrs(other.to_owned())),
            },
            Some(("host", v)) if v.contains(',') => hosts_param = Some(v),
            Some(("port", v)) if v.contains(',') => ports_param = Some(v),
            _ => kept.push(pair),
        }
    }
    let with = |extra: Vec<String>| {
        let all: Vec<&str> = kept
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .collect();
        if all.is_empty() {
            String::new()
        } else {
            format!("?{}", all.join("&"))
        }
    };
    let urls = match (hosts_param, ports_param) {
        (None, None) => hostlist
            .split(',')
            .map(|h| format!("{scheme}{userinfo}{h}{path}{}", with(vec![])))
            .collect(),
        (hosts, ports) => {
            let hosts: Vec<&str> = hosts.map_or(vec![hostlist], |h| h.split(',').collect());
            let ports: Vec<&str> = ports.map_or(vec![], |p| p.split(',').collect());
            if ports.len() > 1 && ports.len() != hosts.len() {
                return Err(UrlError::Ports {
                    hosts: hosts.len(),
                    ports: ports.len(),
                });
            }
            hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let mut extra = vec![format!("host={h}")];
                    if let Some(p) = ports.get(i).or(ports.first()) {
                        extra.push(format!("port={p}"));
                    }
                    let authority = if h.starts_with('/') { "localhost" } else { "" };
                    format!("{scheme}{userinfo}{authority}{path}{}", with(extra))
                })
                .collect()
        }
    };
    Ok((urls, read_write))
}

/// The host part of a single-host URL, for messages (never the password).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_owned()
}

fn describe(o: &PgConnectOptions) -> String {
    match o.get_socket() {
        Some(s) => s.display().to_string(),
        None => format!("{}:{}", o.get_host(), o.get_port()),
    }
}

/// Whether the server on `conn` is a standby.
async fn in_recovery(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select pg_is_in_recovery()")
        .fetch_one(conn)
        .await
}

/// The first host (in the order given) that answers as a primary, with a connection to it.
/// Every host is probed at once.
async fn find_primary(targets: &Targets) -> Option<(usize, PgConnection)> {
    let mut probes = tokio::task::JoinSet::new();
    for (i, o) in targets.hosts.iter().cloned().enumerate() {
        probes.spawn(async move {
            let probe = async {
                let mut c = o.connect().await?;
                let standby = in_recovery(&mut c).await?;
                Ok::<_, sqlx::Error>((!standby).then_some(c))
            };
            match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(found)) => found.map(|c| (i, c)),
                Ok(Err(e)) => {
                    tracing::debug!(host = %describe(&o), error = %e, "database host not usable");
                    None
                }
                Err(_) => None,
            }
        });
    }
    let mut found: Vec<(usize, PgConnection)> =
        probes.join_all().await.into_iter().flatten().collect();
    found.sort_by_key(|(i, _)| *i);
    let mut found = found.into_iter();
    let first = found.next();
    for (_, extra) in found {
        // More than one primary: Patroni's fencing should never allow it; the first wins.
        tracing::warn!("more than one database host answers as a primary");
        let _ = extra.close().await;
    }
    first
}

/// When the pool was last pointed at a new primary.
#[derive(Default)]
struct Switched(Mutex<Option<Instant>>);

impl Switched {
    /// The lock guards one `Copy` value: a panic elsewhere cannot leave it half-written, so
    /// a poisoned lock is used as it is.
    fn at(&self) -> Option<Instant> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }
}

/// Opens a pool on `targets`' primary (or its one host), and with several hosts starts the
/// watcher that follows failovers; waits up to 30 s for a primary to appear.
pub async fn connect_targets(
    targets: Targets,
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    connect_targets_within(targets, max_connections, Duration::from_secs(30)).await
}

/// [`connect_targets`], waiting at most `wait` for a primary.
pub async fn connect_targets_within(
    targets: Targets,
    max_connections: u32,
    wait: Duration,
) -> Result<PgPool, sqlx::Error> {
    let base = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10));
    if !targets.read_write {
        return base.connect_with(targets.hosts[0].clone()).await;
    }
    let deadline = Instant::now() + wait;
    let (first, conn) = loop {
        if let Some(found) = find_primary(&targets).await {
            break found;
        }
        if Instant::now() > deadline {
            return Err(sqlx::Error::Configuration(
                format!(
                    "no primary among the database hosts {}",
                    targets
                        .hosts
                        .iter()
                        .map(describe)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let switched = Arc::new(Switched::default());
    let pool = base
        // A connection that lands on a standby (a demoted primary) is refused.
        .after_connect(|conn, _| {
            Box::pin(async move {
                if in_recovery(conn).await? {
                    return Err(sqlx::Error::Configuration(
                        "the database host is a standby, not the primary".into(),
                    ));
                }
                Ok(())
            })
        })
        // A connection opened before the last switch may be to the old primary: dropped.
        .before_acquire({
            let switched = switched.clone();
            move |_, meta| {
                let stale = switched.at().is_some_and(|at| meta.age > at.elapsed());
                Box::pin(async move { Ok(!stale) })
            }
        })
        .connect_with(targets.hosts[first].clone())
        .await?;
    tracing::info!(primary = %describe(&targets.hosts[first]), hosts = targets.hosts.len(), "connected to the database primary");
    tokio::spawn(watch(pool.clone(), targets, first, conn, switched));
    Ok(pool)
}

/// Checks the primary every second; after a failover, points the pool at the new one.
async fn watch(
    pool: PgPool,
    targets: Targets,
    mut current: usize,
    conn: PgConnection,
    switched: Arc<Switched>,
) {
    let mut conn = Some(conn);
    // While no primary answers: said at once, then every half minute, not every second.
    let mut without_since: Option<Instant> = None;
    let mut said_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if pool.is_closed() {
            if let Some(c) = conn.take() {
                let _ = c.close().await;
            }
            return;
        }
        let healthy = match conn.as_mut() {
            Some(c) => matches!(
                tokio::time::timeout(PROBE_TIMEOUT, in_recovery(c)).await,
                Ok(Ok(false))
            ),
            None => false,
        };
        if healthy {
            continue;
        }
        conn = None;
        let Some((found, c)) = find_primary(&targets).await else {
            let since = *without_since.get_or_insert_with(Instant::now);
            if said_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                tracing::warn!(
                    for_secs = since.elapsed().as_secs(),
                    "no database primary reachable: waiting for one"
                );
                said_at = Some(Instant::now());
            }
            continue;
        };
        if let Some(since) = without_since.take() {
            tracing::info!(
                after_secs = since.elapsed().as_secs(),
                "a database primary answers again"
            );
            said_at = None;
        }
        conn = Some(c);
        if found != current {
            tracing::warn!(
                from = %describe(&targets.hosts[current]),
                to = %describe(&targets.hosts[found]),
                "the database primary moved: following it"
            );
            pool.set_connect_options(targets.hosts[found].clone());
            switched.now();
            current = found;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_hosts_are_several_urls_without_target_session_attrs() {
        let (urls, rw) = expand(
            "postgres://plinth:pw@db1,db2:5433,[::1]:5434/plinth?target_session_attrs=read-write&sslmode=require",
        )
        .unwrap();
        assert_eq!(
            urls,
            [
                "postgres://plinth:pw@db1/plinth?sslmode=require",
                "postgres://plinth:pw@db2:5433/plinth?sslmode=require",
                "postgres://plinth:pw@[::1]:5434/plinth?sslmode=require",
            ]
        );
        assert!(rw);
        let t = Targets::parse(&["postgresql://u@h1,h2/db"]).unwrap();
        assert_eq!(t.hosts.len(), 2);
        assert_eq!(t.hosts[1].get_host(), "h2");
        assert!(t.read_write, "several hosts: only the primary will do");
        let t = Targets::parse(&["postgres://u@h1/db", "postgres://u@h2:5433/db"]).unwrap();
        assert_eq!((t.hosts.len(), t.hosts[1].get_port()), (2, 5433));
        let t = Targets::parse(&["postgres://u@localhost/db?host=/run/pg"]).unwrap();
        assert!(!t.read_write, "one host: as before");
        assert_eq!(t.hosts[0].get_application_name(), Some("plinth"));
        let t = Targets::parse(&["postgres://u@h/db?application_name=plinth-a"]).unwrap();
        assert_eq!(t.hosts[0].get_application_name(), Some("plinth-a"));
        let (urls, _) =
            expand("postgres://u@/db?host=/run/a,/run/b&port=5432,5433&sslmode=disable").unwrap();
        assert_eq!(
            urls,
            [
                "postgres://u@localhost/db?sslmode=disable&host=/run/a&port=5432",
                "postgres://u@localhost/db?sslmode=disable&host=/run/b&port=5433",
            ]
        );
        let t = Targets::parse(&["postgres://u@/db?host=/run/a,/run/b&port=5432"]).unwrap();
        assert_eq!(t.hosts[1].get_socket().unwrap().to_str(), Some("/run/b"));
        assert_eq!(t.hosts[1].get_port(), 5432);
        let e = Targets::parse(&["postgres://u@/db?host=a,b,c&port=1,2"]).unwrap_err();
        assert!(e.to_string().contains("3 hosts but 2 ports"), "{e}");
    }

    #[test]
    fn what_plinth_cannot_use_is_named() {
        let e = Targets::parse(&["postgres://u@h1,h2/db?target_session_attrs=standby"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("target_session_attrs=standby is not supported"),
            "{e}"
        );
        let e = Targets::parse(&["mysql://u@h/db"]).unwrap_err().to_string();
        assert!(e.contains("postgres://"), "{e}");
        let e = Targets::parse(&["postgres://u:secret@h1,h2:notaport/db"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("h2:notaport") && !e.contains("secret"), "{e}");
        assert!(Targets::parse::<&str>(&[]).is_err());
    }
}
