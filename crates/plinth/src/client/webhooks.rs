//! `plinth webhook add|list|remove|deliveries` (admins). A webhook's secret is printed once,
//! when it is made, on standard output alone; what it is goes to standard error.

use clap::Subcommand;
use plinth_client::query::DeliveryFilter;
use plinth_types::feed::{DeliveryState, Webhook, WebhookCreate};
use uuid::Uuid;

use super::Api;
use super::output::{Output, dash, table};

#[derive(Subcommand)]
pub enum WebhookCommand {
    /// Register a URL to which every event (or those of `--kind`) is POSTed, signed.
    Add {
        url: String,
        /// The signing secret (at least 16 characters); unset: plinth makes one and prints it.
        #[arg(long, env = "PLINTH_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Only this kind (repeat for several); unset: every kind.
        #[arg(long)]
        kind: Vec<String>,
    },
    /// Every webhook, with its pending and dead deliveries.
    List,
    /// Remove a webhook and its queued deliveries.
    Remove { id: Uuid },
    /// A webhook's deliveries, newest first.
    Deliveries {
        id: Uuid,
        /// pending, delivered or dead.
        #[arg(long, value_parser = parse_state)]
        state: Option<DeliveryState>,
        #[arg(long)]
        limit: Option<u32>,
    },
}

fn parse_state(s: &str) -> Result<DeliveryState, String> {
    DeliveryState::parse(s).ok_or_else(|| format!("{s:?}: one of pending, delivered, dead"))
}

const HEADERS: &[&str] = &["ID", "URL", "KINDS", "PENDING", "DEAD", "CREATED_BY"];

fn rows(ws: &[Webhook]) -> Vec<Vec<String>> {
    ws.iter()
        .map(|w| {
            vec![
                w.id.to_string(),
                w.url.clone(),
                w.kinds.as_ref().map_or("*".into(), |k| k.join(",")),
                w.pending.to_string(),
                w.dead.to_string(),
                w.created_by.clone(),
            ]
        })
        .collect()
}

pub async fn run(api: &Api, cmd: WebhookCommand) -> anyhow::Result<()> {
    match cmd {
        WebhookCommand::Add { url, secret, kind } => {
            let made = api
                .client
                .create_webhook(&WebhookCreate {
                    url,
                    secret,
                    kinds: (!kind.is_empty()).then_some(kind),
                })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&made);
            }
            eprintln!(
                "webhook {} for {}; its secret is shown only now:",
                made.webhook.id, made.webhook.url
            );
            println!("{}", made.secret);
        }
        WebhookCommand::List => {
            let all = api.client.list_webhooks().await?;
            if api.output == Output::Json {
                return api.print_json(&all);
            }
            table(HEADERS, rows(&all));
        }
        WebhookCommand::Remove { id } => {
            api.client.delete_webhook(id).await?;
            eprintln!("webhook {id} removed");
        }
        WebhookCommand::Deliveries { id, state, limit } => {
            let ds = api
                .client
                .webhook_deliveries(
                    id,
                    &DeliveryFilter {
                        state,
                        before: None,
                        limit,
                    },
                )
                .await?;
            if api.output == Output::Json {
                return api.print_json(&ds);
            }
            table(
                &[
                    "EVENT", "KIND", "MACHINE", "STATE", "ATTEMPTS", "STATUS", "ERROR",
                ],
                ds.iter()
                    .map(|d| {
                        vec![
                            d.event_id.to_string(),
                            d.kind.clone(),
                            dash(d.machine_id),
                            d.state.as_str().to_owned(),
                            d.attempts.to_string(),
                            dash(d.last_status),
                            dash(d.last_error.clone()),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}
