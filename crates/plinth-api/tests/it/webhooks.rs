//! Webhooks end to end: registered through the API, delivered by two webhook workers (two
//! instances on one database) to a receiver on loopback that fails, then stalls past the
//! timeout, then recovers. Every event arrives, in order per machine, signed with the secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use plinth_core::workers::{WebhookSettings, WebhookWorker};
use plinth_testkit::api::TestApi;
use plinth_testkit::mac;
use plinth_types::Role;
use plinth_types::api::{Event, MachineCreate, NicSpec};
use plinth_types::feed::{DeliveryState, WebhookCreate};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "a-receivers-secret-0123";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Fail,
    Stall,
    Ok,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    event: Event,
    /// What the receiver did with it.
    mode: Mode,
    signed: bool,
}

#[derive(Clone)]
struct Receiver {
    mode: Arc<Mutex<Mode>>,
    got: Arc<Mutex<Vec<Got>>>,
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    // The receiver checks the signature as docs/api.md tells it to.
    let (ts, sig) = (h("x-plinth-timestamp"), h("x-plinth-signature"));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&body);
    let signed = sig
        .strip_prefix("sha256=")
        .and_then(|s| hex::decode(s).ok())
        .is_some_and(|s| mac.verify_slice(&s).is_ok());
    let fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    let event: Event = serde_json::from_slice(&body).unwrap();
    assert_eq!(h("x-plinth-event-id"), event.id.to_string());
    assert_eq!(h("content-type"), "application/json");
    let mode = *r.mode.lock().unwrap();
    r.got.lock().unwrap().push(Got {
        event,
        mode,
        signed: signed && fresh,
    });
    match mode {
        Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Stall => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK
        }
        Mode::Ok => StatusCode::NO_CONTENT,
    }
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver {
        mode: Arc::new(Mutex::new(Mode::Fail)),
        got: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (r, url)
}

async fn enroll(api: &plinth_client::Client, n: u32) -> Uuid {
    api.enroll_machine(&MachineCreate {
        hostname: Some(format!("w{n}")),
        rack: None,
        rack_unit: None,
        size_u: None,
        pool: None,
        tags: None,
        arch: None,
        nics: vec![NicSpec {
            mac: mac(n),
            ipv4: None,
            pxe: None,
        }],
        bmc: None,
    })
    .await
    .unwrap()
    .id
}

fn fast() -> WebhookSettings {
    WebhookSettings {
        timeout: Duration::from_secs(1),
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        poll: Duration::from_millis(200),
        ..Default::default()
    }
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn delivered_in_order_per_machine_through_failures_stalls_and_two_workers() {
    let t = TestApi::start().await;
    let api = t.client();
    let (rx, url) = receiver().await;

    // Only admins manage webhooks; URLs and secrets are checked; the secret is shown once.
    let operator = api.with_token(&t.token("otto", Role::Operator).await);
    let req = WebhookCreate {
        url: url.clone(),
        secret: Some(SECRET.into()),
        kinds: Some(vec!["note".into(), "maintenance".into()]),
    };
    assert_eq!(
        operator.create_webhook(&req).await.unwrap_err().status(),
        Some(403)
    );
    for (url, secret, code) in [
        ("ftp://127.0.0.1/hook", None, "invalid_url"),
        ("http://user:pw@127.0.0.1/hook", None, "invalid_url"),
        ("http://127.0.0.1/hook", Some("short"), "invalid_secret"),
    ] {
        let e = api
            .create_webhook(&WebhookCreate {
                url: url.into(),
                secret: secret.map(Into::into),
                kinds: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(code), "{url}");
    }
    let made = api.create_webhook(&req).await.unwrap();
    assert_eq!(made.secret, SECRET);
    let generated = api
        .create_webhook(&WebhookCreate {
            url: "https://hooks.example.com/x".into(),
            secret: None,
            kinds: None,
        })
        .await
        .unwrap();
    assert!(generated.secret.len() >= 40, "a generated secret");
    api.delete_webhook(generated.webhook.id).await.unwrap();
    let listed = serde_json::to_string(&api.list_webhooks().await.unwrap()).unwrap();
    assert!(!listed.contains(SECRET), "the secret is never shown again");
    let stored: Vec<u8> = sqlx::query_scalar("select secret_ciphertext from webhooks")
        .fetch_one(t.app.pool())
        .await
        .unwrap();
    assert!(
        !stored.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the secret is encrypted at rest"
    );

    // Three machines, twelve events each, written by several writers at once; and events of
    // a kind the webhook does not want.
    let machines = [
        enroll(&api, 1).await,
        enroll(&api, 2).await,
        enroll(&api, 3).await,
    ];
    let mut expected: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for round in 0..12 {
        let writes = machines.iter().map(|m| {
            let pool = t.app.pool().clone();
            let m = *m;
            async move {
                let id: i64 = sqlx::query_scalar(
                    "insert into events (actor, machine_id, kind, details)
                     values ('test', $1, 'note', jsonb_build_object('round', $2::int)) returning id",
                )
                .bind(m)
                .bind(round)
                .fetch_one(&pool)
                .await
                .unwrap();
                sqlx::query("insert into events (actor, machine_id, kind) values ('test', $1, 'boot')")
                    .bind(m)
                    .execute(&pool)
                    .await
                    .unwrap();
                (m, id)
            }
        });
        for (m, id) in futures::future::join_all(writes).await {
            expected.entry(m).or_default().push(id);
        }
    }

    // Two workers, as two plinth instances would run them.
    let cancel = CancellationToken::new();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let w = WebhookWorker::new(t.app.clone(), fast()).unwrap();
            tokio::spawn(w.run(cancel.clone()))
        })
        .collect();

    let got = rx.got.clone();
    wait_until("failed attempts", async || got.lock().unwrap().len() >= 6).await;
    *rx.mode.lock().unwrap() = Mode::Stall;
    wait_until("stalled attempts", async || {
        got.lock()
            .unwrap()
            .iter()
            .filter(|g| g.mode == Mode::Stall)
            .count()
            >= 3
    })
    .await;
    *rx.mode.lock().unwrap() = Mode::Ok;
    let id = made.webhook.id;
    wait_until("every delivery", async || {
        api.list_webhooks().await.unwrap()[0].pending == 0
    })
    .await;
    cancel.cancel();
    for w in workers {
        w.await.unwrap().unwrap();
    }

    let got = rx.got.lock().unwrap().clone();
    assert!(
        got.iter().all(|g| g.signed),
        "every request signed with the secret"
    );
    assert!(
        got.iter().all(|g| g.event.kind == "note"),
        "only the kinds asked for"
    );
    for m in machines {
        let answered: Vec<i64> = got
            .iter()
            .filter(|g| g.mode == Mode::Ok && g.event.machine_id == Some(m))
            .map(|g| g.event.id)
            .collect();
        // Every event of the machine was answered, once, in order; what failed or stalled
        // was its head, sent again before anything after it.
        assert_eq!(answered, expected[&m], "machine {m}");
        let tried: Vec<i64> = got
            .iter()
            .filter(|g| g.event.machine_id == Some(m))
            .map(|g| g.event.id)
            .collect();
        assert!(
            tried.is_sorted(),
            "attempts of machine {m} never go back: {tried:?}"
        );
    }
    let ds = api
        .webhook_deliveries(
            id,
            &plinth_client::query::DeliveryFilter {
                limit: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ds.len(), 36);
    assert!(ds.iter().all(|d| d.state == DeliveryState::Delivered));
    assert!(
        ds.iter().any(|d| d.attempts > 1),
        "some were tried more than once"
    );
}

#[tokio::test]
async fn a_delivery_failing_for_too_long_is_dead_and_the_next_goes() {
    let t = TestApi::start().await;
    let api = t.client();
    let (rx, url) = receiver().await;
    let made = api
        .create_webhook(&WebhookCreate {
            url,
            secret: Some(SECRET.into()),
            kinds: Some(vec!["note".into()]),
        })
        .await
        .unwrap();
    let m = enroll(&api, 1).await;
    let first: i64 = sqlx::query_scalar(
        "insert into events (actor, machine_id, kind) values ('test', $1, 'note') returning id",
    )
    .bind(m)
    .fetch_one(t.app.pool())
    .await
    .unwrap();
    let second: i64 = sqlx::query_scalar(
        "insert into events (actor, machine_id, kind) values ('test', $1, 'note') returning id",
    )
    .bind(m)
    .fetch_one(t.app.pool())
    .await
    .unwrap();
    let w = WebhookWorker::new(
        t.app.clone(),
        WebhookSettings {
            dead_after: Duration::from_secs(1),
            ..fast()
        },
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(w.run(cancel.clone()));
    // The receiver fails throughout: the first is given up after a second of failures, then
    // the second is tried (the queue moves on), and given up too.
    let dead = async || {
        api.webhook_deliveries(
            made.webhook.id,
            &plinth_client::query::DeliveryFilter {
                state: Some(DeliveryState::Dead),
                ..Default::default()
            },
        )
        .await
        .unwrap()
    };
    wait_until("both dead", async || dead().await.len() == 2).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let ds = dead().await;
    assert_eq!(
        ds.iter().map(|d| d.event_id).collect::<Vec<_>>(),
        vec![second, first]
    );
    assert!(
        ds.iter()
            .all(|d| d.last_status == Some(500) && d.attempts >= 2)
    );
    assert!(ds[1].last_error.as_deref().unwrap().contains("500"));
    let got = rx.got.lock().unwrap().clone();
    let last_first = got.iter().rposition(|g| g.event.id == first).unwrap();
    let first_second = got.iter().position(|g| g.event.id == second).unwrap();
    assert!(last_first < first_second, "the second waited for the first");
    assert_eq!(api.list_webhooks().await.unwrap()[0].dead, 2);
}
