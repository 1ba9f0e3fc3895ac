//! The event stream's reads: events in the order a stream hands them out.
//!
//! A stream's position is `(txid, id)`: the writing transaction's id and the event's. Only the
//! events of transactions older than every transaction still running are read (`txid <
//! pg_snapshot_xmin`), in `(txid, id)` order, so an event that becomes visible later always
//! sorts after every event already read, and a cursor never skips one (docs/decisions.md).
//! Events written before the column existed count as transaction 0.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;
use crate::events::EventRow;

/// A place in the stream: after the event `id` of transaction `txid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub txid: i64,
    pub id: i64,
}

/// What a stream may see.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub machine_id: Option<Uuid>,
    /// None: every kind.
    pub kinds: Option<Vec<String>>,
    /// A client's token: only the events of machines it holds an allocation of, from the
    /// allocation's start.
    pub owner_token_id: Option<Uuid>,
    /// The snapshot a stream started from ([`now`]): the events of transactions visible in it
    /// happened before the stream began and are not read.
    pub started: Option<String>,
}

/// Where a stream that starts now begins: after everything settled, and the current snapshot,
/// whose committed transactions ([`Filter::started`]) are behind it too. What commits from now
/// on is ahead.
pub async fn now(conn: &mut PgConnection) -> Result<(Position, String)> {
    let r = sqlx::query!(
        r#"select pg_snapshot_xmin(s)::text::bigint as "xmin!", s::text as "snapshot!"
           from (select pg_current_snapshot() as s) x"#
    )
    .fetch_one(conn)
    .await?;
    Ok((
        Position {
            txid: r.xmin - 1,
            id: i64::MAX,
        },
        r.snapshot,
    ))
}

/// The position of event `id` (None: no such event).
pub async fn position_of(conn: &mut PgConnection, id: i64) -> Result<Option<Position>> {
    let txid = sqlx::query_scalar!(
        r#"select coalesce(txid, '0'::xid8)::text::bigint as "txid!" from events where id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await?;
    Ok(txid.map(|txid| Position { txid, id }))
}

/// Up to `limit` settled events after `after` that the filter lets through, in stream order,
/// each with its position.
pub async fn read(
    conn: &mut PgConnection,
    after: Position,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<(Position, EventRow)>> {
    let rows = sqlx::query!(
        r#"select e.id, e.at, e.actor, e.machine_id, e.kind, e.from_state, e.to_state, e.details,
                  coalesce(e.txid, '0'::xid8)::text::bigint as "txid!"
           from events e
           where (coalesce(e.txid, '0'::xid8), e.id) > ($1::bigint::text::xid8, $2::bigint)
             and coalesce(e.txid, '0'::xid8) < pg_snapshot_xmin(pg_current_snapshot())
             and ($3::uuid is null or e.machine_id = $3)
             and ($4::text[] is null or e.kind = any ($4))
             and ($5::uuid is null or exists (
                   select 1 from machines m join allocations a on a.id = m.allocation_id
                   where m.id = e.machine_id and a.owner_token_id = $5 and e.at >= a.created_at))
             and ($7::text is null
                  or not pg_visible_in_snapshot(coalesce(e.txid, '0'::xid8), $7::text::pg_snapshot))
           order by coalesce(e.txid, '0'::xid8), e.id
           limit $6"#,
        after.txid,
        after.id,
        filter.machine_id,
        filter.kinds.as_deref(),
        filter.owner_token_id,
        limit,
        filter.started.as_deref()
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                Position {
                    txid: r.txid,
                    id: r.id,
                },
                EventRow {
                    id: r.id,
                    at: r.at,
                    actor: r.actor,
                    machine_id: r.machine_id,
                    kind: r.kind,
                    from_state: r.from_state,
                    to_state: r.to_state,
                    details: r.details,
                },
            )
        })
        .collect())
}
