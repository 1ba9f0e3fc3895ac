//! BMC credential rotation as people ask for it (issue 21, part 4): `POST
//! /machines/{id}/bmc/rotate` queues a `rotate_credentials` job (run by `workers/rotate.rs`);
//! what anyone can read back is when the password was last rotated, never the password.

use plinth_types::api::Job;
use uuid::Uuid;

use crate::jobs::JobSpec;
use crate::{App, Principal, Result};

impl App {
    /// `POST /machines/{id}/bmc/rotate`: queues a rotation of the machine's BMC password;
    /// 202 with the job. Who may power a machine may rotate its BMC password (neither shows
    /// a secret).
    pub async fn request_bmc_rotate(&self, who: &Principal, id: Uuid) -> Result<Job> {
        self.request_job(who, id, JobSpec::RotateCredentials).await
    }

    /// The staged (not yet proved) BMC password of a machine: for the rotation's tests.
    #[cfg(feature = "testing")]
    pub async fn bmc_staged_password(&self, id: Uuid) -> Result<Option<String>> {
        use crate::DbResult;
        let mut conn = self.conn().await?;
        let Some(c) = plinth_db::credentials::get(&mut conn, id).await.db()? else {
            return Ok(None);
        };
        match (c.staged_password_nonce, c.staged_password_ciphertext) {
            (Some(n), Some(ct)) => Ok(self.bmc_key.decrypt(id, &n, &ct).ok()),
            _ => Ok(None),
        }
    }
}
