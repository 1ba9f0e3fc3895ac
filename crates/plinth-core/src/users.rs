//! The people of the web UI: users with one of the API's roles and an argon2id password, and
//! their browser sessions (a random secret in an HttpOnly cookie, kept as SHA-256, with a CSRF
//! token of its own). A UI user acts as `ui:<username>` in events, with its role's permissions.
//!
//! Wrong passwords are counted per user; at [`LOCK_AFTER`] in a row the account waits
//! [`LOCK_FOR`] (an event says so). Attempts are also counted per source address
//! ([`LOGINS_PER_ADDRESS`] a minute; IPv6 by /64). Unknown users, wrong passwords and waiting
//! accounts get one answer and cost the same: one argon2 verification each, with no row
//! locked meanwhile. Hashing runs on a few blocking threads at most ([`hashing_permits`]), so
//! a login flood queues there (and is refused after [`HASH_QUEUE_WAIT`]) instead of taking the
//! CPU from DHCP, boot and the API.

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Utc};
use plinth_types::{Error, Role};
use rand::RngCore;
use serde_json::json;
use uuid::Uuid;

use crate::auth::{Permission, generate_secret, hash_secret};
use crate::{App, DbResult, Principal, Result, validate};

/// A session ends after this long without a request...
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// ...and this long after login in any case.
pub const SESSION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Wrong passwords in a row before the account waits.
pub const LOCK_AFTER: i32 = 5;
pub const LOCK_FOR: Duration = Duration::from_secs(300);

/// Login attempts one source address may make per minute.
pub const LOGINS_PER_ADDRESS: u32 = 10;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// How long a login waits for a hashing thread before it is told to come back.
pub const HASH_QUEUE_WAIT: Duration = Duration::from_secs(5);

pub const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD: usize = 1024;

#[derive(Debug, Clone, serde::Serialize)]
pub struct UserInfo {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub locked_until: Option<DateTime<Utc>>,
}

fn info(row: &plinth_db::users::UserRow) -> Result<UserInfo> {
    Ok(UserInfo {
        id: row.id,
        username: row.username.clone(),
        role: row.role,
        created_at: row.created_at,
        last_login_at: row.last_login_at,
        locked_until: row.locked_until,
    })
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct UiSession {
    pub principal: Principal,
    pub username: String,
    /// What every form of this session must send back.
    pub csrf: String,
}

/// A new session: the secret goes into the cookie, once.
#[derive(Debug, Clone)]
pub struct Login {
    pub secret: String,
    pub session: UiSession,
}

fn session(username: String, role: Role, csrf: String) -> UiSession {
    UiSession {
        principal: Principal {
            token_id: None,
            name: format!("ui:{username}"),
            role,
        },
        username,
        csrf,
    }
}

fn wrong_credentials() -> Error {
    Error::unauthorized("wrong username or password")
}

pub fn validate_username(s: &str) -> Result<()> {
    validate::username(s)
}

pub fn validate_password(p: &str) -> Result<()> {
    let n = p.chars().count();
    if n < MIN_PASSWORD {
        return Err(Error::invalid(
            "weak_password",
            format!("a password needs at least {MIN_PASSWORD} characters"),
        ));
    }
    if p.len() > MAX_PASSWORD {
        return Err(Error::invalid(
            "invalid_password",
            format!("a password has at most {MAX_PASSWORD} bytes"),
        ));
    }
    Ok(())
}

/// Argon2 computations at once: half the cores (at least one), leaving the rest to the
/// packet and request paths.
pub fn hashing_permits() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .div_ceil(2)
}

/// Runs one argon2 computation on a blocking thread, when a permit is free.
async fn argon2_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    static HASHING: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let sem = HASHING.get_or_init(|| tokio::sync::Semaphore::new(hashing_permits()));
    let _permit = match tokio::time::timeout(HASH_QUEUE_WAIT, sem.acquire()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(crate::internal("password hashing queue")(e)),
        Err(_) => {
            tracing::warn!(
                "password hashing is saturated; a login or password change was turned away"
            );
            return Err(Error::unavailable(
                "too many logins at once: try again in a moment",
            ));
        }
    };
    tokio::task::spawn_blocking(f)
        .await
        .map_err(crate::internal("argon2_blocking"))
}

/// Attempts per source address in the current minute (one instance's view: each plinth
/// instance counts its own).
#[derive(Debug, Default)]
pub(crate) struct LoginThrottle {
    seen: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
}

impl LoginThrottle {
    /// Counts an attempt from `ip`; `Err(wait)` when it is one too many.
    pub(crate) fn attempt(&self, ip: std::net::IpAddr) -> std::result::Result<(), Duration> {
        let key = match ip.to_canonical() {
            std::net::IpAddr::V6(v6) => {
                // One host has a whole /64 to choose from.
                let mut o = v6.octets();
                o[8..].fill(0);
                std::net::IpAddr::V6(o.into())
            }
            v4 => v4,
        };
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.retain(|_, (start, _)| now.duration_since(*start) < LOGIN_WINDOW);
        }
        let e = seen.entry(key).or_insert((now, 0));
        if now.duration_since(e.0) >= LOGIN_WINDOW {
            *e = (now, 0);
        }
        if e.1 >= LOGINS_PER_ADDRESS {
            return Err(LOGIN_WINDOW.saturating_sub(now.duration_since(e.0)));
        }
        e.1 += 1;
        Ok(())
    }
}

async fn hash_password(password: String) -> Result<String> {
    argon2_blocking(move || {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(|e| {
            tracing::error!(error = %e, "encoding a password salt");
            Error::internal()
        })?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| {
                tracing::error!(error = %e, "hashing a password");
                Error::internal()
            })
    })
    .await?
}

/// Whether `password` matches `hash`; a malformed hash matches nothing.
async fn verify_password(password: String, hash: String) -> Result<bool> {
    argon2_blocking(move || match PasswordHash::new(&hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "a user's password hash is malformed");
            false
        }
    })
    .await
}

/// What an unknown username is checked against, so that it costs what a known one does.
async fn dummy_hash() -> &'static str {
    static HASH: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    HASH.get_or_init(|| async { hash_password(generate_secret()).await.unwrap_or_default() })
        .await
}

fn csrf_token() -> String {
    generate_secret()
}

impl App {
    /// Creates a user, or sets the role and password of an existing one (which ends its
    /// sessions and lifts a lockout). Admins only. Returns the user and whether it is new.
    pub async fn set_user(
        &self,
        who: &Principal,
        username: &str,
        role: Role,
        password: &str,
    ) -> Result<(UserInfo, bool)> {
        who.require(Permission::ManageTokens)?;
        validate::username(username)?;
        validate_password(password)?;
        let hash = hash_password(password.to_owned()).await?;
        let mut tx = self.begin().await?;
        let (row, created) = plinth_db::users::upsert(&mut tx, username, role, &hash)
            .await
            .db()?;
        crate::record_event(
            &mut tx,
            who,
            if created {
                "user_created"
            } else {
                "user_updated"
            },
            json!({ "username": username, "role": role }),
        )
        .await?;
        tx.commit().await.db()?;
        tracing::info!(username, %role, actor = %who.name, created, "web UI user set");
        Ok((info(&row)?, created))
    }

    pub async fn list_users(&self, who: &Principal) -> Result<Vec<UserInfo>> {
        who.require(Permission::ManageTokens)?;
        let mut conn = self.conn().await?;
        plinth_db::users::list(&mut conn)
            .await
            .db()?
            .iter()
            .map(info)
            .collect()
    }

    /// Checks a username and password and opens a session. `from` is the client's address
    /// (attempts are counted per address). Every refusal says "wrong username or password":
    /// an unknown user, a wrong password, a disabled account and one that waits after too many
    /// wrong passwords look alike (the wait is in the events and the log).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        from: Option<std::net::IpAddr>,
    ) -> Result<Login> {
        if let Some(ip) = from
            && let Err(wait) = self.logins.attempt(ip)
        {
            tracing::warn!(%ip, "web UI login attempts from one address throttled");
            return Err(Error::new(
                plinth_types::ErrorKind::TooMany,
                "too_many_logins",
                format!(
                    "too many login attempts from your address: try again in {} seconds",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let user = if validate::username(username).is_ok() && password.len() <= MAX_PASSWORD {
            // Read without a lock: nothing is held while the password is hashed.
            let mut conn = self.conn().await?;
            plinth_db::users::for_login(&mut conn, username)
                .await
                .db()?
        } else {
            None
        };
        let now = Utc::now();
        let locked = user
            .as_ref()
            .and_then(|u| u.locked_until)
            .is_some_and(|until| until > now);
        // One verification whatever the case, against the dummy hash when there is nothing
        // (or nothing allowed) to check.
        let hash = match &user {
            Some(u) if !locked => u.password_hash.clone(),
            _ => dummy_hash().await.to_owned(),
        };
        let ok = verify_password(password.to_owned(), hash).await?;
        let Some(user) = user else {
            tracing::warn!(username, "web UI login for an unknown user");
            return Err(wrong_credentials());
        };
        if locked {
            tracing::warn!(
                username,
                "web UI login for an account that waits after too many wrong passwords"
            );
            return Err(wrong_credentials());
        }
        let mut tx = self.begin().await?;
        if !ok || user.disabled_at.is_some() {
            let lock_until = now + chrono::Duration::from_std(LOCK_FOR).unwrap_or_default();
            let n = plinth_db::users::login_failed(&mut tx, user.id, LOCK_AFTER, lock_until)
                .await
                .db()?;
            if n == LOCK_AFTER {
                crate::record_event(
                    &mut tx,
                    &Principal::system(),
                    "user_locked",
                    json!({ "username": username, "wrong_passwords": n, "until": lock_until }),
                )
                .await?;
            }
            tx.commit().await.db()?;
            tracing::warn!(username, wrong_passwords = n, "web UI login refused");
            return Err(wrong_credentials());
        }
        let role = user.role;
        let secret = generate_secret();
        let csrf = csrf_token();
        plinth_db::users::login_succeeded(&mut tx, user.id)
            .await
            .db()?;
        plinth_db::users::insert_session(
            &mut tx,
            user.id,
            &hash_secret(&secret),
            &csrf,
            SESSION_IDLE.as_secs_f64(),
            SESSION_MAX.as_secs_f64(),
        )
        .await
        .db()?;
        let session = session(user.username, role, csrf);
        crate::record_event(&mut tx, &session.principal, "user_login", json!({})).await?;
        tx.commit().await.db()?;
        tracing::info!(username, "web UI login");
        Ok(Login { secret, session })
    }

    /// The session of a cookie's secret: 401 when it is unknown, ended or its user disabled.
    pub async fn ui_session(&self, secret: &str) -> Result<UiSession> {
        if secret.is_empty() || secret.len() > 256 {
            return Err(Error::unauthorized("not signed in"));
        }
        let mut conn = self.conn().await?;
        let row =
            plinth_db::users::session(&mut conn, &hash_secret(secret), SESSION_IDLE.as_secs_f64())
                .await
                .db()?
                .ok_or_else(|| Error::unauthorized("not signed in, or the session has ended"))?;
        Ok(session(row.username, row.role, row.csrf_token))
    }

    /// Ends the session of a cookie's secret (nothing happens for an unknown one).
    pub async fn logout(&self, secret: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        if let Some(username) = plinth_db::users::delete_session(&mut tx, &hash_secret(secret))
            .await
            .db()?
        {
            let who = session(username, Role::Viewer, String::new()).principal;
            crate::record_event(&mut tx, &who, "user_logout", json!({})).await?;
        }
        tx.commit().await.db()?;
        Ok(())
    }
}
