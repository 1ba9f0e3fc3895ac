//! The `rotate_credentials` job (issue 21, part 4): a new random password for the account
//! plinth logs in with, set on the BMC, proved by a new session, then stored.
//!
//! Crash-safe at every step, because the new secret is written down before the BMC hears of it:
//! 1. **stage**: the new password, encrypted like the current one, in the BMC's row
//!    (`staged_password_*`), committed;
//! 2. **set** it on the BMC (Redfish AccountService, IPMI Set User Password);
//! 3. **prove** it with a driver of its own (a new session, a power-state read);
//! 4. **promote** staged → current in one transaction with its event (never the secret).
//!
//! A crash (or a failed call) anywhere leaves one of the two passwords on the BMC, and both
//! in the row: the job's next attempt (its lease brings it back), or the `credential recovery`
//! pass for a rotation whose job ended, first **resolves**: the staged password is tried, then
//! the current one; whichever logs in is the truth, and the staged one is promoted or
//! discarded accordingly. At most one wrong login per resolution (BMCs lock accounts after a
//! few). While a rotation is staged, nothing else of plinth logs in to that BMC: the job
//! holds the machine (one running job per machine, later jobs wait behind it) and the power
//! sync skips BMCs with a staged secret (`bmcs::claim_due`).
//!
//! Each step is fenced by the nonces it read: a person who sets new credentials meanwhile
//! (PATCH, which clears the staged secret) wins, and the rotation stops without writing.

use std::sync::Arc;

use plinth_bmc::{Bmc, BmcTarget, credentials};
use plinth_db::credentials::Credentials;
use plinth_db::jobs::Claimed;
use serde_json::json;
use uuid::Uuid;

use super::call::{Failure, call, final_failure, power_str};
use super::execute::Done;
use super::{JobRunner, event};
use crate::reconcile::Pass;
use crate::{App, DbResult};

/// Which password the BMC took, as found by [`JobRunner::resolve`].
enum Truth {
    Staged,
    Current,
}

type Outcome<T> = std::result::Result<T, Failure>;

fn db_failure(e: plinth_types::Error) -> Failure {
    // The database is away (a restart, a failover): the staged secret waits for the retry.
    Failure {
        transient: true,
        kind: "database",
        message: format!("recording the rotation failed: {}", e.message),
    }
}

impl JobRunner {
    /// The whole job; see the module's documentation.
    pub(super) async fn rotate(&self, j: &Claimed) -> Outcome<Done> {
        let app = &self.app;
        let c = load(app, j.machine_id).await?;
        // A crash between the promotion and the job's record: this job already did its work.
        if let (Some(at), Ok(Some(job))) = (
            c.password_rotated_at,
            async {
                let mut conn = app.conn().await?;
                plinth_db::jobs::get(&mut conn, j.id).await.db()
            }
            .await,
        ) && at >= job.created_at
            && c.staged_password_nonce.is_none()
        {
            return Ok(done(json!({ "rotated_at": at, "already": true }), None));
        }
        let current = decrypt(app, &c, false)?;
        let base = target(&c, &current);
        let mut c = c;
        if c.staged_password_nonce.is_some() {
            let staged = decrypt(app, &c, true)?;
            match self.resolve(&base, &staged).await? {
                Truth::Staged => {
                    let at = self.promote(j, &c, "recovered").await?;
                    return Ok(done(json!({ "rotated_at": at, "recovered": true }), None));
                }
                Truth::Current => {
                    self.discard(j.machine_id, &c, "the BMC kept the current password")
                        .await?;
                    c = load(app, j.machine_id).await?;
                }
            }
        }
        self.fresh(j, &c, &base).await
    }

    /// A rotation from the current password (nothing staged).
    async fn fresh(&self, j: &Claimed, c: &Credentials, base: &BmcTarget) -> Outcome<Done> {
        let t = self.settings.call_timeout;
        let bmc = self.connector.connect(base).await.map_err(Failure::from)?;
        let policy = call(t, "read the password policy", bmc.password_policy()).await;
        let policy = match policy {
            Ok(p) => p,
            Err(f) => {
                close(&*bmc, t).await;
                return Err(f);
            }
        };
        let Some(len) = policy.length() else {
            close(&*bmc, t).await;
            return Err(final_failure(
                "unsupported",
                format!(
                    "the BMC's password policy ({} to {} characters) leaves no room for a strong password",
                    policy.min_len, policy.max_len
                ),
            ));
        };
        let new = credentials::generate(len);
        let (nonce, ct) = self.app.bmc_key.encrypt(j.machine_id, &new);
        // 1. stage, committed before the BMC hears of it
        let staged = async {
            let mut conn = self.app.conn().await?;
            plinth_db::credentials::stage(&mut conn, j.machine_id, &c.password_nonce, &nonce, &ct)
                .await
                .db()
        }
        .await;
        match staged {
            Ok(true) => {}
            Ok(false) => {
                close(&*bmc, t).await;
                return Err(final_failure(
                    "config",
                    "the BMC's credentials changed while the rotation began: not rotated",
                ));
            }
            Err(e) => {
                close(&*bmc, t).await;
                return Err(db_failure(e));
            }
        }
        let staged_row = Credentials {
            staged_password_nonce: Some(nonce),
            staged_password_ciphertext: Some(ct),
            ..c.clone()
        };
        // 2. set
        let set = call(t, "set the new password", bmc.set_password(&new)).await;
        close(&*bmc, t).await;
        if let Err(f) = set {
            // The BMC may have taken it all the same (a timeout after the change): settle now
            // rather than leave the next attempt to find out.
            return match self.resolve(base, &new).await? {
                Truth::Staged => {
                    let at = self.promote(j, &staged_row, "set").await?;
                    Ok(done(json!({ "rotated_at": at }), None))
                }
                Truth::Current => {
                    self.discard(j.machine_id, &staged_row, &f.message).await?;
                    Err(f)
                }
            };
        }
        // 3. prove, with a session of the new password's own
        let proof = self.login(&base.with_password(&new)).await;
        let power = match proof {
            Ok(p) => p,
            Err(f) if f.kind == "auth" => {
                // Refused at login after accepting it: the current one must still work.
                return match self.login(base).await {
                    Ok(_) => {
                        self.discard(
                            j.machine_id,
                            &staged_row,
                            "the BMC accepted the new password but refused it at login",
                        )
                        .await?;
                        Err(final_failure(
                            "rejected",
                            "the BMC accepted the new password but refused it at login; the current password is kept",
                        ))
                    }
                    Err(g) if g.kind == "auth" => Err(locked_out()),
                    Err(g) => Err(g),
                };
            }
            Err(f) => return Err(f),
        };
        // 4. promote
        let at = self.promote(j, &staged_row, "set").await?;
        Ok(done(json!({ "rotated_at": at }), Some(power)))
    }

    /// One login with `target`'s password, proved by a power-state read; the session closed.
    async fn login(&self, target: &BmcTarget) -> Outcome<plinth_bmc::PowerState> {
        let t = self.settings.call_timeout;
        let bmc = self
            .connector
            .connect(target)
            .await
            .map_err(Failure::from)?;
        let r = call(t, "log in", bmc.power_state()).await;
        close(&*bmc, t).await;
        r
    }

    /// Which of the two passwords the BMC has: the staged one first (after a crash it is the
    /// likelier), then the current one.
    async fn resolve(&self, base: &BmcTarget, staged: &str) -> Outcome<Truth> {
        match self.login(&base.with_password(staged)).await {
            Ok(_) => Ok(Truth::Staged),
            Err(f) if f.kind == "auth" => match self.login(base).await {
                Ok(_) => Ok(Truth::Current),
                Err(g) if g.kind == "auth" => Err(locked_out()),
                Err(g) => Err(g),
            },
            Err(f) => Err(f),
        }
    }

    /// Staged → current, with its event, in one transaction.
    async fn promote(
        &self,
        j: &Claimed,
        c: &Credentials,
        how: &str,
    ) -> Outcome<chrono::DateTime<chrono::Utc>> {
        let staged = c.staged_password_nonce.as_deref().unwrap_or_default();
        let r: crate::Result<Option<chrono::DateTime<chrono::Utc>>> = async {
            let mut tx = self.app.begin().await?;
            if !plinth_db::credentials::promote(&mut tx, j.machine_id, &c.password_nonce, staged)
                .await
                .db()?
            {
                return Ok(None);
            }
            let at = plinth_db::credentials::get(&mut tx, j.machine_id)
                .await
                .db()?
                .and_then(|c| c.password_rotated_at)
                .unwrap_or_else(chrono::Utc::now);
            event(
                &mut tx,
                j.machine_id,
                "bmc_credentials_rotated",
                json!({ "job": j.id, "username": c.username, "how": how }),
            )
            .await?;
            tx.commit().await.db()?;
            Ok(Some(at))
        }
        .await;
        match r {
            Ok(Some(at)) => {
                tracing::info!(machine_id = %j.machine_id, job_id = %j.id, how, "BMC password rotated");
                Ok(at)
            }
            Ok(None) => Err(final_failure(
                "config",
                "the BMC's credentials changed during the rotation: the new password was not stored",
            )),
            Err(e) => Err(db_failure(e)),
        }
    }

    async fn discard(&self, machine_id: Uuid, c: &Credentials, why: &str) -> Outcome<()> {
        let staged = c.staged_password_nonce.as_deref().unwrap_or_default();
        let r: crate::Result<bool> = async {
            let mut tx = self.app.begin().await?;
            let done =
                plinth_db::credentials::discard(&mut tx, machine_id, &c.password_nonce, staged)
                    .await
                    .db()?;
            if done {
                event(
                    &mut tx,
                    machine_id,
                    "bmc_rotation_discarded",
                    json!({ "reason": why }),
                )
                .await?;
            }
            tx.commit().await.db()?;
            Ok(done)
        }
        .await;
        r.map(drop).map_err(db_failure)
    }

    /// The reconciler pass that finishes rotations whose job ended half-way (out of attempts,
    /// cancelled): each BMC staged for longer than two leases with no rotation job queued or
    /// running gets one, which resolves it first.
    pub fn recovery_pass(self: &Arc<Self>) -> Pass {
        let me = self.clone();
        let every = self.settings.lease.max(std::time::Duration::from_secs(5));
        Pass::new("credential recovery", every, move |_| {
            let me = me.clone();
            async move { me.recover_stranded().await.map(drop) }
        })
    }

    /// Queues a rotation job for every stranded rotation; returns how many.
    pub async fn recover_stranded(&self) -> crate::Result<usize> {
        let mut tx = self.app.begin().await?;
        let ids =
            plinth_db::credentials::stranded(&mut tx, (self.settings.lease * 2).as_secs_f64(), 100)
                .await
                .db()?;
        for id in &ids {
            let rows = crate::jobs::queue(
                &mut tx,
                *id,
                &[crate::jobs::JobSpec::RotateCredentials],
                "system",
            )
            .await?;
            event(
                &mut tx,
                *id,
                "bmc_job_queued",
                json!({ "job": rows.first().map(|r| r.id), "kind": "rotate_credentials", "reason": "a rotation was left staged" }),
            )
            .await?;
        }
        tx.commit().await.db()?;
        Ok(ids.len())
    }
}

/// After a successful identify: a rotation, when `bmc.rotate_on_enroll` is on and the password
/// is still the one a person gave (never rotated) and no rotation is pending. In the identify
/// job's record transaction.
pub(super) async fn after_identify(
    tx: &mut plinth_db::PgConnection,
    machine_id: Uuid,
) -> crate::Result<Option<Uuid>> {
    let Some(c) = plinth_db::credentials::get(tx, machine_id).await.db()? else {
        return Ok(None);
    };
    if c.password_rotated_at.is_some()
        || plinth_db::credentials::rotation_pending(tx, machine_id)
            .await
            .db()?
    {
        return Ok(None);
    }
    let rows = crate::jobs::queue(
        tx,
        machine_id,
        &[crate::jobs::JobSpec::RotateCredentials],
        "system",
    )
    .await?;
    let id = rows.first().map(|r| r.id.uuid());
    event(
        tx,
        machine_id,
        "bmc_job_queued",
        json!({ "job": id, "kind": "rotate_credentials", "reason": "bmc.rotate_on_enroll" }),
    )
    .await?;
    Ok(id)
}

fn locked_out() -> Failure {
    final_failure(
        "auth",
        "neither the current nor the staged password logs in: the BMC's password was changed outside plinth",
    )
}

fn done(result: serde_json::Value, power: Option<plinth_bmc::PowerState>) -> Done {
    let mut result = result;
    if let Some(p) = power {
        result["power"] = json!(power_str(p));
    }
    Done {
        result,
        power,
        identity: None,
    }
}

async fn close(bmc: &dyn Bmc, t: std::time::Duration) {
    tokio::time::timeout(t, bmc.close()).await.ok();
}

async fn load(app: &App, machine_id: Uuid) -> Outcome<Credentials> {
    let r = async {
        let mut conn = app.conn().await?;
        plinth_db::credentials::get(&mut conn, machine_id)
            .await
            .db()
    }
    .await;
    match r {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(final_failure("config", "the machine has no BMC any more")),
        Err(e) => Err(db_failure(e)),
    }
}

fn decrypt(app: &App, c: &Credentials, staged: bool) -> Outcome<String> {
    let (n, ct) = if staged {
        (
            c.staged_password_nonce.as_deref().unwrap_or_default(),
            c.staged_password_ciphertext.as_deref().unwrap_or_default(),
        )
    } else {
        (
            c.password_nonce.as_slice(),
            c.password_ciphertext.as_slice(),
        )
    };
    app.bmc_key
        .decrypt(c.machine_id, n, ct)
        .map_err(|e| final_failure("config", e.to_string()))
}

fn target(c: &Credentials, password: &str) -> BmcTarget {
    BmcTarget {
        machine_id: c.machine_id,
        protocol: c.protocol,
        address: c.address.clone(),
        username: c.username.clone(),
        password: password.to_owned(),
        verify_tls: c.verify_tls,
        plain_http: c.plain_http,
    }
}
