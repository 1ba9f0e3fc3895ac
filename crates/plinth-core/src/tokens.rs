//! API token management: create (the secret is returned once), list, revoke.

use plinth_types::api::{TokenCreated, TokenInfo};
use plinth_types::{Error, Role};

use crate::auth::{Permission, generate_secret, hash_secret};
use crate::{App, DbResult, Principal, Result, validate};

fn info(row: plinth_db::tokens::TokenRow) -> Result<TokenInfo> {
    Ok(TokenInfo {
        id: row.id,
        role: row.role,
        name: row.name,
        created_at: row.created_at,
        last_used_at: row.last_used_at,
        revoked_at: row.revoked_at,
        expires_at: row.expires_at,
    })
}

const MIN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 86_400);

impl App {
    pub async fn create_token(
        &self,
        who: &Principal,
        name: &str,
        role: Role,
    ) -> Result<TokenCreated> {
        self.create_token_expiring(who, name, role, None).await
    }

    /// A token that stops working `expires_in` after now (`None`: never).
    pub async fn create_token_expiring(
        &self,
        who: &Principal,
        name: &str,
        role: Role,
        expires_in: Option<std::time::Duration>,
    ) -> Result<TokenCreated> {
        who.require(Permission::ManageTokens)?;
        validate::token_name(name)?;
        let expires_at = match expires_in {
            None => None,
            Some(d) if d < MIN_LIFETIME || d > MAX_LIFETIME => {
                return Err(Error::invalid(
                    "invalid_expiry",
                    "a token's lifetime is between 60 seconds and ten years",
                ));
            }
            Some(d) => Some(
                chrono::Utc::now()
                    + chrono::Duration::from_std(d)
                        .map_err(crate::internal("create_token_expiring"))?,
            ),
        };
        let secret = generate_secret();
        let mut tx = self.begin().await?;
        let row = plinth_db::tokens::insert(&mut tx, name, role, &hash_secret(&secret), expires_at)
            .await
            .db()?;
        crate::record_event(
            &mut tx,
            who,
            "token_created",
            serde_json::json!({ "token": name, "role": role, "expires_at": expires_at }),
        )
        .await?;
        tx.commit().await.db()?;
        tracing::info!(token = name, %role, actor = %who.name, "API token created");
        Ok(TokenCreated {
            token: info(row)?,
            secret,
        })
    }

    pub async fn list_tokens(&self, who: &Principal) -> Result<Vec<TokenInfo>> {
        who.require(Permission::ManageTokens)?;
        let mut conn = self.conn().await?;
        plinth_db::tokens::list(&mut conn)
            .await
            .db()?
            .into_iter()
            .map(info)
            .collect()
    }

    pub async fn revoke_token(&self, who: &Principal, name: &str) -> Result<TokenInfo> {
        who.require(Permission::ManageTokens)?;
        let mut tx = self.begin().await?;
        let row = plinth_db::tokens::revoke(&mut tx, name)
            .await
            .db()?
            .ok_or_else(|| Error::not_found(format!("no token named {name:?}")))?;
        crate::record_event(
            &mut tx,
            who,
            "token_revoked",
            serde_json::json!({ "token": name }),
        )
        .await?;
        tx.commit().await.db()?;
        tracing::info!(token = name, actor = %who.name, "API token revoked");
        info(row)
    }
}
