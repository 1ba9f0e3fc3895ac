//! The event stream (`GET /api/v1/events/stream`): the audit log followed live.
//!
//! A stream reads the events of plinth-db's `feed` in its order, `(txid, id)`: only the events
//! of transactions older than every transaction still running, so that an event committed late
//! (its id taken before another event's that committed first) still comes, after those already
//! sent, and none is skipped (docs/decisions.md). Each stream waits for `NOTIFY events` (sent by
//! the trigger on every insert, at commit) and reads again at least every `stream_poll_secs`:
//! the notification is a hint (DESIGN.md), and an event committed while an older transaction
//! still runs becomes readable only when that one ends.
//!
//! One LISTEN connection per instance (the [`Hub`]) wakes every stream of the instance. A
//! caller has at most `streams_per_caller` streams open on an instance at once. What a caller
//! sees is what the events list shows it: everything with `ReadInventory`; for a client, the
//! events of the machines it holds an allocation of, from the allocation's start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plinth_db::feed::{Filter, Position};
use plinth_types::Error;
use plinth_types::api::Event;
use plinth_types::feed::{MAX_KINDS, valid_kind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result, convert};

/// The most events one read hands a stream.
const PAGE: i64 = 500;

/// How the streams behave; `[events]`' stream keys deserialize into this.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// Streams one caller (a token, a UI user) may hold open on one instance at once.
    pub streams_per_caller: usize,
    /// A stream reads again at least this often, notified or not.
    #[serde(
        rename = "stream_poll_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub poll: Duration,
    /// An idle stream sends a comment this often, so that proxies keep it open and a dead
    /// client is noticed.
    #[serde(
        rename = "stream_keepalive_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub keepalive: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            streams_per_caller: 16,
            poll: Duration::from_secs(2),
            keepalive: Duration::from_secs(15),
        }
    }
}

/// The wake-ups shared by the streams of one instance, and their count per caller.
pub struct Hub {
    settings: StreamSettings,
    wake: watch::Sender<u64>,
    started: std::sync::Once,
    /// Cancelled when the instance stops: every stream ends.
    closing: CancellationToken,
    open: Mutex<HashMap<String, usize>>,
}

impl Hub {
    pub(crate) fn new(settings: StreamSettings) -> Hub {
        Hub {
            settings,
            wake: watch::Sender::new(0),
            started: std::sync::Once::new(),
            closing: CancellationToken::new(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// `LISTEN events`, started with the first stream; reconnects after errors.
    fn start(self: &Arc<Self>, pool: plinth_db::PgPool) {
        self.started.call_once(|| {
            let hub = self.clone();
            tokio::spawn(async move {
                loop {
                    let res: plinth_db::Result<()> = async {
                        let mut l = plinth_db::Listener::connect(&pool, "events").await?;
                        // Whatever happened while no one listened is read now.
                        hub.wake.send_modify(|n| *n += 1);
                        loop {
                            l.recv().await?;
                            hub.wake.send_modify(|n| *n += 1);
                        }
                    }
                    .await;
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "LISTEN events: reconnecting");
                    }
                    tokio::select! {
                        _ = hub.closing.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            });
        });
    }
}

/// A stream's place in the count of its caller's streams; freed when dropped.
struct Slot {
    hub: Arc<Hub>,
    caller: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.hub.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// What a stream is asked for.
#[derive(Debug, Clone, Default)]
pub struct StreamQuery {
    pub machine: Option<Uuid>,
    /// None or empty: every kind.
    pub kinds: Option<Vec<String>>,
    /// Continue after this event of the stream (`Last-Event-ID`); None: from now.
    pub after: Option<i64>,
}

/// An open stream: read its events with [`EventStream::next`].
pub struct EventStream {
    app: App,
    filter: Filter,
    position: Position,
    wake: watch::Receiver<u64>,
    closing: CancellationToken,
    poll: Duration,
    keepalive: Duration,
    _slot: Slot,
}

/// What [`EventStream::next`] found.
#[derive(Debug)]
pub enum Next {
    Events(Vec<Event>),
    /// Nothing for a keep-alive interval: send a comment.
    Idle,
    /// The instance is stopping: end the stream.
    Closed,
}

impl App {
    /// Opens a stream of the events `who` may see (the same rules as [`App::events`]).
    pub async fn event_stream(&self, who: &Principal, q: StreamQuery) -> Result<EventStream> {
        let kinds = match q.kinds {
            Some(k) if !k.is_empty() => {
                if k.len() > MAX_KINDS || !k.iter().all(|k| valid_kind(k)) {
                    return Err(Error::invalid(
                        "invalid_kind",
                        format!(
                            "kinds are at most {MAX_KINDS} names of lowercase letters, digits and _"
                        ),
                    ));
                }
                Some(k)
            }
            _ => None,
        };
        let mut conn = self.conn().await?;
        let owner_token_id = match q.machine {
            Some(id) => {
                self.visible_row(&mut conn, who, id).await?;
                who.owner_scope()
            }
            None => match who.owner_scope() {
                Some(owner) => Some(owner),
                None => {
                    who.require(Permission::ReadInventory)?;
                    None
                }
            },
        };
        let (position, started) = match q.after {
            Some(id) => (
                plinth_db::feed::position_of(&mut conn, id)
                    .await
                    .db()?
                    .ok_or_else(|| {
                        Error::invalid(
                            "invalid_last_event_id",
                            format!("there is no event {id} to continue after"),
                        )
                    })?,
                None,
            ),
            None => {
                let (p, snapshot) = plinth_db::feed::now(&mut conn).await.db()?;
                (p, Some(snapshot))
            }
        };
        drop(conn);
        let hub = self.hub.clone();
        {
            let mut open = hub.open.lock().unwrap_or_else(|e| e.into_inner());
            let n = open.entry(who.name.clone()).or_insert(0);
            if *n >= hub.settings.streams_per_caller {
                return Err(Error::new(
                    plinth_types::ErrorKind::TooMany,
                    "too_many_streams",
                    format!(
                        "at most {} event streams at once per caller",
                        hub.settings.streams_per_caller
                    ),
                ));
            }
            *n += 1;
        }
        let slot = Slot {
            hub: hub.clone(),
            caller: who.name.clone(),
        };
        hub.start(self.pool.clone());
        Ok(EventStream {
            app: self.clone(),
            filter: Filter {
                machine_id: q.machine,
                kinds,
                owner_token_id,
                started,
            },
            position,
            wake: hub.wake.subscribe(),
            closing: hub.closing.clone(),
            poll: hub.settings.poll,
            keepalive: hub.settings.keepalive,
            _slot: slot,
        })
    }

    /// Ends every event stream of this instance (it is stopping).
    pub fn close_event_streams(&self) {
        self.hub.closing.cancel();
    }
}

impl EventStream {
    /// The next events: at once if some are there, else after a wake-up or a poll interval
    /// finds some; [`Next::Idle`] after a keep-alive interval without any.
    pub async fn next(&mut self) -> Result<Next> {
        let idle_at = tokio::time::Instant::now() + self.keepalive;
        loop {
            if self.closing.is_cancelled() {
                return Ok(Next::Closed);
            }
            self.wake.mark_unchanged();
            let events = self.read().await?;
            if !events.is_empty() {
                return Ok(Next::Events(events));
            }
            let poll_at = (tokio::time::Instant::now() + self.poll).min(idle_at);
            tokio::select! {
                _ = self.closing.cancelled() => return Ok(Next::Closed),
                _ = self.wake.changed() => {}
                _ = tokio::time::sleep_until(poll_at) => {}
            }
            if tokio::time::Instant::now() >= idle_at {
                return Ok(Next::Idle);
            }
        }
    }

    async fn read(&mut self) -> Result<Vec<Event>> {
        let mut conn = self.app.conn().await?;
        let rows = plinth_db::feed::read(&mut conn, self.position, &self.filter, PAGE)
            .await
            .db()?;
        if let Some((p, _)) = rows.last() {
            self.position = *p;
        }
        rows.into_iter().map(|(_, e)| convert::event(e)).collect()
    }
}
