//! The agent tokens a ramdisk script hands out: checked when the agent reports (the rules are
//! written once, in [`crate::agent::refusal`]), forgotten by a reconciler pass once long
//! expired. They are minted and stored with the script request (`record`).

#[cfg(feature = "testing")]
use plinth_types::Error;
#[cfg(feature = "testing")]
use uuid::Uuid;

#[cfg(feature = "testing")]
use crate::auth::hash_secret;
use crate::{App, DbResult, Result};

impl App {
    /// The agent token behind a secret, if it is live for this machine and mode (see
    /// [`crate::agent::refusal`], the one place the rules are written). For tests (feature
    /// `testing`): the API checks tokens through the agent endpoints.
    #[cfg(feature = "testing")]
    pub async fn check_agent_token(
        &self,
        secret: &str,
        machine_id: Uuid,
        mode: &str,
    ) -> Result<plinth_db::boot::AgentTokenRow> {
        let mut conn = self.conn().await?;
        let row = plinth_db::boot::agent_token(&mut conn, machine_id, &hash_secret(secret))
            .await
            .db()?
            .ok_or_else(|| Error::unauthorized("unknown agent token"))?;
        match crate::agent::refusal(&row, mode) {
            Some(e) => Err(e),
            None => Ok(row),
        }
    }

    /// Forgets agent tokens long expired (a reconciler pass).
    pub async fn purge_agent_tokens(&self) -> Result<u64> {
        let mut conn = self.conn().await?;
        plinth_db::boot::purge_agent_tokens(&mut conn).await.db()
    }
}
