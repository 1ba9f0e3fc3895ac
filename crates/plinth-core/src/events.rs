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
    /// All events (`machine` = None) or one machine's, oldest first.
    pub async fn events(
        &self,
        who: &Principal,
        machine: Option<Uuid>,
        q: EventQuery,
    ) -> Result<EventPage> {
        let mut conn = self.conn().await?;
        match machine {
            Some(id) => {
                self.visible_row(&mut conn, who, id).await?;
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
        let rows = plinth_db::events::list(&mut conn, machine, q.since, q.after, i64::from(limit))
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
