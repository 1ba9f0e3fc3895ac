//! The events' feed trigger (sql/feed.sql): what an insert into `events` queues and wakes.

use plinth_testkit::TestDb;

/// A statement that inserts no event (a boot batch whose events are all past their cap, say)
/// queues no delivery and wakes no listener; one that inserts an event wakes them, once.
/// (Notifications arrive in commit order: the marker sent after the empty insert must come
/// first.)
#[tokio::test]
async fn only_a_statement_that_inserts_events_notifies() {
    let db = TestDb::new().await.unwrap();
    let mut l = plinth_db::Listener::connect(&db.pool, "events")
        .await
        .unwrap();
    sqlx::query("insert into webhooks (url, secret_nonce, secret_ciphertext, created_by) values ('http://127.0.0.1:9/', '\\x00'::bytea, '\\x00'::bytea, 'test')")
        .execute(&db.pool)
        .await
        .unwrap();
    let empty =
        sqlx::query("insert into events (actor, kind) select 'test', 'nothing' where false")
            .execute(&db.pool)
            .await
            .unwrap();
    assert_eq!(empty.rows_affected(), 0);
    sqlx::query("select pg_notify('events', 'marker')")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        l.next_payload().await.unwrap().as_deref(),
        Some("marker"),
        "the empty insert notified"
    );
    sqlx::query("insert into events (actor, kind) values ('test', 'something')")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(l.next_payload().await.unwrap().as_deref(), Some(""));
    let queued: i64 = sqlx::query_scalar("select count(*) from webhook_deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 1, "one delivery, for the one event");
}
