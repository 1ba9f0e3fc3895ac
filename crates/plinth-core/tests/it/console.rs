//! Serial consoles against OpenIPMI's `ipmi_sim` with its serial port held by the test: one
//! SOL session shared by every viewer, bytes both ways, break, attach/detach events, who may
//! attach; the recording, bounded, quoted by a timed-out step's reason, cleared on release.

use std::sync::Arc;
use std::time::Duration;

use plinth_core::console::{Attachment, ConsoleSettings, Status, Update};
use plinth_core::lifecycle::{Action, StuckTimeouts};
use plinth_core::{App, Principal};
use plinth_testkit::ipmi_sim::{IpmiSim, PASSWORD, SerialPort, USER};
use plinth_testkit::{TestDb, mac};
use plinth_types::api::*;
use plinth_types::{ErrorKind, MachineState, Role, Verb};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(15);

fn person(name: &str, role: Role) -> Principal {
    Principal {
        token_id: Some(Uuid::new_v4()),
        name: name.into(),
        role,
    }
}

fn admin() -> Principal {
    Principal {
        token_id: None,
        name: "test-admin".into(),
        role: Role::Admin,
    }
}

async fn enroll(app: &App, n: u32, bmc: Option<BmcSpec>) -> Uuid {
    app.enroll_machine(
        &admin(),
        MachineCreate {
            hostname: Some(format!("node-{n}")),
            rack: None,
            rack_unit: None,
            size_u: None,
            pool: None,
            tags: None,
            arch: Some(Arch::X86_64),
            nics: vec![NicSpec {
                mac: mac(n),
                ipv4: None,
                pxe: None,
            }],
            bmc,
        },
    )
    .await
    .unwrap()
    .id
}

fn ipmi_bmc(sim: &IpmiSim) -> BmcSpec {
    BmcSpec {
        protocol: BmcProtocol::Ipmi,
        address: sim.addr().to_string(),
        username: USER.into(),
        password: PASSWORD.into(),
        verify_tls: None,
        plain_http: None,
    }
}

async fn act(app: &App, id: Uuid, verb: Verb) {
    app.act(
        &admin(),
        id,
        Action {
            verb,
            expected_version: None,
            reason: None,
        },
    )
    .await
    .unwrap();
}

/// Reads the attachment until `done` holds for the output seen (backlog included).
async fn until_output(a: &mut Attachment, seen: &mut Vec<u8>, want: &[u8]) {
    if seen.is_empty() {
        seen.extend_from_slice(&a.backlog);
    }
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !seen.windows(want.len()).any(|w| w == want) {
        match tokio::time::timeout_at(deadline, a.next()).await {
            Ok(Update::Output(b)) => seen.extend_from_slice(&b),
            Ok(_) => {}
            Err(_) => panic!(
                "no {:?} within {WITHIN:?}: {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(seen)
            ),
        }
    }
}

async fn until_status(a: &mut Attachment, want: impl Fn(&Status) -> bool) -> Status {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let s = a.status();
        if want(&s) {
            return s;
        }
        if tokio::time::timeout_at(deadline, a.next()).await.is_err() {
            panic!("status still {s:?} after {WITHIN:?}");
        }
    }
}

/// ipmi_sim drops what its serial port sends while no SOL session is active: the machine
/// writes a line every half second until the viewer sees it.
async fn handshake(a: &mut Attachment, serial: &mut SerialPort, line: &[u8]) -> Vec<u8> {
    let mut seen = a.backlog.clone();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        serial.write(line).await.unwrap();
        let tick = tokio::time::Instant::now() + Duration::from_millis(500);
        while tokio::time::Instant::now() < tick {
            if let Ok(Update::Output(b)) = tokio::time::timeout_at(tick, a.next()).await {
                seen.extend_from_slice(&b);
            }
        }
        if seen.windows(line.len()).any(|w| w == line) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line:?} never seen"
        );
    }
}

/// The machine's events, oldest first: (kind, actor).
async fn event_kinds(app: &App, id: Uuid) -> Vec<(String, String)> {
    app.events(&admin(), Some(id), Default::default())
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| (e.kind, e.actor))
        .collect()
}

#[tokio::test]
async fn viewers_share_one_sol_session() {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let id = enroll(&app, 1, Some(ipmi_bmc(&sim))).await;

    // Who may attach: not a viewer, not a client to a machine not allocated to it.
    let e = app
        .attach_console(&person("v", Role::Viewer), id)
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    let e = app
        .attach_console(&person("tenant", Role::Client), id)
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound, "not theirs: not even seen");
    let e = app
        .console_log(&person("tenant", Role::Client), id, 1024)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        app.console_log(&person("v", Role::Viewer), id, 1024)
            .await
            .unwrap()
            .is_empty(),
        "a viewer reads the (empty) recording"
    );

    let mut alice = app
        .attach_console(&person("alice", Role::Operator), id)
        .await
        .unwrap();
    until_status(&mut alice, |s| *s == Status::Open).await;
    handshake(&mut alice, &mut serial, b"login: ").await;
    let mut bob = app
        .attach_console(&person("bob", Role::Admin), id)
        .await
        .unwrap();
    assert_eq!(bob.status(), Status::Open, "the session already open");
    assert!(
        bob.backlog.windows(7).any(|w| w == b"login: "),
        "a late viewer gets what was printed"
    );
    assert_eq!(alice.viewers(), ["alice", "bob"]);
    // One session for both: the BMC refuses another one meanwhile.
    let refused = sim.ipmitool(&["sol", "activate"]).unwrap_err().to_string();
    assert!(refused.contains("SOL payload already active"), "{refused}");

    // Machine to viewers: both see it.
    serial
        .write(b"[    1.0] Linux version 6.1\r\n")
        .await
        .unwrap();
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    until_output(&mut alice, &mut sa, b"Linux version 6.1").await;
    until_output(&mut bob, &mut sb, b"Linux version 6.1").await;

    // Viewers to machine: both reach it, in order.
    alice.send(b"root\r").await.unwrap();
    serial.expect(b"root\r", WITHIN).await.unwrap();
    bob.send(b"ls /\r").await.unwrap();
    serial.expect(b"root\rls /\r", WITHIN).await.unwrap();
    // A break, then characters.
    alice.send_break().await.unwrap();
    let at = serial.received().len();
    alice.send(b"s").await.unwrap();
    serial.expect(b"ls /\rs", WITHIN).await.unwrap();
    assert_eq!(serial.breaks(), &[at]);

    // Input is bounded per message and per second.
    let e = alice.send(&[b'x'; 5000]).await.unwrap_err();
    assert_eq!(e.code, "console_input_too_large");
    let mut refused = None;
    for _ in 0..20 {
        if let Err(e) = alice.send(&[b'y'; 4096]).await {
            refused = Some(e);
            break;
        }
    }
    assert_eq!(refused.unwrap().code, "console_input_too_fast");

    // Bob leaves: Alice sees it.
    bob.detach().await.unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while alice.viewers() != ["alice"] {
        tokio::time::timeout_at(deadline, alice.next())
            .await
            .unwrap();
    }
    drop(alice); // detaches in the background
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !app.consoles().open().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the console stays open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Closed: the BMC takes a new session (ipmitool's, which we end at once).
    let kinds = event_kinds(&app, id).await;
    let console: Vec<_> = kinds
        .iter()
        .filter(|(k, _)| k.starts_with("console_"))
        .map(|(k, a)| format!("{k} {a}"))
        .collect();
    assert_eq!(
        console,
        [
            "console_attached alice",
            "console_attached bob",
            "console_detached bob",
            "console_detached alice"
        ]
    );
}

#[tokio::test]
async fn a_console_plinth_cannot_reach_says_why() {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let none = enroll(&app, 1, None).await;
    let redfish = enroll(
        &app,
        2,
        Some(BmcSpec {
            protocol: BmcProtocol::Redfish,
            address: "10.9.0.2".into(),
            username: "root".into(),
            password: "pw".into(),
            verify_tls: Some(false),
            plain_http: None,
        }),
    )
    .await;
    assert_eq!(
        app.console_unavailable(&admin(), none).await.unwrap(),
        Some("the machine has no BMC".into())
    );
    let why = app
        .console_unavailable(&admin(), redfish)
        .await
        .unwrap()
        .unwrap();
    assert!(why.contains("no IPMI console endpoint"), "{why}");
    let mut a = app.attach_console(&admin(), redfish).await.unwrap();
    let s = until_status(&mut a, |s| matches!(s, Status::Unavailable(_))).await;
    assert_eq!(s, Status::Unavailable(why));
}

#[tokio::test]
async fn a_busy_machine_s_console_is_recorded_bounded_and_quoted_when_it_times_out() {
    let db = TestDb::new().await.unwrap();
    let settings = ConsoleSettings {
        max_log_bytes: 4096,
        flush: Duration::from_millis(100),
        ..Default::default()
    };
    let app = db
        .app()
        .with_consoles(Arc::new(plinth_bmc::Drivers::default()), settings);
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let id = enroll(&app, 1, Some(ipmi_bmc(&sim))).await;
    assert_eq!(
        app.record_consoles().await.unwrap(),
        0,
        "not busy: not recorded"
    );
    act(&app, id, Verb::Inspect).await;
    assert_eq!(app.record_consoles().await.unwrap(), 1);
    assert_eq!(
        app.consoles().open().len(),
        1,
        "opened with nobody watching"
    );

    // The machine prints; the recording catches up (after the SOL session is active).
    let log = |n| {
        let app = app.clone();
        async move { app.console_log(&admin(), id, n).await.unwrap() }
    };
    let deadline = tokio::time::Instant::now() + WITHIN;
    while log(1 << 20).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing recorded");
        serial.write(b"early boot\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // 20 KiB more: only the last 4 KiB stay.
    for i in 0..400 {
        serial
            .write(format!("[  {i:3}.000000] a line of the kernel\r\n").as_bytes())
            .await
            .unwrap();
    }
    serial
        .write(b"\x1b[1;31m[  400.000000] Kernel panic - not syncing: VFS: Unable to mount root fs\x1b[0m\r\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let l = log(1 << 20).await;
        assert!(l.len() <= 4096, "{} bytes kept", l.len());
        if l.windows(12).any(|w| w == b"Kernel panic") {
            assert!(
                !l.windows(10).any(|w| w == b"early boot"),
                "the oldest went"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log(100).await.len() == 100, "the API's bound");

    // The inspection times out: the reason quotes the console's last lines, cleaned.
    sqlx::query(
        "update machines set state_changed_at = now() - interval '11 minutes' where id = $1",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .unwrap();
    let t = StuckTimeouts {
        inspect: Duration::from_secs(600),
        clean: Duration::from_secs(600),
        deploy: Duration::from_secs(600),
    };
    assert_eq!(app.fail_stuck(&t).await.unwrap(), 1);
    let m = app.get_machine(&admin(), id).await.unwrap();
    assert_eq!(m.state, MachineState::InspectFailed);
    let reason = m.state_reason.unwrap();
    assert!(
        reason.contains("no inspection report within 600 s"),
        "{reason}"
    );
    assert!(
        reason.ends_with(
            "; console: \"[  398.000000] a line of the kernel\" / \"[  399.000000] a line of the kernel\" / \"[  400.000000] Kernel panic - not syncing: VFS: Unable to mount root fs\""
        ),
        "{reason}"
    );

    // Not busy any more: the console closes; the recording stays with the machine.
    assert_eq!(app.record_consoles().await.unwrap(), 0);
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !app.consoles().open().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!log(1 << 20).await.is_empty());
}

/// A viewer's session was open before the machine got busy: what it printed before the
/// recording pass came by (the pass runs every few seconds, behind the reconciler's other
/// passes) is in the recording too, so that a busy machine's recording does not begin
/// seconds late (the full test command once missed a line typed into iPXE that way).
#[tokio::test]
async fn what_the_console_printed_before_the_recording_began_is_recorded() {
    let db = TestDb::new().await.unwrap();
    let settings = ConsoleSettings {
        flush: Duration::from_millis(100),
        ..Default::default()
    };
    let app = db
        .app()
        .with_consoles(Arc::new(plinth_bmc::Drivers::default()), settings);
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let id = enroll(&app, 1, Some(ipmi_bmc(&sim))).await;
    let mut a = app.attach_console(&admin(), id).await.unwrap();
    handshake(&mut a, &mut serial, b"printed-before-the-recording\r\n").await;
    act(&app, id, Verb::Inspect).await;
    assert_eq!(app.record_consoles().await.unwrap(), 1);
    // Nothing more is printed: the recording still gets what the session had shown.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let l = app.console_log(&admin(), id, 1 << 20).await.unwrap();
        if l.windows(28).any(|w| w == b"printed-before-the-recording") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not recorded: {:?}",
            String::from_utf8_lossy(&l)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Later output follows it.
    handshake(&mut a, &mut serial, b"printed-after\r\n").await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let l = app.console_log(&admin(), id, 1 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&l).into_owned();
        if text.contains("printed-after") {
            let first = text.find("printed-before-the-recording").unwrap();
            assert!(first < text.find("printed-after").unwrap(), "{text:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(a);
}

#[tokio::test]
async fn release_clears_the_recording() {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let id = enroll(&app, 1, None).await;
    act(&app, id, Verb::Inspect).await;
    let report: InspectionReport = serde_json::from_value(serde_json::json!({
        "cpu": { "model": "x", "cores": 4, "threads": 8 },
        "memory_mib": 8192,
        "disks": [{ "name": "sda", "size_bytes": 1u64 << 37, "model": null, "serial": "S1", "rotational": false }],
        "nics": [{ "name": "eth0", "mac": mac(1).to_string(), "speed_mbps": 1000, "link": true }],
        "system": { "vendor": "v", "product": "p", "serial": "s", "uuid": "u" },
        "firmware": "bios",
        "arch": "x86_64"
    }))
    .unwrap();
    app.submit_inspection(&admin(), id, report).await.unwrap();
    let alloc = app
        .allocate(
            &admin(),
            AllocationRequest {
                count: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    {
        let mut conn = app.pool().acquire().await.unwrap();
        plinth_db::console::append(&mut conn, id, b"tenant's boot\r\n", 4096)
            .await
            .unwrap();
    }
    assert_eq!(
        app.console_log(&admin(), id, 4096).await.unwrap(),
        b"tenant's boot\r\n"
    );
    app.release_allocation(&admin(), alloc.id).await.unwrap();
    let m = app.get_machine(&admin(), id).await.unwrap();
    assert_eq!(m.state, MachineState::Cleaning);
    assert!(
        app.console_log(&admin(), id, 4096)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A viewer who arrives after the session closed (the machine page reloads itself when the
/// machine changes state, which can end the recording and the session with it) sees what the
/// machine printed last, once, and then what it prints now.
#[tokio::test]
async fn a_viewer_arriving_after_the_session_closed_sees_the_recordings_tail_first() {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let id = enroll(&app, 1, Some(ipmi_bmc(&sim))).await;
    {
        let mut conn = app.pool().acquire().await.unwrap();
        plinth_db::console::append(
            &mut conn,
            id,
            b"plinth-agent: reporting to plinth\r\n",
            4096,
        )
        .await
        .unwrap();
    }
    assert!(app.consoles().open().is_empty(), "no session yet");
    let mut alice = app
        .attach_console(&person("alice", Role::Operator), id)
        .await
        .unwrap();
    let mut seen = Vec::new();
    until_output(&mut alice, &mut seen, b"reporting to plinth").await;
    until_status(&mut alice, |s| *s == Status::Open).await;
    let live = handshake(&mut alice, &mut serial, b"login: ").await;
    seen.extend_from_slice(&live);
    let count =
        |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).filter(|w| *w == needle).count();
    assert_eq!(
        count(&seen, b"reporting to plinth"),
        1,
        "the recording once: {:?}",
        String::from_utf8_lossy(&seen)
    );
    let at = |needle: &[u8]| seen.windows(needle.len()).position(|w| w == needle);
    assert!(
        at(b"reporting to plinth") < at(b"login: "),
        "the recording comes first: {:?}",
        String::from_utf8_lossy(&seen)
    );
    // A second viewer while the session is open: the backlog holds both, the recording once.
    let bob = app
        .attach_console(&person("bob", Role::Admin), id)
        .await
        .unwrap();
    assert_eq!(count(&bob.backlog, b"reporting to plinth"), 1);
    assert!(count(&bob.backlog, b"login: ") >= 1);
    bob.detach().await.unwrap();
    alice.detach().await.unwrap();
}
