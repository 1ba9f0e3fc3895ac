//! plinth-db: every SQL statement plinth runs, and the embedded PostgreSQL it can start.
//!
//! One module per table; free functions that take a connection or transaction, so the
//! caller (plinth-core) decides transaction boundaries. It knows nothing of HTTP, DHCP or
//! BMCs. Queries are checked at compile time against the offline cache in `.sqlx/`.

pub mod allocations;
pub mod bmcs;
pub mod boot;
pub mod deployments;
pub mod embedded;
pub mod events;
pub mod images;
pub mod inventory;
pub mod jobs;
pub mod leases;
pub mod machines;
pub mod migrate;
pub mod nics;
pub mod pools;
pub mod racks;
pub mod subnets;
pub mod tokens;
pub mod users;

use std::str::FromStr;
use std::time::Duration;

use plinth_types::Error;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use migrate::{MIGRATOR, MigrateError, migrate};
pub use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// Opens a pool to `url`. `max_connections` bounds what one plinth instance takes.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("plinth");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// Turns a database error into what the client should hear. Constraint violations become
/// clear 4xx errors named after the rule that was broken; anything else is logged here with
/// its whole chain and becomes an opaque internal error.
pub fn classify(err: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &err {
        let constraint = db.constraint().unwrap_or("");
        let known = match constraint {
            "nics_mac_key" => Some(Error::conflict(
                "duplicate_mac",
                "a NIC with this MAC address is already enrolled",
            )),
            "nics_ipv4_key" => Some(Error::conflict(
                "duplicate_ipv4",
                "this IPv4 address is already reserved for another NIC",
            )),
            "machines_hostname_key" => Some(Error::conflict(
                "duplicate_hostname",
                "another machine already has this hostname",
            )),
            "machines_rack_overlap" => Some(Error::conflict(
                "rack_slot_taken",
                "another machine already occupies these rack units",
            )),
            "machines_rack_fit" => Some(Error::invalid(
                "rack_slot_out_of_range",
                db.message().to_owned(),
            )),
            "racks_height_holds_machines" => {
                Some(Error::conflict("rack_not_empty", db.message().to_owned()))
            }
            "racks_name_key" => Some(Error::conflict(
                "duplicate_rack",
                "a rack with this name already exists",
            )),
            "subnets_overlap" => Some(Error::conflict(
                "subnet_overlap",
                "the subnet overlaps an existing subnet",
            )),
            "subnet_ranges_inside" => Some(Error::invalid(
                "range_outside_subnet",
                db.message().to_owned(),
            )),
            "subnet_ranges_overlap" => {
                Some(Error::invalid("ranges_overlap", db.message().to_owned()))
            }
            "api_tokens_name_key" => Some(Error::conflict(
                "duplicate_token",
                "a token with this name already exists",
            )),
            "deployments_image_id_fkey" => Some(Error::conflict(
                "image_in_use",
                "a deployment uses this image; release its machine first",
            )),
            "images_name_key" => Some(Error::conflict(
                "duplicate_image",
                "an image with this name already exists",
            )),
            "images_path_key" => Some(Error::conflict(
                "duplicate_image_path",
                "another image already names this file",
            )),
            "machines_rack_id_fkey" => Some(Error::conflict(
                "rack_not_empty",
                "the rack still holds machines",
            )),
            _ => None,
        };
        if let Some(e) = known {
            return e;
        }
        if db.code().as_deref() == Some("23514") {
            // A check constraint the application should have caught first; say which.
            return Error::invalid(
                "constraint_violation",
                format!("the value breaks the rule {constraint}"),
            );
        }
    }
    if matches!(
        err,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    ) {
        tracing::error!(error = %err, "database unavailable");
        return Error::unavailable("the database is unavailable");
    }
    tracing::error!(error = ?err, "database error");
    Error::internal()
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
