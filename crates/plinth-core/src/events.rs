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
