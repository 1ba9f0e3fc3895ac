//! The migrations and the SQL of `sql/`: landed migrations never change, `schema.sql` is what
//! they make, and databases from before the re-baseline are brought forward or refused.

use std::path::PathBuf;

use plinth_db::{MigrateError, migrate};
use plinth_testkit::TestDb;
use sha2::{Digest, Sha256};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn workspace_dir() -> PathBuf {
    crate_dir().join("../..")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A migration that has landed is never edited: databases that applied it would refuse to
/// start. Every file of `migrations/` is held to its line in `landed-migrations.sha256`.
#[test]
fn landed_migrations_never_change() {
    let list = std::fs::read_to_string(crate_dir().join("landed-migrations.sha256")).unwrap();
    let mut listed = Vec::new();
    for line in list.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, file) = line
            .split_once("  ")
            .unwrap_or_else(|| panic!("not `<sha256>  <file>`: {line:?}"));
        let text = std::fs::read(workspace_dir().join(file))
            .unwrap_or_else(|e| panic!("{file} is listed as landed but cannot be read: {e}"));
        assert_eq!(
            sha256_hex(&text),
            sum,
            "{file} changed after it landed: put the change into a new migration instead"
        );
        listed.push(file.to_owned());
    }
    let mut files: Vec<String> = std::fs::read_dir(workspace_dir().join("migrations"))
        .unwrap()
        .map(|e| format!("migrations/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    files.sort();
    for f in &files {
        assert!(
            listed.contains(f),
            "{f} is not in crates/plinth-db/landed-migrations.sha256: once it is final, \
             run `sha256sum {f} >> crates/plinth-db/landed-migrations.sha256`"
        );
    }
    assert!(!files.is_empty());
}

/// Every file of `sql/` is applied, in name order, as it is on disk.
#[test]
fn every_sql_file_is_applied() {
    let mut files: Vec<(String, String)> = std::fs::read_dir(crate_dir().join("sql"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    let code: Vec<(String, String)> = plinth_db::migrate::CODE
        .iter()
        .map(|(f, s)| (f.to_string(), s.to_string()))
        .collect();
    assert_eq!(
        code.iter().map(|(f, _)| f).collect::<Vec<_>>(),
        files.iter().map(|(f, _)| f).collect::<Vec<_>>(),
        "plinth_db::migrate::CODE must list every file of crates/plinth-db/sql/, in name order"
    );
    assert_eq!(code, files);
}

/// Compares a database's schema with the committed `schema.sql`. With PLINTH_BLESS=1 the
/// file is rewritten instead (after a deliberate change; review the diff).
fn assert_schema_is_committed(db: &TestDb, what: &str) {
    let path = crate_dir().join("schema.sql");
    let got = db.schema().unwrap();
    if std::env::var_os("PLINTH_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        let actual = std::env::temp_dir().join(format!("plinth-schema-{}.sql", db.name));
        std::fs::write(&actual, &got).unwrap();
        let diff = std::process::Command::new("diff")
            .arg("-u")
            .arg(&path)
            .arg(&actual)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "{what}: the schema differs from crates/plinth-db/schema.sql (rewrite it with \
             PLINTH_BLESS=1 cargo test -p plinth-db --test it schema):\n{}",
            diff.lines().take(80).collect::<Vec<_>>().join("\n")
        );
    }
}

/// The versions of every migration of `migrations/`, the baseline first.
fn every_migration() -> Vec<i64> {
    let v: Vec<i64> = plinth_db::MIGRATOR.iter().map(|m| m.version).collect();
    assert_eq!(v.first(), Some(&plinth_db::migrate::BASELINE_VERSION));
    v
}

async fn applied(db: &TestDb) -> Vec<i64> {
    sqlx::query_scalar("select version from _sqlx_migrations order by version")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// `schema.sql` is what the migrations and `sql/` make of an empty database, and applying them
/// again at the next start changes nothing.
#[tokio::test]
async fn schema_sql_is_what_migrate_makes() {
    let db = TestDb::new().await.unwrap();
    assert_schema_is_committed(&db, "a freshly migrated database");
    migrate(&db.pool).await.unwrap();
    migrate(&db.pool).await.unwrap();
    assert_schema_is_committed(&db, "a database migrated three times");
    assert_eq!(applied(&db).await, every_migration());
}

/// Instances that start together take turns: concurrent migrations all succeed, once.
#[tokio::test]
async fn concurrent_starts_migrate_once() {
    let db = TestDb::empty().await.unwrap();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move { migrate(&pool).await })
        })
        .collect();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    assert_eq!(applied(&db).await, every_migration());
    assert_schema_is_committed(&db, "four instances migrating at once");
}

fn fixture(name: &str) -> PathBuf {
    crate_dir().join("tests/fixtures").join(name)
}

async fn pre_baseline() -> TestDb {
    let db = TestDb::empty().await.unwrap();
    db.psql_file(&fixture("pre-baseline.sql")).unwrap();
    db
}

/// A database that applied the fifteen migrations the baseline replaced is recorded as having
/// applied the baseline, and ends up with exactly the schema of a fresh one.
#[tokio::test]
async fn a_database_from_before_the_baseline_is_brought_forward() {
    let db = pre_baseline().await;
    assert_eq!(applied(&db).await.len(), 15);
    migrate(&db.pool).await.unwrap();
    assert_eq!(applied(&db).await, every_migration());
    assert_schema_is_committed(&db, "a pre-baseline database brought forward");
}

async fn refused(db: &TestDb, sql: &str) -> String {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&db.pool)
        .await
        .unwrap();
    let before = db.schema().unwrap();
    let err = migrate(&db.pool).await.unwrap_err();
    assert!(matches!(err, MigrateError::Unrecognised(_)), "{err:?}");
    // Refused means untouched.
    assert_eq!(db.schema().unwrap(), before);
    assert_eq!(
        applied(db).await.len(),
        14 + usize::from(!sql.contains("delete"))
    );
    err.to_string()
}

/// Anything else from before the baseline is refused with what was found, and left as it was.
#[tokio::test]
async fn an_unfinished_or_edited_pre_baseline_database_is_refused() {
    let db = pre_baseline().await;
    let msg = refused(
        &db,
        "delete from _sqlx_migrations where version = 20261205000015",
    )
    .await;
    assert!(
        msg.contains("stopped before migration 20261205000015 (14 of 15 applied)"),
        "{msg}"
    );
    assert!(msg.contains("empty database"), "{msg}");

    let db = pre_baseline().await;
    let msg = refused(
        &db,
        "update _sqlx_migrations set checksum = '\\x00' where version = 20261205000010",
    )
    .await;
    assert!(
        msg.contains("migration 20261205000010 is not the one that landed"),
        "{msg}"
    );
}
