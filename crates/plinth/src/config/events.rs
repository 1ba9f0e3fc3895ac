//! `[events]`: the event stream and the webhook worker.

use anyhow::bail;
use serde::{Deserialize, Deserializer};

use plinth_core::stream::StreamSettings;
use plinth_core::workers::WebhookSettings;

use super::section::Section;

/// `[events]`: one flat section whose keys deserialize into plinth-core's `StreamSettings`
/// (`streams_per_caller`, `stream_*`) and `WebhookSettings` (`webhook_*`), each with its own
/// defaults.
#[derive(Debug, Clone, Default)]
pub struct EventsConfig {
    pub stream: StreamSettings,
    pub webhooks: WebhookSettings,
}

impl<'de> Deserialize<'de> for EventsConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut s = Section::read("events", d)?;
        let c = EventsConfig {
            stream: s.part()?,
            webhooks: s.part()?,
        };
        s.finish()?;
        Ok(c)
    }
}

impl EventsConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let (s, w) = (&self.stream, &self.webhooks);
        if s.streams_per_caller == 0 || s.poll.is_zero() || s.keepalive.is_zero() {
            bail!(
                "events.streams_per_caller, events.stream_poll_secs and events.stream_keepalive_secs must be at least 1"
            );
        }
        if w.concurrency == 0 || w.timeout.is_zero() || w.backoff_base.is_zero() {
            bail!(
                "events.webhook_concurrency, events.webhook_timeout_secs and events.webhook_backoff_base_secs must be at least 1"
            );
        }
        if w.backoff_max < w.backoff_base {
            bail!(
                "events.webhook_backoff_max_secs must not be below events.webhook_backoff_base_secs"
            );
        }
        Ok(())
    }
}
