//! The web UI's read models against a real PostgreSQL: the machine table's filters, search
//! (hostname substring, MAC in any spelling, serial, reserved or leased IPv4), sorting and
//! pages; rack occupants and free positions.

use plinth_core::inventory::SortKey;
use plinth_core::{App, Principal};
use plinth_db::inventory::TableQuery;
use plinth_testkit::TestDb;
use plinth_types::api::*;
use plinth_types::{ErrorKind, Role};

async fn app() -> (App, TestDb) {
    let db = TestDb::new().await.unwrap();
    (db.app(), db)
}

fn admin() -> Principal {
    Principal {
        token_id: None,
        name: "test".into(),
        role: Role::Admin,
    }
}

async fn seed(app: &App) {
    for (name, height) in [("r1", 42), ("r2", 10)] {
        app.create_rack(
            &admin(),
            RackCreate {
                name: name.into(),
                site: Some("ams1".into()),
                room: None,
                row: None,
                height_u: height,
            },
        )
        .await
        .unwrap();
    }
    for n in 1..=30u32 {
        app.enroll_machine(
            &admin(),
            MachineCreate {
                hostname: Some(format!("node-{n:02}")),
                rack: Some(if n <= 20 { "r1" } else { "r2" }.into()),
                rack_unit: Some(if n <= 20 {
                    n as i32 * 2 - 1
                } else {
                    n as i32 - 20
                }),
                size_u: Some(if n <= 20 { 2 } else { 1 }),
                pool: Some(if n % 3 == 0 { "gpu" } else { "default" }.into()),
                tags: Some(if n % 2 == 0 {
                    vec!["even".into()]
                } else {
                    vec![]
                }),
                arch: None,
                nics: vec![NicSpec {
                    mac: plinth_testkit::mac(n),
                    ipv4: (n == 7).then(|| "10.9.0.7".parse().unwrap()),
                    pxe: None,
                }],
                bmc: None,
            },
        )
        .await
        .unwrap();
    }
}

fn q() -> TableQuery {
    TableQuery {
        limit: 50,
        ..Default::default()
    }
}

fn names(rows: &[plinth_db::inventory::TableRow]) -> Vec<String> {
    rows.iter().map(|r| r.hostname.clone().unwrap()).collect()
}

#[tokio::test]
async fn the_machine_table_filters_searches_sorts_and_pages() {
    let (app, _db) = app().await;
    seed(&app).await;
    let who = admin();
    let (rows, total) = app.machine_table(&who, q()).await.unwrap();
    assert_eq!(total, 30);
    assert_eq!(rows[0].hostname.as_deref(), Some("node-01"));
    assert_eq!(
        rows[0].mac.map(|m| m.to_string()).as_deref(),
        Some("52:54:00:00:00:01")
    );
    assert_eq!(
        rows[6].ip.map(|a| a.to_string()).as_deref(),
        Some("10.9.0.7"),
        "the reserved address"
    );

    let t = |f: fn(&mut TableQuery)| {
        let mut x = q();
        f(&mut x);
        x
    };
    let (rows, total) = app
        .machine_table(&who, t(|x| x.rack = Some("r2".into())))
        .await
        .unwrap();
    assert_eq!((rows.len(), total), (10, 10));
    let (_, total) = app
        .machine_table(
            &who,
            t(|x| {
                x.pool = Some("gpu".into());
                x.tag = Some("even".into());
            }),
        )
        .await
        .unwrap();
    assert_eq!(total, 5, "multiples of 6 up to 30");
    let (_, total) = app
        .machine_table(&who, t(|x| x.power = Some("unknown".into())))
        .await
        .unwrap();
    assert_eq!(total, 30, "no BMC: power unknown");
    let (_, total) = app
        .machine_table(&who, t(|x| x.power = Some("on".into())))
        .await
        .unwrap();
    assert_eq!(total, 0);
    let (_, total) = app
        .machine_table(
            &who,
            t(|x| x.state = Some(plinth_types::MachineState::Ready)),
        )
        .await
        .unwrap();
    assert_eq!(total, 0);

    // Search: a hostname substring, a MAC in another spelling, an address.
    for (query, want) in [
        (
            "de-2",
            vec![
                "node-20", "node-21", "node-22", "node-23", "node-24", "node-25", "node-26",
                "node-27", "node-28", "node-29",
            ],
        ),
        ("52-54-00-00-00-0A", vec!["node-10"]),
        ("5254.0000.000b", vec!["node-11"]),
        ("10.9.0.7", vec!["node-07"]),
        ("100%_", vec![]),
    ] {
        let (rows, total) = app
            .machine_table(
                &who,
                TableQuery {
                    q: Some(query.into()),
                    ..q()
                },
            )
            .await
            .unwrap();
        assert_eq!(names(&rows), want, "{query}");
        assert_eq!(total as usize, want.len());
    }

    // Sorting and pages.
    let (rows, _) = app
        .machine_table(
            &who,
            TableQuery {
                sort: SortKey::Hostname,
                desc: true,
                limit: 5,
                offset: 5,
                ..q()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        names(&rows),
        ["node-25", "node-24", "node-23", "node-22", "node-21"]
    );
    let (rows, _) = app
        .machine_table(
            &who,
            TableQuery {
                sort: SortKey::Rack,
                limit: 3,
                ..q()
            },
        )
        .await
        .unwrap();
    // r1 first, from the top of the rack down.
    assert_eq!(names(&rows), ["node-20", "node-19", "node-18"]);
    let (rows, total) = app
        .machine_table(&who, TableQuery { offset: 100, ..q() })
        .await
        .unwrap();
    assert!(rows.is_empty());
    assert_eq!(total, 30, "the count does not depend on the page");

    // Bad input, and who may look.
    let e = app
        .machine_table(&who, TableQuery { limit: 0, ..q() })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    let e = app
        .machine_table(&who, t(|x| x.power = Some("maybe".into())))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    let client = Principal {
        token_id: Some(uuid::Uuid::new_v4()),
        name: "c".into(),
        role: Role::Client,
    };
    let (_, total) = app.machine_table(&client, q()).await.unwrap();
    assert_eq!(total, 0, "a client sees only its allocations' machines");
}

#[tokio::test]
async fn free_positions_leave_out_every_taken_unit() {
    let (app, _db) = app().await;
    seed(&app).await;
    // r2: units 1..=10 taken by 1U machines; r1: 2U machines at 1,3,...,39 → 41, 42 free.
    assert!(app.free_units(&admin(), "r2", 1).await.unwrap().is_empty());
    assert_eq!(app.free_units(&admin(), "r1", 1).await.unwrap(), [41, 42]);
    assert_eq!(app.free_units(&admin(), "r1", 2).await.unwrap(), [41]);
    assert!(app.free_units(&admin(), "r1", 3).await.unwrap().is_empty());
    let e = app.free_units(&admin(), "nope", 1).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    let e = app.free_units(&admin(), "r1", 0).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    let occupants = app.rack_occupants(&admin(), None).await.unwrap();
    assert_eq!(occupants.len(), 30);
}
