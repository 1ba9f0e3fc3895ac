//! `Client::console`: the typed handle on a real plinth API's console WebSocket, attached to a
//! real IPMI SOL console (`ipmi_sim`, its serial port held by the test): plinth's messages typed,
//! bytes both ways, a break; refusals as the API's errors.

use std::time::Duration;

use plinth_client::console::{Console, ConsoleMessage};
use plinth_client::{Client, Error};
use plinth_testkit::api::TestApi;
use plinth_testkit::ipmi_sim::{IpmiSim, PASSWORD, USER};
use plinth_types::Role;
use plinth_types::api::*;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(15);

async fn next(c: &mut Console) -> ConsoleMessage {
    tokio::time::timeout(WITHIN, c.next())
        .await
        .expect("a message in time")
        .unwrap()
        .expect("the console still open")
}

#[tokio::test]
async fn the_console_through_the_typed_client() {
    let api = TestApi::start().await;
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let id = api
        .client()
        .enroll_machine(&MachineCreate {
            hostname: Some("node-1".into()),
            rack: None,
            rack_unit: None,
            size_u: None,
            pool: None,
            tags: None,
            arch: Some(Arch::X86_64),
            nics: vec![NicSpec {
                mac: "52:54:00:00:00:01".parse().unwrap(),
                ipv4: None,
                pxe: None,
            }],
            bmc: Some(BmcSpec {
                protocol: BmcProtocol::Ipmi,
                address: sim.addr().to_string(),
                username: USER.into(),
                password: PASSWORD.into(),
                verify_tls: None,
                plain_http: None,
            }),
        })
        .await
        .unwrap()
        .id;
    let ops = Client::new(api.base.as_str(), api.token("ops", Role::Operator).await).unwrap();
    let viewer = ops.with_token(api.token("watcher", Role::Viewer).await);

    // Refusals are the API's errors, with its body.
    let refused = |r: Result<Console, Error>| match r {
        Err(Error::Api(e)) => (e.status, e.code().to_owned()),
        other => panic!("{other:?}"),
    };
    let (status, _) = refused(viewer.console(id).await);
    assert_eq!(status, 403);
    assert_eq!(refused(ops.console(Uuid::new_v4()).await).0, 404);
    let anonymous = Client::builder(api.base.as_str()).build().unwrap();
    assert_eq!(refused(anonymous.console(id).await).0, 401);

    let mut c = ops.console(id).await.unwrap();
    assert!(matches!(next(&mut c).await, ConsoleMessage::Status { .. }));
    assert_eq!(
        next(&mut c).await,
        ConsoleMessage::Viewers(vec!["ops".into()])
    );
    loop {
        if let ConsoleMessage::Status { state, .. } = next(&mut c).await
            && state == "open"
        {
            break;
        }
    }
    // ipmi_sim drops what the machine writes before SOL is active on its side.
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !out.windows(7).any(|w| w == b"login: ") {
        assert!(tokio::time::Instant::now() < deadline, "nothing came");
        serial.write(b"login: ").await.unwrap();
        let tick = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(m) = tokio::time::timeout_at(tick, c.next()).await {
            if let ConsoleMessage::Output(b) = m.unwrap().unwrap() {
                out.extend_from_slice(&b);
            }
        }
    }

    // more than one message's worth: split into messages the API takes
    let long = vec![b'x'; 6000];
    c.send(&long).await.unwrap();
    serial.expect(&long, WITHIN).await.unwrap();
    c.send_break().await.unwrap();
    c.send(b"s").await.unwrap();
    serial.expect(b"xs", WITHIN).await.unwrap();
    assert_eq!(serial.breaks(), &[6000]);
    c.close().await;
}

/// An https:// API: the API behind a TLS listener whose certificate comes from a test CA.
/// The console is a wss:// socket, trusted through the client's extra CA and refused without it.
#[tokio::test]
async fn the_console_over_tls_with_the_clients_ca() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;

    let api = TestApi::start().await;
    let (sim, _serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let id = api
        .client()
        .enroll_machine(&MachineCreate {
            hostname: None,
            rack: None,
            rack_unit: None,
            size_u: None,
            pool: None,
            tags: None,
            arch: Some(Arch::X86_64),
            nics: vec![NicSpec {
                mac: "52:54:00:00:00:02".parse().unwrap(),
                ipv4: None,
                pxe: None,
            }],
            bmc: Some(BmcSpec {
                protocol: BmcProtocol::Ipmi,
                address: sim.addr().to_string(),
                username: USER.into(),
                password: PASSWORD.into(),
                verify_tls: None,
                plain_http: None,
            }),
        })
        .await
        .unwrap()
        .id;
    let ops = api.token("ops", Role::Operator).await;

    let ca = plinth_testkit::sushy::TestCa::new().unwrap();
    let certs = CertificateDer::pem_file_iter(&ca.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&ca.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = api.addr;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut api = tokio::net::TcpStream::connect(upstream).await.unwrap();
                tokio::io::copy_bidirectional(&mut tls, &mut api).await.ok();
            });
        }
    });
    let base = format!("https://127.0.0.1:{port}");

    let untrusting = Client::new(base.as_str(), ops.as_str()).unwrap();
    match untrusting.console(id).await {
        Err(e @ Error::Transport { .. }) => {
            let mut chain = String::new();
            let mut cause: Option<&dyn std::error::Error> = Some(&e);
            while let Some(c) = cause {
                chain += &format!("{c}: ").to_lowercase();
                cause = c.source();
            }
            assert!(
                chain.contains("certificate") || chain.contains("issuer"),
                "{chain}"
            );
        }
        other => panic!("{other:?}"),
    }
    let trusting = Client::builder(base.as_str())
        .token(ops.as_str())
        .ca_file(&ca.ca_file())
        .unwrap()
        .build()
        .unwrap();
    let mut c = trusting.console(id).await.unwrap();
    assert!(matches!(next(&mut c).await, ConsoleMessage::Status { .. }));
    assert_eq!(
        next(&mut c).await,
        ConsoleMessage::Viewers(vec!["ops".into()])
    );
    c.close().await;
}
