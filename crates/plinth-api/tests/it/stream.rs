//! `GET /api/v1/events/stream` over real HTTP against a real PostgreSQL: live delivery,
//! resumption after `Last-Event-ID` with nothing lost or repeated, an event committed out of id
//! order, filters, a client's scope, the per-caller limit.

use std::time::Duration;

use plinth_client::query::StreamFilter;
use plinth_client::sse::Parser;
use plinth_core::stream::StreamSettings;
use plinth_testkit::api::TestApi;
use plinth_testkit::mac;
use plinth_types::Role;
use plinth_types::api::{
    ActionRequest, AllocationRequest, Arch, CpuFacts, DiskFacts, Event, Firmware, InspectionReport,
    MachineCreate, NicFacts, NicSpec, SystemFacts,
};
use uuid::Uuid;

const IDLE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(20);

async fn enroll(api: &plinth_client::Client, n: u32) -> Uuid {
    api.enroll_machine(&MachineCreate {
        hostname: Some(format!("s{n}")),
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

/// An event written straight into the table, as any part of plinth would.
async fn insert(t: &TestApi, machine: Option<Uuid>, kind: &str) -> i64 {
    sqlx::query_scalar(
        "insert into events (actor, machine_id, kind) values ('test', $1, $2) returning id",
    )
    .bind(machine)
    .bind(kind)
    .fetch_one(t.app.pool())
    .await
    .unwrap()
}

/// The next `n` events of a stream, each within `WAIT`.
async fn take(s: &mut plinth_client::EventStream, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream goes on");
        out.push(e);
    }
    out
}

/// Nothing more comes for a while (checked after everything expected has come).
async fn nothing_more(s: &mut plinth_client::EventStream) {
    if let Ok(e) = tokio::time::timeout(Duration::from_secs(3), s.next()).await {
        panic!("unexpected: {e:?}");
    }
}

fn ids(es: &[Event]) -> Vec<i64> {
    es.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn live_events_and_resuming_after_the_last_one_seen() {
    let t = TestApi::start().await;
    let api = t.client();
    let (a, b) = (enroll(&api, 1).await, enroll(&api, 2).await);

    // From now: what happened before is not replayed.
    let mut s = api
        .event_stream(&StreamFilter::default(), IDLE)
        .await
        .unwrap();
    api.machine_action(a, "maintenance_on", &ActionRequest::default(), None)
        .await
        .unwrap();
    api.machine_action(b, "maintenance_on", &ActionRequest::default(), None)
        .await
        .unwrap();
    api.machine_action(a, "maintenance_off", &ActionRequest::default(), None)
        .await
        .unwrap();
    let seen = take(&mut s, 3).await;
    assert_eq!(
        seen.iter().map(|e| e.machine_id).collect::<Vec<_>>(),
        vec![Some(a), Some(b), Some(a)]
    );
    let listed = api
        .list_events(&plinth_client::query::EventFilter {
            after: Some(seen[0].id - 1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&listed.events), ids(&seen), "the stream is the log");
    assert_eq!(
        serde_json::to_value(&listed.events).unwrap(),
        serde_json::to_value(&seen).unwrap(),
        "each event as the list shows it"
    );
    nothing_more(&mut s).await;
    drop(s);

    // More happens while nobody listens; a stream resumed after the first event seen gets
    // everything after it, once.
    let later = [
        insert(&t, Some(b), "note").await,
        insert(&t, None, "note").await,
    ];
    let mut r = api
        .event_stream(
            &StreamFilter {
                after: Some(seen[0].id),
                ..Default::default()
            },
            IDLE,
        )
        .await
        .unwrap();
    let resumed = take(&mut r, 4).await;
    assert_eq!(
        ids(&resumed),
        vec![seen[1].id, seen[2].id, later[0], later[1]]
    );
    nothing_more(&mut r).await;
    assert_eq!(r.last_id(), Some(later[1]));

    // The wire: `Last-Event-ID` (what a browser sends when it reconnects) wins over `after`;
    // each message has the id, the kind as its event name and the event as data.
    let resp = reqwest::Client::new()
        .get(t.url(&format!("/api/v1/events/stream?after={}", seen[0].id)))
        .bearer_auth(&t.admin)
        .header("last-event-id", seen[2].id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let mut resp = resp;
    let mut p = Parser::default();
    let mut msgs = Vec::new();
    while msgs.len() < 2 {
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        msgs.extend(p.push(&chunk).unwrap());
    }
    assert_eq!(msgs[0].id.as_deref(), Some(later[0].to_string().as_str()));
    assert_eq!(msgs[0].event.as_deref(), Some("note"));
    let e: Event = serde_json::from_str(&msgs[0].data).unwrap();
    assert_eq!((e.id, e.machine_id), (later[0], Some(b)));
    assert_eq!(msgs[1].id.as_deref(), Some(later[1].to_string().as_str()));

    // A Last-Event-ID that names no event, or is no id, is refused with a reason.
    for bad in ["999999", "x"] {
        let resp = reqwest::Client::new()
            .get(t.url("/api/v1/events/stream"))
            .bearer_auth(&t.admin)
            .header("last-event-id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_last_event_id");
    }
}

/// Two transactions write events; the one with the lower id commits last. A stream that
/// went by ids would send the higher one and skip the lower for good; this one sends both,
/// and a stream resumed after the first one sent still gets the other.
#[tokio::test]
async fn an_event_committed_after_a_later_one_is_not_skipped() {
    let t = TestApi::start().await;
    let api = t.client();
    let m = enroll(&api, 1).await;
    let mut s = api
        .event_stream(&StreamFilter::default(), IDLE)
        .await
        .unwrap();

    let mut slow = t.app.pool().begin().await.unwrap();
    let low: i64 = sqlx::query_scalar(
        "insert into events (actor, machine_id, kind) values ('slow', $1, 'note') returning id",
    )
    .bind(m)
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    let high = insert(&t, Some(m), "note").await;
    assert!(high > low);
    // The later event is committed, but the stream holds it back while the earlier
    // transaction runs (it could still commit an event below it).
    if let Ok(e) = tokio::time::timeout(Duration::from_secs(3), s.next()).await {
        panic!("sent before the older transaction ended: {e:?}");
    }
    slow.commit().await.unwrap();
    let got = take(&mut s, 2).await;
    assert_eq!(ids(&got), vec![low, high]);

    // The same with the earlier transaction still open when a stream resumes after the
    // later event.
    let mut slow = t.app.pool().begin().await.unwrap();
    let low2: i64 = sqlx::query_scalar(
        "insert into events (actor, machine_id, kind) values ('slow', $1, 'note') returning id",
    )
    .bind(m)
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    let high2 = insert(&t, Some(m), "note").await;
    let mut r = api
        .event_stream(
            &StreamFilter {
                after: Some(high),
                ..Default::default()
            },
            IDLE,
        )
        .await
        .unwrap();
    slow.commit().await.unwrap();
    assert_eq!(ids(&take(&mut r, 2).await), vec![low2, high2]);
    nothing_more(&mut r).await;
    assert_eq!(ids(&take(&mut s, 2).await), vec![low2, high2]);
}

fn report(n: u32) -> InspectionReport {
    InspectionReport {
        cpu: CpuFacts {
            model: "EPYC".into(),
            cores: 8,
            threads: 16,
        },
        memory_mib: 65536,
        disks: vec![DiskFacts {
            name: "nvme0n1".into(),
            size_bytes: 960 << 30,
            model: None,
            serial: None,
            rotational: Some(false),
        }],
        nics: vec![NicFacts {
            name: "eno1".into(),
            mac: mac(n),
            speed_mbps: Some(25000),
            link: None,
        }],
        system: SystemFacts {
            vendor: "Acme".into(),
            product: "X1".into(),
            serial: format!("SN{n:05}"),
            uuid: "4c4c4544-0000-0000-0000-000000000000".into(),
        },
        firmware: Firmware::Uefi,
        arch: Arch::X86_64,
    }
}

#[tokio::test]
async fn filters_and_a_clients_scope() {
    let t = TestApi::start_with(|app| {
        app.with_stream_settings(StreamSettings {
            streams_per_caller: 3,
            ..Default::default()
        })
    })
    .await;
    let api = t.client();
    let other = enroll(&api, 1).await;
    let mine = enroll(&api, 2).await;
    api.machine_action(mine, "inspect", &ActionRequest::default(), None)
        .await
        .unwrap();
    api.report_inspection(mine, &report(2)).await.unwrap();
    let client = api.with_token(&t.token("tenant", Role::Client).await);
    let alloc = client
        .allocate(&AllocationRequest {
            count: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alloc.machines.len(), 1);
    assert_eq!(alloc.machines[0].id, mine);

    let mut everything = client
        .event_stream(&StreamFilter::default(), IDLE)
        .await
        .unwrap();
    let mut boots = client
        .event_stream(
            &StreamFilter {
                kinds: vec!["boot".into()],
                ..Default::default()
            },
            IDLE,
        )
        .await
        .unwrap();
    let mut one = api
        .event_stream(
            &StreamFilter {
                machine: Some(other),
                kinds: vec!["note".into(), "boot".into()],
                after: None,
            },
            IDLE,
        )
        .await
        .unwrap();

    let e1 = insert(&t, Some(other), "note").await;
    let e2 = insert(&t, Some(mine), "note").await;
    let e3 = insert(&t, None, "note").await;
    let e4 = insert(&t, Some(mine), "boot").await;
    let e5 = insert(&t, Some(other), "boot").await;
    let e6 = insert(&t, Some(other), "power_changed").await;
    let _ = (e3, e6);

    assert_eq!(ids(&take(&mut everything, 2).await), vec![e2, e4]);
    nothing_more(&mut everything).await;
    assert_eq!(ids(&take(&mut boots, 1).await), vec![e4]);
    nothing_more(&mut boots).await;
    assert_eq!(ids(&take(&mut one, 2).await), vec![e1, e5]);
    nothing_more(&mut one).await;

    // Another machine is not the client's to watch; a viewer may; kinds are checked.
    let err = client
        .event_stream(
            &StreamFilter {
                machine: Some(other),
                ..Default::default()
            },
            IDLE,
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), Some(404), "{err}");
    let viewer = api.with_token(&t.token("vera", Role::Viewer).await);
    viewer
        .event_stream(&StreamFilter::default(), IDLE)
        .await
        .unwrap();
    let err = api
        .event_stream(
            &StreamFilter {
                kinds: vec!["Bad-Kind".into()],
                ..Default::default()
            },
            IDLE,
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), Some(400), "{err}");

    // At most three streams per caller: the client holds two, a third is fine, a fourth is
    // refused, and closing one frees its place.
    let third = client
        .event_stream(&StreamFilter::default(), IDLE)
        .await
        .unwrap();
    let err = client
        .event_stream(&StreamFilter::default(), IDLE)
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), Some(429), "{err}");
    drop(third);
    // The server notices the closed connection when it next writes to it: an event (or a
    // keep-alive comment).
    let mut reopened = None;
    for _ in 0..50 {
        insert(&t, Some(mine), "note").await;
        if let Ok(s) = client.event_stream(&StreamFilter::default(), IDLE).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(reopened.is_some(), "a closed stream frees its place");
}
