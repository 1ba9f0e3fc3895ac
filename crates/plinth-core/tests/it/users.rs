//! Web UI users and sessions against a real PostgreSQL: argon2id hashes, one message for every
//! wrong login, the lockout after too many wrong passwords, sessions that end (logout, expiry,
//! a new password), and the principal a session acts as.

use plinth_core::users::{LOCK_AFTER, UiSession};
use plinth_core::{App, Principal};
use plinth_testkit::TestDb;
use plinth_types::{ErrorKind, Role};

async fn app() -> (App, TestDb) {
    let db = TestDb::new().await.unwrap();
    (db.app(), db)
}

fn admin() -> Principal {
    Principal {
        token_id: None,
        name: "cli:root".into(),
        role: Role::Admin,
    }
}

const PW: &str = "correct-horse-battery";

#[tokio::test]
async fn a_user_logs_in_acts_with_its_role_and_logs_out() {
    let (app, db) = app().await;
    let (u, created) = app
        .set_user(&admin(), "tech.1", Role::Operator, PW)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(u.role, Role::Operator);
    let hash: String =
        sqlx::query_scalar("select password_hash from users where username = 'tech.1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(PW));

    let login = app.login("tech.1", PW, None).await.unwrap();
    assert!(login.secret.starts_with("plinth_"));
    let s: UiSession = app.ui_session(&login.secret).await.unwrap();
    assert_eq!(s.username, "tech.1");
    assert_eq!(s.principal.name, "ui:tech.1");
    assert_eq!(s.principal.role, Role::Operator);
    assert!(s.csrf.len() >= 32);
    assert_ne!(s.csrf, login.secret);
    // The session's secret is stored as a hash only.
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from ui_sessions where secret_sha256 = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(&login.secret)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);

    // An operator may not manage users (the admin permission).
    let e = app
        .set_user(&s.principal, "other", Role::Admin, PW)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);

    app.logout(&login.secret).await.unwrap();
    let e = app.ui_session(&login.secret).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    let kinds: Vec<String> = sqlx::query_scalar("select kind from events order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(kinds, ["user_created", "user_login", "user_logout"]);
}

#[tokio::test]
async fn wrong_logins_all_look_alike_until_the_account_waits() {
    let (app, db) = app().await;
    app.set_user(&admin(), "alice", Role::Admin, PW)
        .await
        .unwrap();
    for (user, pw) in [
        ("nobody", PW),
        ("alice", "wrong-password"),
        ("bad name!", PW),
    ] {
        let e = app.login(user, pw, None).await.unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::Unauthorized, "wrong username or password")
        );
    }
    for _ in 1..LOCK_AFTER {
        app.login("alice", "still-wrong!", None).await.unwrap_err();
    }
    // Locked now: even the right password waits, with the same answer as a wrong one (the
    // wait is in the events).
    let e = app.login("alice", PW, None).await.unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::Unauthorized, "wrong username or password")
    );
    let locked: i64 = sqlx::query_scalar("select count(*) from events where kind = 'user_locked'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(locked, 1);

    // An admin setting a new password lifts the lock.
    app.set_user(&admin(), "alice", Role::Admin, "a-new-password")
        .await
        .unwrap();
    app.login("alice", "a-new-password", None).await.unwrap();
}

#[tokio::test]
async fn sessions_end_when_idle_too_long_or_when_the_password_changes() {
    let (app, db) = app().await;
    app.set_user(&admin(), "bob", Role::Viewer, PW)
        .await
        .unwrap();
    let a = app.login("bob", PW, None).await.unwrap();
    let b = app.login("bob", PW, None).await.unwrap();
    sqlx::query("update ui_sessions set expires_at = now() - interval '1 second' where secret_sha256 = sha256(convert_to($1, 'UTF8'))")
        .bind(&a.secret)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        app.ui_session(&a.secret).await.unwrap_err().kind,
        ErrorKind::Unauthorized
    );
    assert_eq!(app.ui_session(&b.secret).await.unwrap().username, "bob");
    // A new password ends every session of the user.
    let (_, created) = app
        .set_user(&admin(), "bob", Role::Viewer, "another-password")
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(
        app.ui_session(&b.secret).await.unwrap_err().kind,
        ErrorKind::Unauthorized
    );
    // Garbage is refused without a query.
    assert_eq!(
        app.ui_session("").await.unwrap_err().kind,
        ErrorKind::Unauthorized
    );
    assert_eq!(
        app.ui_session(&"x".repeat(300)).await.unwrap_err().kind,
        ErrorKind::Unauthorized
    );
}

#[tokio::test]
async fn bad_users_are_refused_before_anything_is_written() {
    let (app, db) = app().await;
    for (name, pw, code) in [
        ("ok-name", "short", "weak_password"),
        ("-leading", PW, "invalid_name"),
        ("has space", PW, "invalid_name"),
        (&"x".repeat(65), PW, "invalid_name"),
    ] {
        let e = app
            .set_user(&admin(), name, Role::Viewer, pw)
            .await
            .unwrap_err();
        assert_eq!((e.kind, e.code), (ErrorKind::InvalidInput, code), "{name}");
    }
    let n: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn login_attempts_are_counted_per_source_address() {
    let (app, _db) = app().await;
    app.set_user(&admin(), "carol", Role::Viewer, PW)
        .await
        .unwrap();
    let attacker: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    for i in 0..plinth_core::users::LOGINS_PER_ADDRESS {
        // Different accounts: the per-account lock does not see this.
        let e = app
            .login(&format!("user{i}"), "guessing-away", Some(attacker))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthorized);
    }
    let e = app.login("carol", PW, Some(attacker)).await.unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::TooMany, "too_many_logins"));
    assert!(e.message.contains("try again in"), "{}", e.message);
    // Another address, and the account itself, are not held up.
    let other: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    app.login("carol", PW, Some(other)).await.unwrap();
    // IPv6 addresses count by /64.
    for i in 0..plinth_core::users::LOGINS_PER_ADDRESS {
        let ip: std::net::IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
        app.login("carol", "wrong-password", Some(ip))
            .await
            .unwrap_err();
    }
    let ip: std::net::IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
    let e = app.login("carol", PW, Some(ip)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooMany);
}
