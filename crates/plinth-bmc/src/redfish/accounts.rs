//! plinth's own account on a Redfish BMC (issue 21, rotation): the password policy from the
//! `AccountService` (`MinPasswordLength`, `MaxPasswordLength`), and a new password set on the
//! `ManagerAccount` whose `UserName` is plinth's, with a PATCH of `{"Password": ...}` carrying
//! the account's ETag in `If-Match` (one retry on 412/428, as for the boot override).
//!
//! Many BMCs end every session of an account whose password changed: after the PATCH the
//! driver forgets its session without logging out, and is not used again (plinth proves the
//! new password with a driver of its own). The accounts read are bounded ([`MAX_ACCOUNTS`]);
//! every link followed is checked against the BMC's origin like any other.

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{Auth, Collection, Link, Redfish, status_error};
use crate::{BmcError, PasswordPolicy, Result};

/// Accounts read to find plinth's (BMCs have a dozen or so slots).
pub const MAX_ACCOUNTS: usize = 64;

/// What a BMC that does not say accepts: Redfish's usual 8 to 20.
const DEFAULT_POLICY: PasswordPolicy = PasswordPolicy {
    min_len: 8,
    max_len: 20,
};

#[derive(Debug, Deserialize)]
struct Root {
    #[serde(rename = "AccountService")]
    account_service: Option<Link>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AccountService {
    min_password_length: Option<u64>,
    max_password_length: Option<u64>,
    accounts: Option<Link>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Account {
    user_name: Option<String>,
    #[serde(rename = "@odata.etag")]
    etag: Option<String>,
}

impl Redfish {
    async fn account_service(&self) -> Result<AccountService> {
        let (root, _) = self.get::<Root>("/redfish/v1").await?;
        let link = root
            .account_service
            .ok_or_else(|| BmcError::Unsupported("an AccountService".into()))?;
        Ok(self.get::<AccountService>(&link.id).await?.0)
    }

    pub(super) async fn do_password_policy(&self) -> Result<PasswordPolicy> {
        let svc = self.account_service().await?;
        let clamp = |v: Option<u64>, d: usize| v.map_or(d, |n| n.min(1024) as usize);
        Ok(PasswordPolicy {
            min_len: clamp(svc.min_password_length, DEFAULT_POLICY.min_len),
            max_len: clamp(svc.max_password_length, DEFAULT_POLICY.max_len),
        })
    }

    /// The path and ETag of plinth's own account.
    async fn own_account(&self) -> Result<(String, Option<String>)> {
        let svc = self.account_service().await?;
        let accounts = svc
            .accounts
            .ok_or_else(|| BmcError::Unsupported("an Accounts collection".into()))?;
        let (c, _) = self.get::<Collection>(&accounts.id).await?;
        for m in c.members.iter().take(MAX_ACCOUNTS) {
            let (a, etag) = self.get::<Account>(&m.id).await?;
            if a.user_name.as_deref() == Some(self.cfg.username.as_str()) {
                return Ok((m.id.clone(), a.etag.or(etag)));
            }
        }
        Err(BmcError::Rejected(format!(
            "no account named {:?} among the BMC's first {MAX_ACCOUNTS} accounts",
            self.cfg.username
        )))
    }

    pub(super) async fn do_set_password(&self, new: &str) -> Result<()> {
        let body = json!({ "Password": new });
        for attempt in 0..2 {
            let (path, etag) = self.own_account().await?;
            let (status, _, _) = self
                .call(Method::PATCH, &path, Some(&body), etag.as_deref())
                .await?;
            if status.is_success() {
                // The BMC may have ended this account's sessions: forget ours (a logout
                // would only be refused) so that nothing is sent with it again.
                *self.auth.lock().await = Auth::Unknown;
                return Ok(());
            }
            if (status == StatusCode::PRECONDITION_FAILED
                || status == StatusCode::PRECONDITION_REQUIRED)
                && attempt == 0
            {
                continue;
            }
            // The BMC's message may quote the request; the body holds the password, so the
            // status alone is reported for a refusal of it.
            return Err(match status_error(status, &serde_json::Value::Null) {
                BmcError::Rejected(_) => BmcError::Rejected(format!(
                    "HTTP {}: the BMC refused the new password",
                    status.as_u16()
                )),
                e => e,
            });
        }
        Err(BmcError::Busy(
            "the account kept changing under plinth".into(),
        ))
    }
}
