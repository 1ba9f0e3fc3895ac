//! The events' feed trigger (sql/feed.sql): what an insert into `events` queues and wakes.

use plinth_testkit::TestDb;

/// A statement that inserts no event (a boot batch whose events are all past their cap, say)
/// queues no delivery and wakes no listener; one that inserts an event wakes the streams'
/// listeners (`events`), once, and the webhook workers' (`webhooks`) only when a webhook wants
/// it. (Notifications arrive in commit order: a marker sent after a statement that must not
/// notify comes first.)
#[tokio::test]
async fn only_a_statement_that_inserts_events_notifies() {
    let db = TestDb::new().await.unwrap();
    let mut hooks = plinth_db::Listener::connect(&db.pool, "webhooks")
        .await
        .unwrap();
    sqlx::query("insert into events (actor, kind) values ('test', 'before any webhook')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("select pg_notify('webhooks', 'marker')")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        hooks.next_payload().await.unwrap().as_deref(),
        Some("marker"),
        "an event no webhook wants woke the webhook workers"
    );
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
    // (with a timeout: a trigger that never notifies `webhooks` must fail here, not hang)
    let woke = tokio::time::timeout(std::time::Duration::from_secs(10), hooks.next_payload()).await;
    assert_eq!(
        woke.ok().map(|p| p.unwrap()),
        Some(Some(String::new())),
        "a queued delivery wakes the webhook workers"
    );
    let queued: i64 = sqlx::query_scalar("select count(*) from webhook_deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 1, "one delivery, for the one event");
}
