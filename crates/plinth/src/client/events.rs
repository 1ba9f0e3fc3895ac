//! `plinth events` and the events table (`plinth machine events` shows it too): the audit log.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use plinth_client::query::{EventFilter, StreamFilter};
use plinth_types::api::Event;
use uuid::Uuid;

use super::Api;
use super::output::{Output, dash, table};

/// `plinth events [--since TIME] [--limit N]`.
pub async fn list(api: &Api, since: Option<String>, limit: Option<u32>) -> anyhow::Result<()> {
    let since = since
        .map(|s| {
            s.parse::<chrono::DateTime<chrono::Utc>>()
                .with_context(|| format!("--since {s}: not an RFC 3339 time"))
        })
        .transpose()?;
    let page = api
        .client
        .list_events(&EventFilter {
            since,
            after: None,
            limit,
        })
        .await?;
    if api.output == Output::Json {
        return api.print_json(&page);
    }
    print_events(&page.events);
    Ok(())
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Follow the event stream: one line per event as it happens (with `-o json`, one JSON
    /// object per line). Reconnects after the last event seen when the connection drops.
    Watch {
        /// Only this machine's events.
        #[arg(long)]
        machine: Option<Uuid>,
        /// Only this kind (repeat for several).
        #[arg(long)]
        kind: Vec<String>,
        /// Start after this event id (default: from now).
        #[arg(long)]
        after: Option<i64>,
    },
}

pub async fn run(api: &Api, cmd: EventsCommand) -> anyhow::Result<()> {
    match cmd {
        EventsCommand::Watch {
            machine,
            kind,
            after,
        } => watch(api, machine, kind, after).await,
    }
}

/// A silence longer than this (the server sends a comment every 15 s by default) counts as a
/// dead connection.
const IDLE: Duration = Duration::from_secs(60);

async fn watch(
    api: &Api,
    machine: Option<Uuid>,
    kinds: Vec<String>,
    mut after: Option<i64>,
) -> anyhow::Result<()> {
    let mut failures = 0u32;
    loop {
        let filter = StreamFilter {
            machine,
            kinds: kinds.clone(),
            after,
        };
        let mut stream = match api.client.event_stream(&filter, IDLE).await {
            Ok(s) => s,
            // A refusal (a bad filter, no such machine, a forbidden role) is final.
            Err(e) if !e.is_transient() => return Err(e.into()),
            Err(e) => {
                failures += 1;
                eprintln!("event stream: {e}; connecting again");
                tokio::time::sleep(Duration::from_secs(u64::from(failures.min(10)))).await;
                continue;
            }
        };
        loop {
            match stream.next().await {
                Ok(Some(e)) => {
                    failures = 0;
                    if api.output == Output::Json {
                        println!("{}", serde_json::to_string(&e)?);
                    } else {
                        println!("{}", line(&e));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("event stream: {e}; connecting again");
                    break;
                }
            }
        }
        after = stream.last_id().or(after);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One event on one line: id, time, kind, machine, transition, actor.
fn line(e: &Event) -> String {
    let mut s = format!("{} {} {}", e.id, e.at.format("%Y-%m-%dT%H:%M:%SZ"), e.kind);
    if let Some(m) = e.machine_id {
        s.push_str(&format!(" machine={m}"));
    }
    if e.from_state.is_some() || e.to_state.is_some() {
        s.push_str(&format!(" {}->{}", dash(e.from_state), dash(e.to_state)));
    }
    s.push_str(&format!(" actor={}", e.actor));
    s
}

pub(super) fn print_events(events: &[Event]) {
    table(
        &["ID", "AT", "ACTOR", "MACHINE", "KIND", "FROM", "TO"],
        events
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    e.actor.clone(),
                    dash(e.machine_id),
                    e.kind.clone(),
                    dash(e.from_state),
                    dash(e.to_state),
                ]
            })
            .collect(),
    );
}
