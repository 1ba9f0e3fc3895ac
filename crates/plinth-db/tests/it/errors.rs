//! Database errors, classified from what a real PostgreSQL answers: the constraint a write
//! broke, a missing row, a database that is away; and what the client hears of each.

use plinth_db::racks::{RackFields, insert};
use plinth_db::{Error, Violation, classify};
use plinth_testkit::TestDb;
use plinth_types::ErrorKind;

fn rack(height_u: i32) -> RackFields<'static> {
    RackFields {
        site: None,
        room: None,
        row_name: None,
        height_u,
    }
}

#[tokio::test]
async fn violations_name_their_constraint_and_become_clear_client_errors() {
    let db = TestDb::new().await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    insert(&mut conn, "r1", &rack(42)).await.unwrap();

    let dup = insert(&mut conn, "r1", &rack(42)).await.unwrap_err();
    assert!(
        matches!(&dup, Error::Violation { kind: Violation::Unique, constraint, .. } if constraint == "racks_name_key"),
        "{dup:?}"
    );
    let api = classify(dup);
    assert_eq!(
        (api.kind, api.code),
        (ErrorKind::Conflict, "duplicate_rack")
    );

    let check = insert(&mut conn, "r2", &rack(0)).await.unwrap_err();
    assert!(
        matches!(
            check,
            Error::Violation {
                kind: Violation::Check,
                ..
            }
        ),
        "{check:?}"
    );
    assert_eq!(classify(check).kind, ErrorKind::InvalidInput);

    // A machine that points at a rack that is not there: a foreign key.
    let fk = sqlx::query("insert into machines (state, rack_id, rack_unit) values ('enrolled', gen_random_uuid(), 1)")
        .execute(&mut *conn)
        .await
        .map_err(Error::from)
        .unwrap_err();
    assert!(
        matches!(&fk, Error::Violation { kind: Violation::ForeignKey, constraint, .. } if constraint == "machines_rack_id_fkey"),
        "{fk:?}"
    );

    // A trigger raising check_violation with a constraint name is classified by that name.
    let rack_id: uuid::Uuid = sqlx::query_scalar("select id from racks where name = 'r1'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let fit = sqlx::query(
        "insert into machines (state, rack_id, rack_unit, size_u) values ('enrolled', $1, 42, 2)",
    )
    .bind(rack_id)
    .execute(&mut *conn)
    .await
    .map_err(Error::from)
    .unwrap_err();
    assert_eq!(fit.constraint(), Some("machines_rack_fit"), "{fit:?}");
    let api = classify(fit);
    assert_eq!(
        (api.kind, api.code),
        (ErrorKind::InvalidInput, "rack_slot_out_of_range")
    );
    assert!(
        api.message.contains("does not fit in a 42U rack"),
        "{}",
        api.message
    );
}

#[tokio::test]
async fn a_missing_row_and_an_absent_database_are_told_apart() {
    let db = TestDb::new().await.unwrap();
    let missing = sqlx::query_scalar::<_, i32>("select 1 where false")
        .fetch_one(&db.pool)
        .await
        .map_err(Error::from)
        .unwrap_err();
    assert!(matches!(missing, Error::NotFound), "{missing:?}");

    db.pool.close().await;
    let away = plinth_db::ping(&db.pool).await.unwrap_err();
    assert!(away.is_unavailable(), "{away:?}");
    let api = classify(away);
    assert_eq!(api.kind, ErrorKind::Unavailable);
}

#[tokio::test]
async fn anything_else_is_internal_and_says_nothing_of_the_cause() {
    let db = TestDb::new().await.unwrap();
    let e = sqlx::query("select no_such_column from racks")
        .execute(&db.pool)
        .await
        .map_err(Error::from)
        .unwrap_err();
    assert!(matches!(e, Error::Other(_)), "{e:?}");
    let api = classify(e);
    assert_eq!(api.kind, ErrorKind::Internal);
    assert!(!api.message.contains("no_such_column"), "{}", api.message);
}
