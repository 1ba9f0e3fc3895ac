//! Bringing a database to the schema this build expects, at every start.
//!
//! Three steps, on one connection, under one advisory lock so that instances starting together
//! take turns:
//! 1. a database made before the re-baseline of 2026-12-05 (the fifteen migrations it replaced,
//!    all applied, unchanged) is recorded as having applied the baseline instead — its schema is
//!    the same, checked when the baseline was written;
//! 2. the pending migrations of `migrations/` run (sqlx refuses a database whose applied
//!    migration changed: a landed migration is never edited);
//! 3. the SQL that is code rather than schema — functions and triggers, in `sql/` — is applied
//!    with `create or replace`, in one transaction, so that a new build's functions replace the
//!    old ones without a migration each time.

use sqlx::Connection;
use sqlx::PgConnection;
use sqlx::PgPool;

/// The schema migrations, embedded from `migrations/`. sqlx's own lock (a session's advisory
/// lock) is off: [`migrate`] holds a transaction's instead.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    locking: false,
    ..sqlx::migrate!("../../migrations")
};

/// Functions and triggers, every file of `sql/` in name order (a test checks the list against
/// the folder; scripts/sqlx-prepare.sh applies the same glob). Each file must be idempotent:
/// `create or replace`, or `drop ... if exists` before a signature change.
pub const CODE: &[(&str, &str)] = &[
    ("boot.sql", include_str!("../sql/boot.sql")),
    ("dhcp.sql", include_str!("../sql/dhcp.sql")),
    ("feed.sql", include_str!("../sql/feed.sql")),
    ("inventory.sql", include_str!("../sql/inventory.sql")),
    ("sightings.sql", include_str!("../sql/sightings.sql")),
];

/// The advisory lock migrations hold ("plinth" and 1): instances starting together take turns.
const LOCK_KEY: i64 = 0x706c_696e_7468_0001;

/// The migration that holds the whole schema as of the re-baseline.
pub const BASELINE_VERSION: i64 = 20261205120000;

/// The migrations the baseline replaced, with the SHA-384 checksums sqlx recorded for them as
/// they landed. A database that applied exactly these holds the baseline's schema.
const REPLACED: &[(i64, &str)] = &[
    (
        20261126000001,
        "918f0e6f269b8e75dfcf911207298abcb8df7ac02a36f08334eebd1bc7ba02e7c5627984df8d3effbd67ae4964eac54f",
    ),
    (
        20261126000002,
        "5fb4a46a3e5d2d58b6db45798e0f5887b870bd3a1b4743e2c27f65bf1945ac28c7780cf58657b4fdba197feb1a588610",
    ),
    (
        20261126000003,
        "5f29c1be5d9007776cdd7c07fa6545ec128be8193ec765c7fc0b5c8c2c595374d3bad1d3acf742602d93055875432e0c",
    ),
    (
        20261126000004,
        "24b35b4dbcf5dfe77a117b699027a3bcfec55891a331b2543b313810029726021ed78d1d59eb0cc405f778903aa713e5",
    ),
    (
        20261126000005,
        "a7797081c1b56f7c9bd9b220f34c65751d7054f1abf7ff4261dc52a06771aaef7edf7feb2349711545865e2f0c576baa",
    ),
    (
        20261126000006,
        "6f34542634cac3c0a8d45729173eb7e77ff36983d2ee834a579d5ece4d462e19d26258f17a3ccca8bd2868aa265b8a2e",
    ),
    (
        20261126000007,
        "6797b598966d48b1dcd09fa8109d90ff2237d792b2653d05bd4db626c2ad1a5a42f9b07d4c97bdbc7c6badcd051f3370",
    ),
    (
        20261126000008,
        "b62ae328c2215e7c96835f01b43368abe3e13d1cee8116f3a1b9fa1de9e5ba6d0ff4d21c71804d06088c952cb52b7458",
    ),
    (
        20261126000009,
        "d672bfd1185f719ea08514b0692e478ff51ca4b6bce047b3cb3f2e1efc8478a03ebe2a02bbde5f65a7ce4e85ca4b181c",
    ),
    (
        20261205000010,
        "c37e0e31b7ea980637a298e3d867ddef785f2be7cfa8de90af9faeb432bcbdb8b0dc18b2c269165d6621d0eb247244e1",
    ),
    (
        20261205000011,
        "da801f61859364a1c47668ea73cc1e28f27f61a653a01451d5e531d1acad7e54679de3d45819273612417bd6ddd2fd9c",
    ),
    (
        20261205000012,
        "0e147ba72add29e49d676d8b4e3388101ddaf4a15e6ff49815bae596dfe972f9fa06c02c2a7ec2fefd3a1c4210e6f305",
    ),
    (
        20261205000013,
        "c74b4d5b9accd326e38b0a270b4c6dcd58633a5c2b330c6afaf0c37de724099aa3cf6ab569f648e96c520bc462d6c4d2",
    ),
    (
        20261205000014,
        "a87f720b87ad0579a2cd991bc45219561a8efaada2600c7218f394f595ac54f65119fb64bb9f6f8a5dc81dcd0128eb40",
    ),
    (
        20261205000015,
        "97bfc60e61ee333f13ee5441838317acd751e962b308dd64165dd7f7d5a38bff946ba23ca6a52506f5f68529f0a18258",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "this database predates plinth's re-baseline of 2026-12-05 and cannot be brought forward: {0}. \
         Start plinth from an empty database (or an older plinth, commit 426c6ac, to finish its migrations first)"
    )]
    Unrecognised(String),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("applying crates/plinth-db/sql/{file}: {source}")]
    Code {
        file: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("{op}: {source}")]
    Database {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> MigrateError {
    move |source| MigrateError::Database { op, source }
}

/// Runs the pending migrations, then applies the functions and triggers of `sql/`.
///
/// Instances starting together take turns on an advisory lock held by a transaction on a
/// connection of its own (beside the pool, on the same server): plinth holds no session-level
/// lock anywhere, so a connection lost in a failover leaves nothing held behind.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    use sqlx::{ConnectOptions, Connection};
    let mut holder = pool
        .connect_options()
        .connect()
        .await
        .map_err(db("connecting"))?;
    let mut lock = holder.begin().await.map_err(db("beginning"))?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *lock)
        .await
        .map_err(db("taking the migration lock"))?;
    let result = async {
        let mut conn = pool.acquire().await.map_err(db("connecting"))?;
        migrate_locked(&mut conn).await
    }
    .await;
    // Ending the transaction releases the lock.
    let released = lock.rollback().await;
    let _ = holder.close().await;
    result?;
    released.map_err(db("releasing the migration lock"))?;
    Ok(())
}

async fn migrate_locked(conn: &mut PgConnection) -> Result<(), MigrateError> {
    adopt_replaced_migrations(conn).await?;
    // `run` with a connection (its `Acquire` bound is not general enough for a spawned future).
    MIGRATOR.run_direct(None, conn, false).await?;
    let mut tx = conn.begin().await.map_err(db("beginning"))?;
    for (file, sql) in CODE {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(|source| MigrateError::Code { file, source })?;
    }
    tx.commit().await.map_err(db("committing sql/"))?;
    Ok(())
}

/// Step 1: a database that applied the fifteen migrations the baseline replaced is recorded
/// as having applied the baseline. Anything else from before the baseline is refused with
/// what was found, rather than half-migrated.
async fn adopt_replaced_migrations(conn: &mut PgConnection) -> Result<(), MigrateError> {
    let exists: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("looking for applied migrations"))?;
    if !exists {
        return Ok(());
    }
    let applied: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("select version, checksum, success from _sqlx_migrations order by version")
            .fetch_all(&mut *conn)
            .await
            .map_err(db("reading applied migrations"))?;
    let old: Vec<&(i64, Vec<u8>, bool)> = applied
        .iter()
        .filter(|(v, _, _)| *v < BASELINE_VERSION)
        .collect();
    if old.is_empty() {
        return Ok(());
    }
    if applied.iter().any(|(v, _, _)| *v >= BASELINE_VERSION) {
        return Err(MigrateError::Unrecognised(format!(
            "it records both the baseline and {} migrations from before it",
            old.len()
        )));
    }
    for (version, checksum) in REPLACED {
        match old.iter().find(|(v, _, _)| v == version) {
            None => {
                return Err(MigrateError::Unrecognised(format!(
                    "it stopped before migration {version} ({} of {} applied)",
                    old.len(),
                    REPLACED.len()
                )));
            }
            Some((_, _, false)) => {
                return Err(MigrateError::Unrecognised(format!(
                    "its migration {version} failed part-way"
                )));
            }
            Some((_, got, true)) if hex(got) != *checksum => {
                return Err(MigrateError::Unrecognised(format!(
                    "its migration {version} is not the one that landed (an edited copy was applied)"
                )));
            }
            Some(_) => {}
        }
    }
    if let Some((v, _, _)) = old
        .iter()
        .find(|(v, _, _)| !REPLACED.iter().any(|(r, _)| r == v))
    {
        return Err(MigrateError::Unrecognised(format!(
            "it applied migration {v}, which plinth never had"
        )));
    }
    let baseline = MIGRATOR
        .iter()
        .find(|m| m.version == BASELINE_VERSION)
        .expect("the baseline migration is embedded");
    let mut tx = conn.begin().await.map_err(db("beginning"))?;
    sqlx::query("delete from _sqlx_migrations where version < $1")
        .bind(BASELINE_VERSION)
        .execute(&mut *tx)
        .await
        .map_err(db("replacing the old migrations' records"))?;
    sqlx::query(
        "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
         values ($1, $2, true, $3, 0)",
    )
    .bind(BASELINE_VERSION)
    .bind(&*baseline.description)
    .bind(&*baseline.checksum)
    .execute(&mut *tx)
    .await
    .map_err(db("recording the baseline"))?;
    tx.commit()
        .await
        .map_err(db("committing the baseline record"))?;
    tracing::info!(
        replaced = REPLACED.len(),
        "the database's migrations from before the re-baseline are recorded as the baseline"
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
