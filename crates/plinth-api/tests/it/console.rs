//! The console WebSocket and the recording's endpoint over HTTP: bearer tokens and the UI's
//! session (from this origin only), who may attach, bytes both ways, break, the viewers list.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use plinth_core::Principal;
use plinth_testkit::api::TestApi;
use plinth_testkit::ipmi_sim::{IpmiSim, PASSWORD, USER};
use plinth_testkit::mac;
use plinth_types::Role;
use plinth_types::api::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WITHIN: Duration = Duration::from_secs(15);

async fn enroll(api: &TestApi, bmc: BmcSpec) -> Uuid {
    api.app
        .enroll_machine(
            &Principal::system(),
            MachineCreate {
                hostname: Some("node-1".into()),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: Some(Arch::X86_64),
                nics: vec![NicSpec {
                    mac: mac(1),
                    ipv4: None,
                    pxe: None,
                }],
                bmc: Some(bmc),
            },
        )
        .await
        .unwrap()
        .id
}

/// Opens the console with these headers: the socket, or the refusal's HTTP status.
async fn open(api: &TestApi, id: Uuid, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let url = format!("ws://{}/api/v1/machines/{id}/console", api.addr);
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// Reads until a text message of `kind` for which `ok` holds; returns it. Output seen on the
/// way goes to `out`.
async fn until_text(
    ws: &mut Ws,
    out: &mut Vec<u8>,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no such message in time")
            .unwrap()
            .unwrap();
        match m {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if ok(&v) {
                    return v;
                }
            }
            Message::Binary(b) => out.extend_from_slice(&b),
            _ => {}
        }
    }
}

async fn until_output(ws: &mut Ws, out: &mut Vec<u8>, want: &[u8]) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !out.windows(want.len()).any(|w| w == want) {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => out.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "no {:?}: {other:?}; got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(out)
            ),
        }
    }
}

#[tokio::test]
async fn the_console_over_a_websocket() {
    let api = TestApi::start().await;
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let id = enroll(
        &api,
        BmcSpec {
            protocol: BmcProtocol::Ipmi,
            address: sim.addr().to_string(),
            username: USER.into(),
            password: PASSWORD.into(),
            verify_tls: None,
            plain_http: None,
        },
    )
    .await;
    let operator = api.token("ops", Role::Operator).await;
    let viewer = api.token("viewer", Role::Viewer).await;
    let client = api.token("tenant", Role::Client).await;
    let bearer = |t: &str| format!("Bearer {t}");

    // Refused: no credentials, a viewer, a client for a machine not allocated to it.
    assert_eq!(open(&api, id, &[]).await.err(), Some(401));
    assert_eq!(
        open(&api, id, &[("authorization", &bearer(&viewer))])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        open(&api, id, &[("authorization", &bearer(&client))])
            .await
            .err(),
        Some(404)
    );

    let mut ops = open(&api, id, &[("authorization", &bearer(&operator))])
        .await
        .unwrap();
    let mut out = Vec::new();
    until_text(&mut ops, &mut out, |v| {
        v["type"] == "status" && v["state"] == "open"
    })
    .await;
    // ipmi_sim drops what the machine writes before SOL is active on its side.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        serial.write(b"login: ").await.unwrap();
        let tick = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(tick, ops.next()).await {
            if let Message::Binary(b) = m {
                out.extend_from_slice(&b);
            }
        }
        if out.windows(7).any(|w| w == b"login: ") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing came");
    }

    // The web UI's session: from this origin only.
    api.app
        .set_user(
            &Principal::system(),
            "tech",
            Role::Operator,
            "tech-password-1",
        )
        .await
        .unwrap();
    let login = api
        .app
        .login("tech", "tech-password-1", None)
        .await
        .unwrap();
    let cookie = format!("plinth_session={}", login.secret);
    let here = format!("http://{}", api.addr);
    assert_eq!(
        open(
            &api,
            id,
            &[("cookie", &cookie), ("origin", "http://evil.example")]
        )
        .await
        .err(),
        Some(403),
        "a cross-site WebSocket"
    );
    assert_eq!(
        open(&api, id, &[("cookie", &cookie)]).await.err(),
        Some(403),
        "a cookie without an Origin"
    );
    let mut tech = open(&api, id, &[("cookie", &cookie), ("origin", &here)])
        .await
        .unwrap();
    let mut tech_out = Vec::new();
    until_text(&mut ops, &mut out, |v| {
        v["type"] == "viewers" && v["viewers"] == serde_json::json!(["ops", "ui:tech"])
    })
    .await;
    until_output(&mut tech, &mut tech_out, b"login: ").await;

    // Bytes both ways; a break.
    serial
        .write(b"\r\n[  1.0] Linux version\r\n")
        .await
        .unwrap();
    until_output(&mut tech, &mut tech_out, b"Linux version").await;
    until_output(&mut ops, &mut out, b"Linux version").await;
    ops.send(Message::Binary(b"root\r".to_vec().into()))
        .await
        .unwrap();
    serial.expect(b"root\r", WITHIN).await.unwrap();
    tech.send(Message::Text(r#"{"type":"break"}"#.into()))
        .await
        .unwrap();
    tech.send(Message::Binary(b"s".to_vec().into()))
        .await
        .unwrap();
    serial.expect(b"root\rs", WITHIN).await.unwrap();
    assert_eq!(serial.breaks(), &[5]);
    // A message that is no control message is answered, not obeyed.
    tech.send(Message::Text(r#"{"type":"reboot"}"#.into()))
        .await
        .unwrap();
    let e = until_text(&mut tech, &mut tech_out, |v| v["type"] == "error").await;
    assert_eq!(e["code"], "invalid_console_message");

    tech.close(None).await.unwrap();
    until_text(&mut ops, &mut out, |v| {
        v["type"] == "viewers" && v["viewers"] == serde_json::json!(["ops"])
    })
    .await;
    ops.close(None).await.unwrap();

    // The recording: a viewer reads it, a stranger client does not see the machine.
    let log = |t: String| {
        let url = api.url(&format!("/api/v1/machines/{id}/console/log?max_bytes=100"));
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
        }
    };
    let r = log(viewer.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(log(client.clone()).await.status(), 404);

    // Every attach and detach is an event.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let kinds: Vec<String> = api
            .app
            .events(&Principal::system(), Some(id), Default::default())
            .await
            .unwrap()
            .events
            .into_iter()
            .filter(|e| e.kind.starts_with("console_"))
            .map(|e| format!("{} {}", e.kind, e.actor))
            .collect();
        if kinds.len() == 4 {
            assert_eq!(
                kinds,
                [
                    "console_attached ops",
                    "console_attached ui:tech",
                    "console_detached ui:tech",
                    "console_detached ops"
                ]
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{kinds:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Redfish BMC's console: unavailable with the reason (API and machine page) until its IPMI
/// endpoint is recorded; the endpoint is refused for an IPMI BMC; a viewer's page has no
/// terminal.
#[tokio::test]
async fn a_redfish_bmc_s_console_endpoint() {
    let api = TestApi::start().await;
    let id = enroll(
        &api,
        BmcSpec {
            protocol: BmcProtocol::Redfish,
            address: "10.9.0.7".into(),
            username: "root".into(),
            password: "bmc-secret".into(),
            verify_tls: Some(false),
            plain_http: None,
        },
    )
    .await;
    let c = api.client();
    let s = c.set_console_endpoint(id, None).await.unwrap();
    let why = s.unavailable.unwrap();
    assert!(why.contains("no IPMI console endpoint"), "{why}");
    assert_eq!(s.endpoint, None);

    // The machine page says so.
    api.app
        .set_user(
            &Principal::system(),
            "tech",
            Role::Operator,
            "tech-password-1",
        )
        .await
        .unwrap();
    api.app
        .set_user(
            &Principal::system(),
            "watcher",
            Role::Viewer,
            "watch-password-1",
        )
        .await
        .unwrap();
    let page = |user: &'static str, pw: &'static str| {
        let app = api.app.clone();
        let url = api.url(&format!("/machines/{id}"));
        async move {
            let login = app.login(user, pw, None).await.unwrap();
            reqwest::Client::new()
                .get(url)
                .header("cookie", format!("plinth_session={}", login.secret))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let html = page("tech", "tech-password-1").await;
    assert!(
        html.contains("id=\"console-term\""),
        "an operator gets the terminal"
    );
    assert!(
        html.contains("unavailable: the machine&#x27;s BMC speaks Redfish"),
        "{html}"
    );
    let html = page("watcher", "watch-password-1").await;
    assert!(html.contains("id=\"console\""));
    assert!(!html.contains("console-term"), "a viewer gets no terminal");

    // Recorded: reachable (over IPMI at that endpoint, with the BMC's credentials).
    let s = c
        .set_console_endpoint(
            id,
            Some(&ConsoleEndpoint {
                address: "10.9.0.7:623".into(),
                username: None,
                password: None,
            }),
        )
        .await
        .unwrap();
    assert_eq!(s.unavailable, None);
    assert_eq!(s.endpoint.as_deref(), Some("10.9.0.7:623"));
    let bad = c
        .set_console_endpoint(
            id,
            Some(&ConsoleEndpoint {
                address: "https://10.9.0.7".into(),
                username: None,
                password: None,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(400));
    // The password is never shown; a client does not see where the console is.
    let client = api.token("tenant", Role::Client).await;
    let r = reqwest::Client::new()
        .get(api.url(&format!("/api/v1/machines/{id}/console/status")))
        .bearer_auth(&client)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "not the client's machine");
}
