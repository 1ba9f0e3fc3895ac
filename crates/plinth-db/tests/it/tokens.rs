//! Agent tokens as one row per machine and mode (migration 20261207010000, sql/boot.sql): what
//! the migration keeps of the rows before it, and the previous release's writes (revoke, then
//! insert) during a rolling upgrade.

use std::path::PathBuf;

use plinth_testkit::TestDb;
use uuid::Uuid;

const SLOTS: &str = "20261207010000_agent_token_slots.sql";

fn migrations_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../migrations")
}

async fn machine(db: &TestDb) -> Uuid {
    sqlx::query_scalar("insert into machines (state) values ('inspecting') returning id")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn exec(db: &TestDb, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&db.pool)
        .await
        .unwrap();
}

/// A database with many tokens per machine and mode (every script request added one) keeps the
/// newest of each machine and mode; a virtual-media boot naming a dropped token stays.
#[tokio::test]
async fn the_migration_keeps_each_machine_and_modes_newest_token() {
    let db = TestDb::empty().await.unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(migrations_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().as_ref() < SLOTS)
        .collect();
    files.sort();
    for f in &files {
        db.psql_file(f).unwrap();
    }
    let (a, b) = (machine(&db).await, machine(&db).await);
    exec(
        &db,
        &format!(
            "insert into agent_tokens (secret_sha256, machine_id, mode, created_at, expires_at,
                                       revoked_at, revoked_reason)
             select sha256(('{a}' || k)::bytea), '{a}', 'inspect', now() - k * interval '1 minute',
                    now() + interval '1 hour',
                    case when k > 0 then now() end, case when k > 0 then 'replaced by a newer token' end
             from generate_series(0, 4) k;
             insert into agent_tokens (secret_sha256, machine_id, mode, expires_at, used_at)
             values (sha256('{a}clean'::bytea), '{a}', 'clean', now(), now()),
                    (sha256('{b}'::bytea), '{b}', 'inspect', now() + interval '1 hour', null);
             insert into vmedia_boots (id_sha256, machine_id, token_sha256, mode, sealed_config)
             values (sha256('iso'::bytea), '{a}', sha256(('{a}' || 4)::bytea), 'inspect',
                     decode(repeat('00', 28), 'hex'));"
        ),
    )
    .await;
    db.psql_file(&migrations_dir().join(SLOTS)).unwrap();
    let kept: Vec<(Uuid, String, Vec<u8>, bool)> = sqlx::query_as(
        "select machine_id, mode, secret_sha256, revoked_at is null from agent_tokens
         order by machine_id = $1 desc, mode",
    )
    .bind(a)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let sha = |s: String| -> Vec<u8> {
        use sha2::{Digest, Sha256};
        Sha256::digest(s.as_bytes()).to_vec()
    };
    assert_eq!(
        kept,
        vec![
            (a, "clean".to_owned(), sha(format!("{a}clean")), true),
            (a, "inspect".to_owned(), sha(format!("{a}0")), true),
            (b, "inspect".to_owned(), sha(format!("{b}")), true),
        ]
    );
    let boots: i64 = sqlx::query_scalar("select count(*) from vmedia_boots")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(boots, 1, "kept until the purge pass");
}

/// The previous release mints by revoking the live token and inserting a row; its insert
/// replaces the row of the machine and mode in place (the trigger), and it still finds tokens
/// by their hash (without an index: a scan of one row per machine and mode).
#[tokio::test]
async fn the_previous_releases_revoke_and_insert_replace_the_row_in_place() {
    let db = TestDb::new().await.unwrap();
    let m = machine(&db).await;
    let insert = |k: &str| {
        format!(
            "insert into agent_tokens (secret_sha256, machine_id, mode, expires_at, bound_ip)
             values (sha256('{k}'::bytea), '{m}', 'inspect', now() + interval '1 hour', '10.0.0.{}')",
            k.len()
        )
    };
    exec(&db, &insert("a")).await;
    exec(
        &db,
        &format!(
            "update agent_tokens set revoked_at = now(), revoked_reason = 'replaced by a newer token'
             where machine_id = '{m}' and mode = 'inspect' and used_at is null and revoked_at is null"
        ),
    )
    .await;
    exec(&db, &insert("bb")).await;
    let row: (i64, Option<String>, Option<String>, bool, bool) = sqlx::query_as(
        "select count(*) over (), host(bound_ip), prev_revoked_reason,
                secret_sha256 = sha256('bb'::bytea) and prev_sha256 = sha256('a'::bytea),
                revoked_at is null and used_at is null and prev_revoked_at is not null
         from agent_tokens",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            1,
            Some("10.0.0.2".to_owned()),
            Some("replaced by a newer token".to_owned()),
            true,
            true
        )
    );
    // A used token, replaced, is remembered as used.
    exec(
        &db,
        &format!("update agent_tokens set used_at = now() where machine_id = '{m}'"),
    )
    .await;
    exec(&db, &insert("ccc")).await;
    let prev: (Option<String>, bool) =
        sqlx::query_as("select prev_revoked_reason, prev_used_at is not null from agent_tokens")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(prev, (None, true));
    let found: i64 = sqlx::query_scalar(
        "select count(*) from agent_tokens where secret_sha256 = sha256('ccc'::bytea)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(found, 1);
}
