//! `plinth events` and the events table (`plinth machine events` shows it too): the audit log.

use anyhow::Context;
use plinth_client::query::EventFilter;
use plinth_types::api::Event;

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
