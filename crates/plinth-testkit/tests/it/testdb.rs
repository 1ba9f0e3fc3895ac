//! The test databases against the scratch PostgreSQL: an earlier run's databases are dropped, a
//! recent one (this run's, or a concurrent run's) is kept.

use plinth_testkit::{TestDb, drop_stale_databases, with_database};

async fn exists(server: &str, name: &str) -> bool {
    let admin = plinth_db::connect(server, 1).await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap();
    admin.close().await;
    n == 1
}

#[tokio::test]
async fn an_earlier_runs_databases_are_dropped_and_recent_ones_kept() {
    let fresh = TestDb::empty().await.unwrap();
    let server = with_database(&fresh.url, "postgres");
    // An hour and a half ago, in the name's own form; and one named as before names carried
    // their time.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 5400;
    let id = || uuid::Uuid::new_v4().simple().to_string();
    let old = format!("plinth_test_{secs}_{}", id());
    let older = format!("plinth_test_{}", id());
    // Not the test kit's: never touched.
    let other = format!("plinth_keep_{}", id());
    let admin = plinth_db::connect(&server, 1).await.unwrap();
    for name in [&old, &older, &other] {
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;

    let dropped = drop_stale_databases(&server).await.unwrap();
    assert!(dropped >= 2, "{dropped}");
    assert!(!exists(&server, &old).await);
    assert!(!exists(&server, &older).await);
    assert!(
        exists(&server, &fresh.name).await,
        "a recent test database is kept"
    );
    assert!(exists(&server, &other).await);
    // The kept database still works.
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&fresh.pool)
        .await
        .unwrap();
    assert_eq!(one, 1);

    let admin = plinth_db::connect(&server, 1).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("drop database {other}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}
