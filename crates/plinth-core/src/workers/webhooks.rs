//! The webhook worker: delivers the queue of `webhook_deliveries` (filled by a trigger in each
//! event's own transaction) to the registered receivers.
//!
//! Like the job runner (DESIGN.md): it claims the head of each (webhook, machine) queue with
//! `FOR UPDATE SKIP LOCKED` and a lease, commits, POSTs with no transaction open under
//! `webhook_timeout_secs`, and records the outcome in a new transaction, fenced by the attempt
//! number. A queue's next delivery is claimed only once the one before is delivered or dead,
//! so a receiver sees one machine's events in order; several instances share the queues
//! without sending one event twice at once (a lease outlives the request's timeout; if the
//! worker dies, the lease passes and another instance sends it again: at least once).
//!
//! A failure (no answer, a timeout, any status but 2xx) is tried again after an exponential
//! backoff with jitter, capped at `webhook_backoff_max_secs`; a delivery failing for longer
//! than `webhook_dead_after_secs` since its first attempt is marked dead and the next of its
//! queue goes. The body is the event as `GET /api/v1/events` shows it; the signature is
//! `sha256=` and the hex HMAC-SHA256, keyed with the webhook's secret, of the timestamp, a dot
//! and the body (docs/api.md says how to check it).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use plinth_db::webhooks::{Claimed, Outcome};
use sha2::Sha256;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{App, DbResult, Result, convert};

/// How the webhook worker behaves; `[events]`' webhook keys deserialize into this.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Deliveries in flight at once on this instance (each to a different queue).
    #[serde(rename = "webhook_concurrency")]
    pub concurrency: usize,
    /// The longest one POST may take, connection included.
    #[serde(
        rename = "webhook_timeout_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub timeout: Duration,
    /// Backoff after a failure: `backoff_base * 2^(attempt-1)`, at most `backoff_max`.
    #[serde(
        rename = "webhook_backoff_base_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub backoff_base: Duration,
    #[serde(
        rename = "webhook_backoff_max_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub backoff_max: Duration,
    /// A delivery failing for this long since its first attempt is given up (dead).
    #[serde(
        rename = "webhook_dead_after_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub dead_after: Duration,
    /// Delivered and dead deliveries are kept this long (for `GET .../deliveries`).
    #[serde(
        rename = "webhook_retention_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub retention: Duration,
    /// How often the queue is read without a notification.
    #[serde(skip)]
    pub poll: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            concurrency: 16,
            timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            dead_after: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(7 * 24 * 3600),
            poll: Duration::from_secs(1),
        }
    }
}

impl WebhookSettings {
    /// A claimed delivery's lease: its request's timeout and a margin to record the outcome.
    fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(30)
    }

    fn backoff(&self, attempt: i32) -> Duration {
        super::backoff(self.backoff_base, self.backoff_max, attempt)
    }
}

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers webhooks; one per instance, started by `plinth serve`.
#[derive(Clone)]
pub struct WebhookWorker {
    app: App,
    settings: WebhookSettings,
    http: reqwest::Client,
    wake: Arc<Notify>,
}

impl WebhookWorker {
    pub fn new(app: App, settings: WebhookSettings) -> Result<WebhookWorker> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A receiver's redirect is not followed: the admin chose the URL, not the receiver.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("plinth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                tracing::error!(error = %e, "webhook HTTP client");
                plinth_types::Error::internal()
            })?;
        Ok(WebhookWorker {
            app,
            settings,
            http,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Delivers until `cancel`: deliveries under way when it comes finish (each within its
    /// timeout).
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let listen = tokio::spawn(listen(
            self.app.pool().clone(),
            self.wake.clone(),
            cancel.clone(),
        ));
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut running = JoinSet::new();
        let mut purged_at: Option<tokio::time::Instant> = None;
        while !cancel.is_cancelled() {
            if purged_at.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                purged_at = Some(tokio::time::Instant::now());
                let mut conn = self.app.conn().await;
                if let Ok(conn) = conn.as_mut() {
                    match plinth_db::webhooks::purge(conn, self.settings.retention.as_secs_f64())
                        .await
                    {
                        Ok(n) if n > 0 => tracing::info!(n, "old webhook deliveries purged"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "purging old webhook deliveries"),
                    }
                }
            }
            let free = slots.available_permits();
            if free > 0 {
                match self.claim(free).await {
                    Ok(claimed) => {
                        for c in claimed {
                            let permit = slots.clone().acquire_owned().await.ok();
                            let me = self.clone();
                            running.spawn(async move {
                                me.deliver(c).await;
                                drop(permit);
                                me.wake.notify_one();
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e.message, "claiming webhook deliveries"),
                }
            }
            while running.try_join_next().is_some() {}
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
        while running.join_next().await.is_some() {}
        listen.abort();
        Ok(())
    }

    /// One pass, for tests: claims what is due and delivers it, waiting for the outcomes.
    /// Returns how many deliveries were attempted.
    #[cfg(feature = "testing")]
    pub async fn run_once(&self) -> Result<usize> {
        let claimed = self.claim(self.settings.concurrency.max(1)).await?;
        let n = claimed.len();
        let mut running = JoinSet::new();
        for c in claimed {
            let me = self.clone();
            running.spawn(async move { me.deliver(c).await });
        }
        while running.join_next().await.is_some() {}
        Ok(n)
    }

    async fn claim(&self, n: usize) -> Result<Vec<Claimed>> {
        let mut conn = self.app.conn().await?;
        plinth_db::webhooks::claim(
            &mut conn,
            self.settings.lease().as_secs_f64(),
            i64::try_from(n).unwrap_or(i64::MAX),
        )
        .await
        .db()
    }

    async fn deliver(&self, c: Claimed) {
        let (webhook_id, event_id, attempt) = (c.webhook_id, c.event.id, c.attempt);
        let span = tracing::info_span!("webhook", %webhook_id, event_id, attempt);
        let outcome = self.attempt(c).await;
        match &outcome {
            Outcome::Delivered { status } => {
                tracing::debug!(parent: &span, status, "webhook delivered")
            }
            Outcome::Retry { error, .. } => {
                tracing::info!(parent: &span, error = %error, "webhook delivery failed; will retry")
            }
            Outcome::Dead { error, .. } => {
                tracing::warn!(parent: &span, error = %error, "webhook delivery given up")
            }
        }
        let recorded = async {
            let mut conn = self.app.conn().await?;
            plinth_db::webhooks::finish(&mut conn, webhook_id, event_id, attempt, &outcome)
                .await
                .db()
        }
        .await;
        match recorded {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(parent: &span, "webhook delivery taken over by another worker")
            }
            // The lease passes and the delivery is sent again: at least once.
            Err(e) => {
                tracing::warn!(parent: &span, error = %e.message, "webhook outcome not recorded")
            }
        }
    }

    async fn attempt(&self, c: Claimed) -> Outcome {
        let failed = |status: Option<i32>, error: String| {
            let failing_for = (Utc::now() - c.first_attempt_at)
                .to_std()
                .unwrap_or_default();
            if failing_for >= self.settings.dead_after {
                Outcome::Dead { status, error }
            } else {
                Outcome::Retry {
                    status,
                    error,
                    retry_in_secs: self.settings.backoff(c.attempt).as_secs_f64(),
                }
            }
        };
        let secret =
            match self
                .app
                .bmc_key
                .decrypt(c.webhook_id, &c.secret_nonce, &c.secret_ciphertext)
            {
                Ok(s) => s,
                Err(e) => return failed(None, e.to_string()),
            };
        let event_id = c.event.id;
        let body = match convert::event(c.event).map(|e| serde_json::to_vec(&e)) {
            Ok(Ok(b)) => b,
            _ => return failed(None, "the event could not be encoded".into()),
        };
        let timestamp = Utc::now().timestamp().to_string();
        let sig = signature(&secret, &timestamp, &body);
        let res = self
            .http
            .post(&c.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Plinth-Event-Id", event_id.to_string())
            .header("X-Plinth-Webhook-Id", c.webhook_id.to_string())
            .header("X-Plinth-Timestamp", &timestamp)
            .header("X-Plinth-Signature", sig)
            .header("X-Plinth-Attempt", c.attempt.to_string())
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => Outcome::Delivered {
                status: i32::from(r.status().as_u16()),
            },
            Ok(r) => failed(
                Some(i32::from(r.status().as_u16())),
                format!("the receiver answered {}", r.status()),
            ),
            Err(e) if e.is_timeout() => failed(
                None,
                format!("no answer within {} s", self.settings.timeout.as_secs_f64()),
            ),
            Err(e) if e.is_connect() => failed(None, "could not connect".into()),
            Err(_) => failed(None, "the request failed".into()),
        }
    }
}

/// LISTEN webhooks: each NOTIFY (a delivery queued, by any instance) wakes the worker. (An
/// instance of the release before notifies `events` only: during a rolling upgrade its
/// deliveries wait for the worker's poll.)
async fn listen(pool: plinth_db::PgPool, wake: Arc<Notify>, cancel: CancellationToken) {
    loop {
        let res: plinth_db::Result<()> = async {
            let mut l = plinth_db::Listener::connect(&pool, "webhooks").await?;
            loop {
                l.recv().await?;
                wake.notify_one();
            }
        }
        .await;
        if let Err(e) = res {
            tracing::debug!(error = %e, "LISTEN events: reconnecting");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // The expected value made with Python's hmac module, as a receiver would check it.
        assert_eq!(
            signature("whsec_test_secret_1234", "1733436000", br#"{"id":1}"#),
            "sha256=acc7de7f33843bd89789d7a9a82d49206e63782a342f255fd6208bb15a696ada"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = WebhookSettings::default();
        let b1 = s.backoff(1).as_secs_f64();
        assert!((0.8..=1.2).contains(&b1));
        let b4 = s.backoff(4).as_secs_f64();
        assert!((6.4..=9.6).contains(&b4));
        let b30 = s.backoff(30).as_secs_f64();
        assert!((240.0..=360.0).contains(&b30));
    }
}
