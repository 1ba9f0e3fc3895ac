//! The audit log, read side.

use chrono::{DateTime, Utc};
use plinth_types::Error;
use plinth_types::api::EventPage;
use uuid::Uuid;

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result, convert};

pub const MAX_EVENTS: u32 = 1000;

#[derive(Debug, Default, Clone)]
pub struct EventQuery {
    pub since: Option<DateTime<Utc>>,
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

impl App {
    /// For a client, when its tenancy of the machine began (its allocation): it sees the
    /// machine's events from then on, not the earlier tenants', nor how the machine was racked
    /// and inspected. `None` for everyone else.
    pub(crate) async fn tenancy_start(
        &self,
        conn: &mut plinth_db::PgConnection,
        who: &Principal,
        row: &plinth_db::machines::MachineRow,
    ) -> Result<Option<DateTime<Utc>>> {
        if who.owner_scope().is_none() {
            return Ok(None);
        }
        let Some(alloc) = row.allocation_id else {
            return Ok(None);
        };
        Ok(plinth_db::allocations::get(conn, alloc)
            .await
            .db()?
            .map(|a| a.created_at))
    }

    /// All events (`machine` = None) or one machine's, oldest first.
    pub async fn events(
        &self,
        who: &Principal,
        machine: Option<Uuid>,
        q: EventQuery,
    ) -> Result<EventPage> {
        let mut conn = self.conn().await?;
        let mut since = q.since;
        match machine {
            Some(id) => {
                let row = self.visible_row(&mut conn, who, id).await?;
                if let Some(start) = self.tenancy_start(&mut conn, who, &row).await? {
                    since = Some(since.map_or(start, |s| s.max(start)));
                }
            }
            None => who.require(Permission::ReadInventory)?,
        }
        let limit = q.limit.unwrap_or(MAX_EVENTS);
        if limit == 0 || limit > MAX_EVENTS {
            return Err(Error::invalid(
                "invalid_limit",
                format!("limit must be between 1 and {MAX_EVENTS}"),
            ));
        }
        let rows = plinth_db::events::list(&mut conn, machine, since, q.after, i64::from(limit))
            .await
            .db()?;
        let last_id = rows.last().map(|e| e.id);
        let events = rows
            .into_iter()
            .map(convert::event)
            .collect::<Result<Vec<_>>>()?;
        Ok(EventPage { events, last_id })
    }
}

/// The capped events (`plinth_db::events::insert_capped`) that the database last refused, by
/// machine and kind: for [`CapMemo::PAUSE`] after that, more of the same (a flood of refused
/// tokens or metadata requests) skips the database altogether, since it would refuse them
/// too. Also for ids that name no machine. Bounded: past [`CapMemo::MOST`] entries, after
/// dropping the expired ones, nothing new is remembered (each such refusal then asks the
/// database, as before). The cap stays approximate by a pause's worth: an event the sliding
/// window would have taken again during a pause is not recorded.
#[derive(Debug, Default)]
pub(crate) struct CapMemo {
    until: std::sync::Mutex<std::collections::HashMap<(Uuid, &'static str), std::time::Instant>>,
}

impl CapMemo {
    pub(crate) const PAUSE: std::time::Duration = std::time::Duration::from_secs(10);
    pub(crate) const MOST: usize = 4096;

    /// Whether events of `kind` on `id` are known to be past their cap now.
    pub(crate) fn capped(&self, id: Uuid, kind: &'static str) -> bool {
        self.capped_at(id, kind, std::time::Instant::now())
    }

    /// The database refused an event of `kind` on `id` (its cap, or no such machine).
    pub(crate) fn note(&self, id: Uuid, kind: &'static str) {
        self.note_at(id, kind, std::time::Instant::now());
    }

    fn capped_at(&self, id: Uuid, kind: &'static str, now: std::time::Instant) -> bool {
        let until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        until.get(&(id, kind)).is_some_and(|t| now < *t)
    }

    fn note_at(&self, id: Uuid, kind: &'static str, now: std::time::Instant) {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if until.len() >= Self::MOST && !until.contains_key(&(id, kind)) {
            until.retain(|_, t| now < *t);
            if until.len() >= Self::MOST {
                return;
            }
        }
        until.insert((id, kind), now + Self::PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_capped_machine_is_remembered_for_a_pause_and_the_memo_stays_bounded() {
        let memo = CapMemo::default();
        let t0 = Instant::now();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(!memo.capped_at(a, "k", t0));
        memo.note_at(a, "k", t0);
        assert!(memo.capped_at(a, "k", t0 + Duration::from_secs(9)));
        assert!(!memo.capped_at(a, "other", t0), "by kind");
        assert!(!memo.capped_at(b, "k", t0), "by machine");
        assert!(
            !memo.capped_at(a, "k", t0 + CapMemo::PAUSE),
            "until the pause ends"
        );
        // Full: nothing new is remembered while every entry is live...
        for n in 0..CapMemo::MOST as u128 {
            memo.note_at(Uuid::from_u128(1000 + n), "k", t0);
        }
        memo.note_at(b, "k", t0 + Duration::from_secs(1));
        assert!(!memo.capped_at(b, "k", t0 + Duration::from_secs(1)));
        // ...and once they have expired, they make room.
        let later = t0 + CapMemo::PAUSE + Duration::from_secs(1);
        memo.note_at(b, "k", later);
        assert!(memo.capped_at(b, "k", later));
        assert_eq!(memo.until.lock().unwrap().len(), 1);
    }
}
