//! Who is calling, and what their role lets them do.
//!
//! API tokens are random secrets shown once; the database keeps only their SHA-256.
//! Authorization is decided here, in one table, not in handlers.

use base64::Engine;
use plinth_types::{Error, Role, Verb};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{App, DbResult, Result};

/// The authenticated caller of an operation.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's id; `None` for the system itself and for the local admin CLI.
    pub token_id: Option<Uuid>,
    /// Recorded as the actor of every event the caller causes.
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// plinth acting on its own behalf (reconcilers, workers, the DHCP server).
    pub fn system() -> Self {
        Principal {
            token_id: None,
            name: "system".into(),
            role: Role::Admin,
        }
    }

    /// Whether this caller is automation rather than a person or a client.
    pub fn is_automation(&self) -> bool {
        self.token_id.is_none() && self.name == "system"
    }
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// See the whole inventory: machines, racks, events, allocations.
    ReadInventory,
    ManageRacks,
    /// Subnets and their pools.
    ManageNetworks,
    /// Enroll and edit machines, submit inspection reports.
    ManageMachines,
    /// Run a lifecycle verb on a machine.
    Act(Verb),
    /// Request and release allocations.
    Allocate,
    ManageTokens,
    /// Register, upload and delete boot images.
    ManageImages,
    /// Power a machine and set its boot device through its BMC.
    ControlPower,
    /// Pools' settings (their wipe method): a data-protection policy, admins only.
    ManagePools,
    /// Attach to a machine's serial console: type into it, send break.
    AttachConsole,
    /// Read a machine's console recording.
    ReadConsoleLog,
    /// Register and remove webhooks (they receive every event): admins only.
    ManageWebhooks,
    /// Scan a BMC network and see what answered (issue 21): admins only.
    ScanBmcNetwork,
}

/// The one place roles are mapped to permissions. A client's permissions apply only to its
/// own allocations and their machines; that scoping is checked by the operation itself.
pub fn allows(role: Role, p: Permission) -> bool {
    match role {
        Role::Admin => true,
        Role::Operator => !matches!(
            p,
            Permission::ManageTokens
                | Permission::ManagePools
                | Permission::ManageWebhooks
                | Permission::ScanBmcNetwork
        ),
        Role::Client => matches!(
            p,
            Permission::Allocate
                | Permission::Act(Verb::Deploy | Verb::Release)
                | Permission::ControlPower
                | Permission::AttachConsole
                | Permission::ReadConsoleLog
        ),
        Role::Viewer => matches!(p, Permission::ReadInventory | Permission::ReadConsoleLog),
    }
}

impl Principal {
    pub fn require(&self, p: Permission) -> Result<()> {
        if allows(self.role, p) {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "the {} role may not do this",
                self.role
            )))
        }
    }

    /// Clients see only what they were allocated; everyone else with read access sees all.
    pub fn owner_scope(&self) -> Option<Uuid> {
        if self.role == Role::Client {
            Some(self.token_id.unwrap_or(Uuid::nil()))
        } else {
            None
        }
    }
}

/// A new random token secret: `plinth_` and 43 base64url characters (256 bits).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "plinth_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What a bearer secret that is no API token is told (the agent endpoints tell their own).
pub(crate) const UNKNOWN_API_TOKEN: &str = "invalid API token";

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl App {
    /// The principal for a bearer secret: 401 when it is unknown or revoked.
    pub async fn authenticate(&self, secret: &str) -> Result<Principal> {
        if secret.is_empty() || secret.len() > 256 {
            return Err(Error::unauthorized(UNKNOWN_API_TOKEN));
        }
        let mut conn = self.conn().await?;
        let row = plinth_db::tokens::authenticate(&mut conn, &hash_secret(secret))
            .await
            .db()?;
        match row {
            Some(t) if t.revoked_at.is_some() => {
                Err(Error::unauthorized("this API token has been revoked"))
            }
            Some(t) if t.expires_at.is_some_and(|at| at <= chrono::Utc::now()) => {
                Err(Error::unauthorized("this API token has expired"))
            }
            Some(t) => Ok(Principal {
                token_id: Some(t.id),
                name: t.name,
                role: t.role,
            }),
            None => Err(Error::unauthorized(UNKNOWN_API_TOKEN)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_table() {
        use Permission::*;
        let all = [
            ReadInventory,
            ManageRacks,
            ManageNetworks,
            ManageMachines,
            Act(Verb::Inspect),
            Act(Verb::Deploy),
            Allocate,
            ManageTokens,
            ManageImages,
            ControlPower,
            ManagePools,
            AttachConsole,
            ReadConsoleLog,
            ManageWebhooks,
        ];
        let expect = |role, granted: &[Permission]| {
            for p in all {
                assert_eq!(allows(role, p), granted.contains(&p), "{role} {p:?}");
            }
        };
        expect(Role::Admin, &all);
        expect(
            Role::Operator,
            &[
                ReadInventory,
                ManageRacks,
                ManageNetworks,
                ManageMachines,
                Act(Verb::Inspect),
                Act(Verb::Deploy),
                Allocate,
                ManageImages,
                ControlPower,
                AttachConsole,
                ReadConsoleLog,
            ],
        );
        expect(
            Role::Client,
            &[
                Act(Verb::Deploy),
                Allocate,
                ControlPower,
                AttachConsole,
                ReadConsoleLog,
            ],
        );
        expect(Role::Viewer, &[ReadInventory, ReadConsoleLog]);
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("plinth_") && a.len() == 7 + 43);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }
}
