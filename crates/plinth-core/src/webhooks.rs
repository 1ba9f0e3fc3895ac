//! Webhooks: receivers that admins register, to which every event (of the kinds chosen) is
//! POSTed, signed with a secret. The delivery itself is `workers::webhooks`.
//!
//! The secret is given at creation or made here, returned once and never again; it is kept
//! encrypted with the BMC key (the webhook's id as associated data), like BMC passwords,
//! because plinth must present it (as the signature's key).

use base64::Engine;
use plinth_types::Error;
use plinth_types::feed::{
    Delivery, DeliveryState, MAX_KINDS, Webhook, WebhookCreate, WebhookCreated, valid_kind,
};
use rand::RngCore;
use uuid::Uuid;

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result};

/// The shortest secret accepted.
pub const MIN_SECRET: usize = 16;
/// The longest URL accepted.
pub const MAX_URL: usize = 2048;
/// The most deliveries one listing returns.
pub const MAX_DELIVERIES: u32 = 1000;

/// Checks a receiver's URL: http or https, a host, no user or password (they would be
/// shown to every admin listing webhooks), no fragment.
pub fn check_url(url: &str) -> Result<()> {
    let bad = |why: &str| Error::invalid("invalid_url", format!("webhook URL: {why}"));
    if url.len() > MAX_URL {
        return Err(bad(&format!("at most {MAX_URL} characters")));
    }
    let u = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("only http and https are allowed"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("a host is required"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(
            "no user or password in the URL (the signature authenticates plinth)",
        ));
    }
    if u.fragment().is_some() {
        return Err(bad("no fragment"));
    }
    // What is stored is what was checked: the URL as given (the parser's normal form could
    // differ only in ways the receiver does not care about).
    Ok(())
}

fn check_kinds(kinds: Option<Vec<String>>) -> Result<Option<Vec<String>>> {
    match kinds {
        None => Ok(None),
        Some(k) => {
            if k.is_empty() || k.len() > MAX_KINDS || !k.iter().all(|k| valid_kind(k)) {
                return Err(Error::invalid(
                    "invalid_kind",
                    format!(
                        "kinds: 1 to {MAX_KINDS} names of lowercase letters, digits and _ (absent: every kind)"
                    ),
                ));
            }
            let mut k = k;
            k.sort();
            k.dedup();
            Ok(Some(k))
        }
    }
}

fn webhook(r: plinth_db::webhooks::WebhookRow) -> Webhook {
    Webhook {
        id: r.id,
        url: r.url,
        kinds: r.kinds,
        created_by: r.created_by,
        created_at: r.created_at,
        pending: r.pending,
        dead: r.dead,
    }
}

impl App {
    /// Registers a webhook; the answer carries its secret, the only time it is shown.
    pub async fn create_webhook(
        &self,
        who: &Principal,
        req: WebhookCreate,
    ) -> Result<WebhookCreated> {
        who.require(Permission::ManageWebhooks)?;
        check_url(&req.url)?;
        let kinds = check_kinds(req.kinds)?;
        let secret = match req.secret {
            Some(s) => {
                if !(MIN_SECRET..=512).contains(&s.chars().count()) {
                    return Err(Error::invalid(
                        "invalid_secret",
                        format!("a webhook secret has {MIN_SECRET} to 512 characters"),
                    ));
                }
                s
            }
            None => {
                let mut b = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut b);
                format!(
                    "whsec_{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
                )
            }
        };
        let id = Uuid::new_v4();
        let (nonce, ciphertext) = self.bmc_key.encrypt(id, &secret);
        let mut tx = self.begin().await?;
        plinth_db::webhooks::insert(
            &mut tx,
            plinth_db::webhooks::NewWebhook {
                id,
                url: &req.url,
                kinds: kinds.as_deref(),
                secret_nonce: &nonce,
                secret_ciphertext: &ciphertext,
                created_by: &who.name,
            },
        )
        .await
        .db()?;
        crate::record_event(
            &mut tx,
            who,
            "webhook_created",
            serde_json::json!({ "webhook_id": id, "url": req.url, "kinds": kinds }),
        )
        .await?;
        let row = plinth_db::webhooks::list(&mut tx, Some(id))
            .await
            .db()?
            .pop()
            .ok_or_else(Error::internal)?;
        tx.commit().await.db()?;
        tracing::info!(webhook_id = %id, actor = %who.name, "webhook registered");
        Ok(WebhookCreated {
            webhook: webhook(row),
            secret,
        })
    }

    pub async fn list_webhooks(&self, who: &Principal) -> Result<Vec<Webhook>> {
        who.require(Permission::ManageWebhooks)?;
        let mut conn = self.conn().await?;
        let rows = plinth_db::webhooks::list(&mut conn, None).await.db()?;
        Ok(rows.into_iter().map(webhook).collect())
    }

    /// Removes a webhook and the deliveries it still had queued.
    pub async fn delete_webhook(&self, who: &Principal, id: Uuid) -> Result<()> {
        who.require(Permission::ManageWebhooks)?;
        let mut tx = self.begin().await?;
        if !plinth_db::webhooks::delete(&mut tx, id).await.db()? {
            return Err(Error::not_found(format!("no webhook {id}")));
        }
        crate::record_event(
            &mut tx,
            who,
            "webhook_deleted",
            serde_json::json!({ "webhook_id": id }),
        )
        .await?;
        tx.commit().await.db()?;
        Ok(())
    }

    /// A webhook's deliveries, newest first: `before` an event id to page back.
    pub async fn webhook_deliveries(
        &self,
        who: &Principal,
        id: Uuid,
        state: Option<DeliveryState>,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<Delivery>> {
        who.require(Permission::ManageWebhooks)?;
        let limit = limit.unwrap_or(100);
        if limit == 0 || limit > MAX_DELIVERIES {
            return Err(Error::invalid(
                "invalid_limit",
                format!("limit must be between 1 and {MAX_DELIVERIES}"),
            ));
        }
        let mut conn = self.conn().await?;
        if plinth_db::webhooks::list(&mut conn, Some(id))
            .await
            .db()?
            .is_empty()
        {
            return Err(Error::not_found(format!("no webhook {id}")));
        }
        let rows = plinth_db::webhooks::deliveries(
            &mut conn,
            id,
            state.map(DeliveryState::as_str),
            before,
            i64::from(limit),
        )
        .await
        .db()?;
        rows.into_iter()
            .map(|r| {
                Ok(Delivery {
                    event_id: r.event_id,
                    machine_id: r.machine_id,
                    kind: r.kind,
                    state: DeliveryState::parse(&r.state).ok_or_else(Error::internal)?,
                    attempts: r.attempts,
                    next_attempt_at: r.next_attempt_at,
                    last_status: r.last_status,
                    last_error: r.last_error,
                    created_at: r.created_at,
                    finished_at: r.finished_at,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "http://127.0.0.1:8080/hook",
            "https://hooks.example.com/plinth?x=1",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "https://user:pw@example.com/",
            "http://example.com/#frag",
            "not a url",
            "",
        ] {
            let e = check_url(bad).unwrap_err();
            assert_eq!(e.code, "invalid_url", "{bad}");
        }
        assert!(check_url(&format!("http://e.com/{}", "a".repeat(MAX_URL))).is_err());
    }
}
