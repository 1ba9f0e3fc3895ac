//! The lifecycle against a real PostgreSQL: every (state, verb) pair goes through the same
//! code path the API uses, and the SQL guard must agree with the table in plinth-types
//! (whose own test checks it against a hand-written list).

use plinth_core::lifecycle::Action;
use plinth_core::{App, Principal};
use plinth_testkit::{TestDb, mac};
use plinth_types::api::*;
use plinth_types::lifecycle::next_state;
use plinth_types::{ErrorKind, MachineState, Verb};
use uuid::Uuid;

async fn app() -> (App, TestDb) {
    let db = TestDb::new().await.unwrap();
    (db.app(), db)
}

fn admin() -> Principal {
    Principal {
        token_id: None,
        name: "test-admin".into(),
        role: plinth_types::Role::Admin,
    }
}

fn enroll_req(n: u32) -> MachineCreate {
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
        bmc: None,
    }
}

fn report(m: plinth_types::MacAddr) -> InspectionReport {
    InspectionReport {
        cpu: CpuFacts {
            model: "Xeon".into(),
            cores: 8,
            threads: 16,
        },
        memory_mib: 65536,
        disks: vec![DiskFacts {
            name: "sda".into(),
            size_bytes: 480 << 30,
            model: None,
            serial: None,
            rotational: Some(false),
        }],
        nics: vec![NicFacts {
            name: "eno1".into(),
            mac: m,
            speed_mbps: Some(10000),
            link: None,
        }],
        system: SystemFacts {
            vendor: "Acme".into(),
            product: "R1".into(),
            serial: "SN1".into(),
            uuid: Uuid::new_v4().to_string(),
        },
        firmware: Firmware::Uefi,
        arch: Arch::X86_64,
    }
}

/// Puts machine `id` straight into `state`, with an allocation when the state needs one.
async fn force(db: &TestDb, id: Uuid, state: MachineState) {
    let mut conn = db.pool.acquire().await.unwrap();
    let alloc = if state.is_allocated() {
        Some(
            plinth_db::allocations::insert(&mut conn, "test", None, &serde_json::json!({}))
                .await
                .unwrap(),
        )
    } else {
        None
    };
    plinth_db::machines::force_state(&mut conn, id, state, alloc)
        .await
        .unwrap();
}

async fn run(
    app: &App,
    id: Uuid,
    verb: Verb,
    m: plinth_types::MacAddr,
) -> Result<MachineState, plinth_types::Error> {
    let who = admin();
    match verb {
        Verb::InspectComplete => app
            .submit_inspection(&who, id, report(m))
            .await
            .map(|x| x.state),
        Verb::Allocate => app
            .allocate(&who, AllocationRequest::default())
            .await
            .map(|a| {
                assert_eq!(a.machines.len(), 1);
                assert_eq!(a.machines[0].id, id);
                a.machines[0].state
            }),
        // The agent's outcomes, forced by an admin (the agent's own reports are tested with
        // the agent).
        v if v.is_agent_outcome() => app
            .force_outcome(
                &who,
                id,
                Action {
                    verb: v,
                    expected_version: None,
                    reason: Some("test".into()),
                },
            )
            .await
            .map(|x| x.state),
        v => app
            .act(
                &who,
                id,
                Action {
                    verb: v,
                    expected_version: None,
                    reason: Some("test".into()),
                },
            )
            .await
            .map(|x| x.state),
    }
}

/// The agent outcomes are not ordinary actions: refused as such, forced only by an admin with
/// a reason, and the event says it was forced.
#[tokio::test]
async fn agent_outcomes_are_forced_by_admins_only() {
    let (app, _db) = app().await;
    let m = app.enroll_machine(&admin(), enroll_req(901)).await.unwrap();
    let action = |verb, reason: Option<&str>| Action {
        verb,
        expected_version: None,
        reason: reason.map(Into::into),
    };
    app.act(&admin(), m.id, action(Verb::Decommission, None))
        .await
        .unwrap();
    let e = app
        .act(
            &admin(),
            m.id,
            action(Verb::DecommissionComplete, Some("done")),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "agent_outcome", "{e:?}");
    let operator = app
        .create_token(&admin(), "op", plinth_types::Role::Operator)
        .await
        .unwrap()
        .secret;
    let operator = app.authenticate(&operator).await.unwrap();
    let e = app
        .force_outcome(
            &operator,
            m.id,
            action(Verb::DecommissionComplete, Some("done")),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, plinth_types::ErrorKind::Forbidden, "{e:?}");
    let e = app
        .force_outcome(&admin(), m.id, action(Verb::DecommissionComplete, None))
        .await
        .unwrap_err();
    assert_eq!(e.code, "reason_required", "{e:?}");
    let e = app
        .force_outcome(&admin(), m.id, action(Verb::Inspect, Some("x")))
        .await
        .unwrap_err();
    assert_eq!(e.code, "not_forceable", "{e:?}");
    let done = app
        .force_outcome(
            &admin(),
            m.id,
            action(Verb::DecommissionComplete, Some("disks shredded on site")),
        )
        .await
        .unwrap();
    assert_eq!(done.state, MachineState::Decommissioned);
    let ev = app
        .events(&admin(), Some(m.id), Default::default())
        .await
        .unwrap();
    let forced = ev
        .events
        .iter()
        .find(|e| e.kind == "decommission_complete")
        .unwrap();
    assert_eq!(forced.details["forced"], true);
    assert_eq!(forced.details["reason"], "disks shredded on site");
}

#[tokio::test]
async fn every_state_and_verb_against_the_database() {
    let (app, db) = app().await;
    let mut n = 0;
    for state in MachineState::ALL {
        for verb in Verb::ALL {
            if matches!(verb, Verb::Enroll | Verb::Discover) {
                continue; // they create machines; covered by the enroll test
            }
            n += 1;
            let m = app.enroll_machine(&admin(), enroll_req(n)).await.unwrap();
            force(&db, m.id, state).await;
            let before = app.get_machine(&admin(), m.id).await.unwrap();
            let got = run(&app, m.id, verb, mac(n)).await;
            let after = app.get_machine(&admin(), m.id).await.unwrap();
            match (next_state(state, verb), got) {
                // The one exception to the table: a discovered machine's inspection report is
                // stored without a transition (the machine waits to be adopted).
                (None, Ok(st))
                    if state == MachineState::Discovered && verb == Verb::InspectComplete =>
                {
                    assert_eq!(st, MachineState::Discovered);
                    assert_eq!(after.state_version, before.state_version);
                    assert_eq!(after.facts["memory_mib"], 65536);
                    let events = app
                        .events(&admin(), Some(m.id), Default::default())
                        .await
                        .unwrap()
                        .events;
                    assert_eq!(events.last().unwrap().kind, "discovered_inspected");
                }
                (Some(want), Ok(st)) => {
                    assert_eq!(st, want, "{state} --{verb}-->");
                    assert_eq!(after.state, want);
                    assert_eq!(
                        after.state_version,
                        before.state_version + 1,
                        "{state} --{verb}--> bumps the version"
                    );
                    let events = app
                        .events(&admin(), Some(m.id), Default::default())
                        .await
                        .unwrap()
                        .events;
                    let last = events.last().unwrap();
                    assert_eq!(
                        (last.kind.as_str(), last.from_state, last.to_state),
                        (verb.as_str(), Some(state), Some(want))
                    );
                }
                (None, Err(e)) => {
                    assert_eq!(e.kind, ErrorKind::Conflict, "{state} --{verb}--> {e}");
                    if verb == Verb::Allocate {
                        assert_eq!(e.code, "insufficient_capacity");
                    } else {
                        assert_eq!(e.code, "invalid_transition", "{state} --{verb}--> {e}");
                        assert_eq!(e.current_state, Some(state));
                    }
                    assert_eq!(after.state, state, "a refused verb changes nothing");
                    assert_eq!(after.state_version, before.state_version);
                }
                (want, got) => panic!("{state} --{verb}-->: expected {want:?}, got {got:?}"),
            }
            // Leave no ready machine behind for the next allocate.
            if after.state == MachineState::Ready {
                force(&db, m.id, MachineState::Decommissioned).await;
            }
        }
    }
}

#[tokio::test]
async fn stale_version_is_refused() {
    let (app, _db) = app().await;
    let m = app.enroll_machine(&admin(), enroll_req(1)).await.unwrap();
    let stale = Action {
        verb: Verb::Inspect,
        expected_version: Some(m.state_version + 7),
        reason: None,
    };
    let e = app.act(&admin(), m.id, stale).await.unwrap_err();
    assert_eq!(
        (e.code, e.current_state, e.current_version),
        (
            "stale_version",
            Some(MachineState::Enrolled),
            Some(m.state_version)
        )
    );
    let ok = Action {
        verb: Verb::Inspect,
        expected_version: Some(m.state_version),
        reason: None,
    };
    assert_eq!(
        app.act(&admin(), m.id, ok).await.unwrap().state,
        MachineState::Inspecting
    );
}

#[tokio::test]
async fn decommission_frees_mac_ip_and_rack_slot_but_keeps_the_record() {
    let (app, _db) = app().await;
    app.create_rack(
        &admin(),
        RackCreate {
            name: "r1".into(),
            site: None,
            room: None,
            row: None,
            height_u: 42,
        },
    )
    .await
    .unwrap();
    let mut req = enroll_req(5);
    req.rack = Some("r1".into());
    req.rack_unit = Some(10);
    req.size_u = Some(2);
    req.nics[0].ipv4 = Some("10.0.0.5".parse().unwrap());
    let m = app.enroll_machine(&admin(), req.clone()).await.unwrap();
    let mut clash = req.clone();
    clash.hostname = Some("other".into());
    assert_eq!(
        app.enroll_machine(&admin(), clash.clone())
            .await
            .unwrap_err()
            .code,
        "rack_slot_taken"
    );
    let mut unracked = clash.clone();
    (unracked.rack, unracked.rack_unit) = (None, None);
    assert_eq!(
        app.enroll_machine(&admin(), unracked.clone())
            .await
            .unwrap_err()
            .code,
        "duplicate_mac"
    );
    unracked.nics[0].mac = mac(6);
    assert_eq!(
        app.enroll_machine(&admin(), unracked)
            .await
            .unwrap_err()
            .code,
        "duplicate_ipv4"
    );
    app.act(
        &admin(),
        m.id,
        Action {
            verb: Verb::Decommission,
            expected_version: None,
            reason: None,
        },
    )
    .await
    .unwrap();
    app.force_outcome(
        &admin(),
        m.id,
        Action {
            verb: Verb::DecommissionComplete,
            expected_version: None,
            reason: Some("test: no agent".into()),
        },
    )
    .await
    .unwrap();
    let gone = app.get_machine(&admin(), m.id).await.unwrap();
    assert_eq!(gone.state, MachineState::Decommissioned);
    assert_eq!((gone.rack, gone.rack_unit), (None, None));
    assert!(
        gone.nics.is_empty(),
        "NICs of a decommissioned machine are inactive"
    );
    // The same MAC, address and slot can be enrolled again.
    let again = app.enroll_machine(&admin(), clash).await.unwrap();
    assert_eq!(again.rack_unit, Some(10));
    assert_eq!(again.nics[0].ipv4, Some("10.0.0.5".parse().unwrap()));
}

#[tokio::test]
async fn maintenance_blocks_allocation_and_automation() {
    let (app, db) = app().await;
    let m = app.enroll_machine(&admin(), enroll_req(9)).await.unwrap();
    force(&db, m.id, MachineState::Ready).await;
    app.set_maintenance(&admin(), m.id, true, Some("bad DIMM".into()), None)
        .await
        .unwrap();
    let e = app
        .allocate(&admin(), AllocationRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, "insufficient_capacity");
    let sys = Principal::system();
    let e = app
        .act(
            &sys,
            m.id,
            Action {
                verb: Verb::Inspect,
                expected_version: None,
                reason: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "in_maintenance");
    let got = app.get_machine(&admin(), m.id).await.unwrap();
    assert_eq!(
        (got.maintenance, got.maintenance_reason.as_deref()),
        (true, Some("bad DIMM"))
    );
    app.set_maintenance(&admin(), m.id, false, None, None)
        .await
        .unwrap();
    assert_eq!(
        app.allocate(&admin(), AllocationRequest::default())
            .await
            .unwrap()
            .machines[0]
            .id,
        m.id
    );
}

#[tokio::test]
async fn bmc_password_is_encrypted_at_rest() {
    let (app, db) = app().await;
    let mut req = enroll_req(3);
    req.bmc = Some(BmcSpec {
        protocol: BmcProtocol::Redfish,
        address: "10.1.0.3:8000".into(),
        username: "root".into(),
        password: "correct horse".into(),
        verify_tls: Some(false),
        plain_http: None,
    });
    let m = app.enroll_machine(&admin(), req).await.unwrap();
    let raw: Vec<u8> =
        sqlx::query_scalar("select password_ciphertext from bmcs where machine_id = $1")
            .bind(m.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!raw.windows(5).any(|w| w == b"horse"));
    assert_eq!(
        app.bmc_password(m.id).await.unwrap().as_deref(),
        Some("correct horse")
    );
    let dump = serde_json::to_string(&app.get_machine(&admin(), m.id).await.unwrap()).unwrap();
    assert!(!dump.contains("horse") && dump.contains("10.1.0.3:8000"));
    let events = serde_json::to_string(
        &app.events(&admin(), Some(m.id), Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(!events.contains("horse"));
}

#[tokio::test]
async fn events_are_append_only() {
    let (app, db) = app().await;
    app.enroll_machine(&admin(), enroll_req(4)).await.unwrap();
    for sql in [
        "update events set actor = 'x'",
        "delete from events",
        "truncate events",
    ] {
        let e = sqlx::query(sql).execute(&db.pool).await.unwrap_err();
        // TRUNCATE meets the webhook queue's foreign key first (issue 20), then the trigger.
        assert!(
            e.to_string().contains("append-only")
                || (sql.starts_with("truncate")
                    && e.to_string().contains("referenced in a foreign key")),
            "{sql}: {e}"
        );
    }
}

/// Several instances answer the same inspecting machine's script requests at once (iPXE
/// retries reaching each): each request gets its script and a token, none an internal error, and the
/// machine is left with one live token, the last one minted.
#[tokio::test]
async fn concurrent_script_requests_from_several_instances_mint_one_live_token() {
    let (a, db) = app().await;
    // Four instances' batch workers (one per App).
    let apps = [a.clone(), db.app(), db.app(), db.app()];
    let id = a.enroll_machine(&admin(), enroll_req(91)).await.unwrap().id;
    force(&db, id, MachineState::Inspecting).await;
    let settings = plinth_core::boot::BootSettings::with_root("images".into());
    for _round in 0..10 {
        let tasks: Vec<_> = (0..64)
            .map(|n| {
                let app = apps[n % apps.len()].clone();
                let settings = settings.clone();
                tokio::spawn(async move {
                    app.boot_script(
                        &plinth_core::boot::BootRequest {
                            mac: Some(mac(91).to_string()),
                            request_base: Some("http://10.30.0.2:8080".into()),
                            ..Default::default()
                        },
                        &settings,
                    )
                    .await
                })
            })
            .collect();
        for t in tasks {
            let script = t.await.unwrap();
            assert!(script.is_ok(), "{script:?}");
        }
    }
    let live: i64 = sqlx::query_scalar(
        "select count(*) from agent_tokens where machine_id = $1 and used_at is null and revoked_at is null",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(live, 1);
}
