//! plinth-db: every SQL statement plinth runs, and the embedded PostgreSQL it can start.
//!
//! One module per table; free functions that take a connection or transaction, so the
//! caller (plinth-core) decides transaction boundaries. It knows nothing of HTTP, DHCP or
//! BMCs. Queries are checked at compile time against the offline cache in `.sqlx/`.

pub mod allocations;
pub mod bios;
pub mod bmcs;
pub mod boot;
pub mod cluster;
pub mod console;
pub mod credentials;
pub mod deployments;
pub mod dhcp_view;
pub mod embedded;
mod error;
pub mod events;
pub mod feed;
pub mod firmware;
pub mod health;
pub mod images;
pub mod inventory;
pub mod jobs;
pub mod leases;
pub mod machines;
pub mod metrics;
pub mod migrate;
pub mod nics;
pub mod pools;
pub mod racks;
pub mod scans;
pub mod sightings;
pub mod subnets;
pub mod tokens;
pub mod users;
pub mod vmedia;
pub mod webhooks;

pub use error::{Error, Result, Violation};
pub use migrate::{MIGRATOR, MigrateError, migrate};
pub use sqlx::pool::PoolConnection;
pub use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// Opens a pool to `url`, which may name several hosts (see [`cluster`]). `max_connections`
/// bounds what one plinth instance takes.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_all(&[url], max_connections).await
}

/// Opens a pool to the primary among `urls`' hosts (one URL of one host: that host).
pub async fn connect_all<S: AsRef<str>>(
    urls: &[S],
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    let targets =
        cluster::Targets::parse(urls).map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
    cluster::connect_targets(targets, max_connections).await
}

/// Whether the database answers (health checks).
pub async fn ping(pool: &PgPool) -> Result<()> {
    sqlx::query("select 1").execute(pool).await?;
    Ok(())
}

/// A connection from the pool.
pub async fn acquire(pool: &PgPool) -> Result<PoolConnection<Postgres>> {
    Ok(pool.acquire().await?)
}

/// A transaction on a connection from the pool; dropped without `commit`, it rolls back.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    Ok(pool.begin().await?)
}

/// Commits `tx`.
pub async fn commit(tx: Transaction<'_, Postgres>) -> Result<()> {
    Ok(tx.commit().await?)
}

/// A connection that LISTENs on one channel: each NOTIFY on it is one `recv`.
pub struct Listener(sqlx::postgres::PgListener);

impl Listener {
    pub async fn connect(pool: &PgPool, channel: &str) -> Result<Listener> {
        let mut l = sqlx::postgres::PgListener::connect_with(pool).await?;
        l.listen(channel).await?;
        Ok(Listener(l))
    }

    /// Waits for the next NOTIFY. An error means the connection is gone: connect again.
    pub async fn recv(&mut self) -> Result<()> {
        self.0.recv().await?;
        Ok(())
    }

    /// Waits for the next NOTIFY and returns its payload; `None` when the connection was lost
    /// and made again (notifications sent meanwhile are lost: whatever they would have kept
    /// fresh must be read again). An error means the connection is gone: connect again.
    pub async fn next_payload(&mut self) -> Result<Option<String>> {
        Ok(self.0.try_recv().await?.map(|n| n.payload().to_owned()))
    }
}

/// Turns a database error into what the client should hear. Constraint violations become
/// clear 4xx errors named after the rule that was broken; anything else is logged here, once,
/// with its whole chain and the caller's place in the code (`#[track_caller]` through the
/// callers' `.db()`), and becomes an opaque internal error.
#[track_caller]
pub fn classify(err: impl Into<Error>) -> plinth_types::Error {
    use plinth_types::Error as ApiError;
    let err: Error = err.into();
    let at = std::panic::Location::caller();
    if let Error::Violation {
        kind,
        constraint,
        message,
    } = &err
    {
        let constraint = constraint.as_str();
        let known = match constraint {
            "nics_mac_key" => Some(ApiError::conflict(
                "duplicate_mac",
                "a NIC with this MAC address is already enrolled",
            )),
            "nics_ipv4_key" => Some(ApiError::conflict(
                "duplicate_ipv4",
                "this IPv4 address is already reserved for another NIC",
            )),
            "machines_hostname_key" => Some(ApiError::conflict(
                "duplicate_hostname",
                "another machine already has this hostname",
            )),
            "machines_rack_overlap" => Some(ApiError::conflict(
                "rack_slot_taken",
                "another machine already occupies these rack units",
            )),
            "machines_rack_fit" => {
                Some(ApiError::invalid("rack_slot_out_of_range", message.clone()))
            }
            "racks_height_holds_machines" => {
                Some(ApiError::conflict("rack_not_empty", message.clone()))
            }
            "racks_name_key" => Some(ApiError::conflict(
                "duplicate_rack",
                "a rack with this name already exists",
            )),
            "subnets_overlap" => Some(ApiError::conflict(
                "subnet_overlap",
                "the subnet overlaps an existing subnet",
            )),
            "subnet_ranges_inside" => {
                Some(ApiError::invalid("range_outside_subnet", message.clone()))
            }
            "subnet_ranges_overlap" => Some(ApiError::invalid("ranges_overlap", message.clone())),
            "api_tokens_name_key" => Some(ApiError::conflict(
                "duplicate_token",
                "a token with this name already exists",
            )),
            "deployments_image_id_fkey" => Some(ApiError::conflict(
                "image_in_use",
                "a deployment uses this image; release its machine first",
            )),
            "images_name_key" => Some(ApiError::conflict(
                "duplicate_image",
                "an image with this name already exists",
            )),
            "images_path_key" => Some(ApiError::conflict(
                "duplicate_image_path",
                "another image already names this file",
            )),
            "machines_rack_id_fkey" => Some(ApiError::conflict(
                "rack_not_empty",
                "the rack still holds machines",
            )),
            _ => None,
        };
        if let Some(e) = known {
            return e;
        }
        if *kind == Violation::Check {
            // A check constraint the application should have caught first; say which.
            return ApiError::invalid(
                "constraint_violation",
                format!("the value breaks the rule {constraint}"),
            );
        }
    }
    if err.is_retryable() {
        ERRORS
            .conflict
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(error = %err, %at, "a concurrent change got in the way");
        return ApiError::unavailable("a concurrent change got in the way: try again");
    }
    if err.is_unavailable() {
        ERRORS
            .unavailable
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(error = %err, %at, "database unavailable");
        return ApiError::unavailable("the database is unavailable");
    }
    ERRORS
        .internal
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!(error = ?err, %at, "database error");
    ApiError::internal()
}

/// Database errors this process met, by [`classify`]'s classes (not the constraint
/// violations that are the caller's mistake): for `/metrics`.
#[derive(Debug, Default)]
pub struct ErrorCounts {
    /// A serialization failure or deadlock with a concurrent change (retryable).
    pub conflict: std::sync::atomic::AtomicU64,
    /// No connection, a connection lost, the primary gone.
    pub unavailable: std::sync::atomic::AtomicU64,
    /// Anything else (a bug, or a database in trouble).
    pub internal: std::sync::atomic::AtomicU64,
}

pub static ERRORS: ErrorCounts = ErrorCounts {
    conflict: std::sync::atomic::AtomicU64::new(0),
    unavailable: std::sync::atomic::AtomicU64::new(0),
    internal: std::sync::atomic::AtomicU64::new(0),
};

/// An address from an IPv4-only column (the schema checks `family(...) = 4`).
pub(crate) fn ipv4(a: std::net::IpAddr) -> Result<std::net::Ipv4Addr> {
    match a {
        std::net::IpAddr::V4(v4) => Ok(v4),
        std::net::IpAddr::V6(v6) => Err(Error::protocol(format!(
            "an IPv6 address ({v6}) in an IPv4-only column"
        ))),
    }
}

/// Escapes `%`, `_` and `\` for use inside an ILIKE pattern.
pub fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
