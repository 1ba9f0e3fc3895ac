//! Cleaning that cannot be skipped: how a machine's disks are to be wiped (its pool's method,
//! else `clean.method`), the plan the cleaning agent fetches, and the rule a clean report must
//! meet ([`check_clean_report`]): every disk of the machine's inspected facts accounted for, by
//! serial or else by name and size, wiped with a method at least as strong as required, and
//! every byte that method requires erased. A report that falls short moves the machine to
//! `clean_failed` with the reason, whatever result the agent claimed.

use std::net::IpAddr;

use plinth_types::api::{
    CleanPlan, DiskFacts, Pool, PoolUpdate, WipeFallback, WipeMethod, WipedDisk,
};
use uuid::Uuid;

use crate::auth::Permission;
use crate::machines::not_found;
use crate::{App, DbResult, Principal, Result, validate};

/// The cleaning defaults: the `[clean]` section of the configuration deserializes into this
/// directly, with these defaults for what it leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanSettings {
    /// For pools without a method of their own: quick, discard, secure or full.
    pub method: WipeMethod,
    /// What `secure` (and `discard`) do on a disk that has no such erase: full or fail.
    #[serde(rename = "secure_fallback")]
    pub fallback: WipeFallback,
}

impl Default for CleanSettings {
    fn default() -> Self {
        CleanSettings {
            method: WipeMethod::Quick,
            fallback: WipeFallback::Full,
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// What a quick wipe must at least erase of a disk of `size` bytes: its first and last MiB.
fn quick_minimum(size: u64) -> u64 {
    size.min(2 * MIB)
}

fn describe(d: &DiskFacts) -> String {
    match &d.serial {
        Some(s) => format!("{} (serial {s}, {} bytes)", d.name, d.size_bytes),
        None => format!("{} ({} bytes)", d.name, d.size_bytes),
    }
}

/// The rule a clean report must meet (see the module's doc): `Err` with the reason it fails.
pub fn check_clean_report(
    facts: &[DiskFacts],
    reported: &[WipedDisk],
    required: WipeMethod,
) -> std::result::Result<(), String> {
    let mut problems = Vec::new();
    for f in facts {
        let serial = f.serial.as_deref().filter(|s| !s.trim().is_empty());
        let found = reported.iter().find(|r| match serial {
            Some(s) => r.serial.as_deref() == Some(s),
            None => r.name == f.name && r.size_bytes == f.size_bytes,
        });
        let Some(r) = found else {
            problems.push(format!("{} is missing from the report", describe(f)));
            continue;
        };
        let used = r.method.unwrap_or(WipeMethod::Quick);
        if used.strength() < required.strength() {
            problems.push(format!(
                "{} was wiped with {used}, the pool requires {required}",
                describe(f)
            ));
            continue;
        }
        let need = if required == WipeMethod::Quick && used == WipeMethod::Quick {
            quick_minimum(f.size_bytes)
        } else {
            f.size_bytes
        };
        if r.zeroed_bytes < need {
            problems.push(format!(
                "{}: {} bytes erased, {used} requires {need}",
                describe(f),
                r.zeroed_bytes
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the clean report does not cover the machine's disks: {}",
            problems.join("; ")
        ))
    }
}

/// The disks of a machine's facts (none before an inspection).
pub(crate) fn fact_disks(facts: &serde_json::Value) -> Vec<DiskFacts> {
    facts
        .get("disks")
        .cloned()
        .and_then(|d| serde_json::from_value(d).ok())
        .unwrap_or_default()
}

impl App {
    pub fn clean_settings(&self) -> CleanSettings {
        self.boot.settings.clean
    }

    /// The method a pool's machines are wiped with.
    pub(crate) async fn wipe_method_of(
        &self,
        conn: &mut plinth_db::PgConnection,
        pool: &str,
    ) -> Result<WipeMethod> {
        let set = plinth_db::pools::wipe_method(conn, pool).await.db()?;
        Ok(set.unwrap_or(self.clean_settings().method))
    }

    /// `GET /machines/{id}/clean-plan`: for the cleaning agent (its token, mode clean, not used
    /// up) or an operator.
    pub async fn clean_plan(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        id: Uuid,
    ) -> Result<CleanPlan> {
        self.reporter(secret, id, plinth_types::AgentMode::Clean, peer)
            .await?;
        let mut conn = self.conn().await?;
        let m = plinth_db::machines::get(&mut conn, id)
            .await
            .db()?
            .ok_or_else(|| not_found(id))?;
        Ok(CleanPlan {
            method: self.wipe_method_of(&mut conn, &m.pool).await?,
            fallback: self.clean_settings().fallback,
            disks: fact_disks(&m.facts),
        })
    }

    /// Every pool: those machines are in and those with settings.
    pub async fn list_pools(&self, who: &Principal) -> Result<Vec<Pool>> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        plinth_db::pools::list(&mut conn)
            .await
            .db()?
            .into_iter()
            .map(|r| self.pool_of(r))
            .collect()
    }

    fn pool_of(&self, r: plinth_db::pools::PoolRow) -> Result<Pool> {
        let wipe_method = r.wipe_method;
        Ok(Pool {
            effective_wipe_method: wipe_method.unwrap_or(self.clean_settings().method),
            wipe_method,
            name: r.name,
            machines: r.machines,
        })
    }

    /// `PUT /pools/{name}`: admins only (a pool's wipe method is a data-protection policy).
    pub async fn update_pool(&self, who: &Principal, name: &str, u: PoolUpdate) -> Result<Pool> {
        who.require(Permission::ManagePools)?;
        validate::pool(name)?;
        let mut tx = self.begin().await?;
        let before = plinth_db::pools::wipe_method(&mut tx, name).await.db()?;
        plinth_db::pools::set_wipe_method(&mut tx, name, u.wipe_method)
            .await
            .db()?;
        crate::record_event(
            &mut tx,
            who,
            "pool_updated",
            serde_json::json!({ "pool": name, "wipe_method": u.wipe_method, "before": before }),
        )
        .await?;
        let row = plinth_db::pools::get(&mut tx, name)
            .await
            .db()?
            .ok_or_else(crate::missing("update_pool"))?;
        tx.commit().await.db()?;
        tracing::info!(pool = name, wipe_method = ?u.wipe_method, actor = %who.name, "pool updated");
        self.pool_of(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(name: &str, size: u64, serial: Option<&str>) -> DiskFacts {
        DiskFacts {
            name: name.into(),
            size_bytes: size,
            model: None,
            serial: serial.map(Into::into),
            rotational: None,
        }
    }

    fn wiped(name: &str, size: u64, serial: Option<&str>, m: WipeMethod, erased: u64) -> WipedDisk {
        WipedDisk {
            name: name.into(),
            serial: serial.map(Into::into),
            size_bytes: size,
            zeroed_bytes: erased,
            full: erased == size,
            method: Some(m),
            verification: None,
            error: None,
        }
    }

    /// The rule, case by case.
    #[test]
    fn clean_reports_must_cover_every_disk() {
        use WipeMethod::*;
        let g = 1 << 30;
        let facts = [fact("sda", g, Some("S-A")), fact("vdb", 4 * g, None)];
        let ok = |r: &[WipedDisk], m| check_clean_report(&facts, r, m);
        // Both disks, quick: at least the ends of each.
        assert_eq!(
            ok(
                &[
                    wiped("sda", g, Some("S-A"), Quick, 2 * MIB),
                    wiped("vdb", 4 * g, None, Quick, 3 * MIB)
                ],
                Quick
            ),
            Ok(())
        );
        // A renamed disk is found by its serial (sda is now sdb after a reboot).
        assert_eq!(
            ok(
                &[
                    wiped("sdb", g, Some("S-A"), Full, g),
                    wiped("vdb", 4 * g, None, Full, 4 * g)
                ],
                Full
            ),
            Ok(())
        );
        // One left out: refused, naming it.
        let e = ok(&[wiped("sda", g, Some("S-A"), Full, g)], Quick).unwrap_err();
        assert!(e.contains("vdb") && e.contains("missing"), "{e}");
        // A disk without serial is matched by name and size: another size is another disk.
        let e = ok(
            &[
                wiped("sda", g, Some("S-A"), Full, g),
                wiped("vdb", g, None, Full, g),
            ],
            Quick,
        )
        .unwrap_err();
        assert!(e.contains("vdb") && e.contains("missing"), "{e}");
        // Too weak a method, or fewer bytes than it requires.
        let e = ok(
            &[
                wiped("sda", g, Some("S-A"), Quick, 2 * MIB),
                wiped("vdb", 4 * g, None, Full, 4 * g),
            ],
            Full,
        )
        .unwrap_err();
        assert!(
            e.contains("wiped with quick, the pool requires full"),
            "{e}"
        );
        let e = ok(
            &[
                wiped("sda", g, Some("S-A"), Full, g - 1),
                wiped("vdb", 4 * g, None, Full, 4 * g),
            ],
            Full,
        )
        .unwrap_err();
        assert!(e.contains("bytes erased"), "{e}");
        let e = ok(
            &[
                wiped("sda", g, Some("S-A"), Quick, MIB),
                wiped("vdb", 4 * g, None, Quick, 2 * MIB),
            ],
            Quick,
        )
        .unwrap_err();
        assert!(e.contains("sda") && e.contains("bytes erased"), "{e}");
        // Stronger than required is fine; secure counts as much as full; discard is between.
        assert_eq!(
            ok(
                &[
                    wiped("sda", g, Some("S-A"), Secure, g),
                    wiped("vdb", 4 * g, None, Discard, 4 * g)
                ],
                Discard
            ),
            Ok(())
        );
        assert!(
            ok(
                &[
                    wiped("sda", g, Some("S-A"), Discard, g),
                    wiped("vdb", 4 * g, None, Full, 4 * g)
                ],
                Secure
            )
            .is_err()
        );
        // An agent from before wipe methods reports none: quick.
        let mut old = wiped("sda", g, Some("S-A"), Quick, 2 * MIB);
        old.method = None;
        assert_eq!(
            ok(
                &[old.clone(), wiped("vdb", 4 * g, None, Quick, 2 * MIB)],
                Quick
            ),
            Ok(())
        );
        assert!(ok(&[old, wiped("vdb", 4 * g, None, Full, 4 * g)], Full).is_err());
        // No facts (never inspected): nothing to account for.
        assert_eq!(check_clean_report(&[], &[], Full), Ok(()));
    }
}
