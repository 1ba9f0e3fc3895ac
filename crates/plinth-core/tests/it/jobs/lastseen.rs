//! What plinth last saw of a machine (issue 22), against a real PostgreSQL with in-memory BMCs:
//! a timeout's reason names the last lease, script request, file and power reading, each from
//! before the state or not; file fetches go through the in-memory log and its flush (two
//! instances on one database); a machine whose ramdisk powered it off fails at once, and the
//! races around plinth's own power-on do not fail it.

use std::net::{IpAddr, Ipv4Addr};

use plinth_core::sightings::Protocol;

use super::*;

const SRV: Ipv4Addr = Ipv4Addr::new(10, 31, 0, 2);

fn timeouts() -> plinth_core::lifecycle::StuckTimeouts {
    plinth_core::lifecycle::StuckTimeouts {
        inspect: Duration::from_secs(600),
        clean: Duration::from_secs(600),
        deploy: Duration::from_secs(600),
    }
}

fn sync(w: &World) -> Arc<PowerSync> {
    PowerSync::new(
        w.app.clone(),
        Arc::new(FakeConnector(w.fakes.clone())),
        SyncSettings {
            interval: Duration::from_secs(60),
            jitter: 0.2,
            failures_before_unreachable: 3,
            concurrency: 4,
            call_timeout: Duration::from_millis(500),
            tick: Duration::from_millis(50),
            auth_hold: Duration::from_secs(3600),
            health_interval: Duration::ZERO,
            log_entries_per_poll: 50,
        },
    )
}

async fn subnet(app: &App) {
    app.create_subnet(
        &admin(),
        SubnetCreate {
            cidr: "10.31.0.0/24".into(),
            ranges: vec![AddressRange {
                start: Ipv4Addr::new(10, 31, 0, 100),
                end: Ipv4Addr::new(10, 31, 0, 150),
            }],
            router: None,
            dns_servers: None,
            domain: None,
            lease_time: Some(600),
            boot_server: None,
            relay_addresses: None,
            relay_any_in_cidr: None,
        },
    )
    .await
    .unwrap();
}

/// A DHCP exchange of `m` through the lease engine the DHCP server uses; its address.
async fn dora(app: &App, m: plinth_types::MacAddr) -> Ipv4Addr {
    use plinth_core::dhcp::{
        BootConfig, ClientInfo, DhcpRequest, LeaseOp, LeaseTimers, Outcome, UnknownPolicy,
    };
    let boot = BootConfig {
        bios_binary: "undionly.kpxe".into(),
        efi_binary: "ipxe.efi".into(),
        arm64_binary: None,
        http_base: None,
        http_port: 8080,
        unknown_machines: UnknownPolicy::Boot,
    };
    let timers = LeaseTimers {
        offer_secs: 30,
        quarantine_secs: 600,
    };
    let req = |op| DhcpRequest {
        op,
        match_addr: SRV,
        relayed: false,
        mac: m,
        client_id: None,
        hostname: None,
        client: ClientInfo::default(),
    };
    let offer = app
        .dhcp_decide(
            &req(LeaseOp::Discover { requested: None }),
            timers,
            &boot,
            SRV,
        )
        .await
        .unwrap();
    let ip = offer.lease.unwrap().address.unwrap();
    let ack = app
        .dhcp_decide(&req(LeaseOp::Select { requested: ip }), timers, &boot, SRV)
        .await
        .unwrap();
    assert_eq!(ack.outcome, Outcome::Ack, "{ack:?}");
    ip
}

/// The iPXE script request of `m` from `ip`, as `/boot/ipxe` makes it.
async fn script(app: &App, m: plinth_types::MacAddr, ip: Ipv4Addr) {
    app.boot_script(
        &plinth_core::boot::BootRequest {
            mac: Some(m.to_string()),
            remote: Some(IpAddr::V4(ip)),
            request_base: Some("http://10.31.0.2:8080".into()),
            ..Default::default()
        },
        &plinth_core::boot::BootSettings::with_root("images".into()),
    )
    .await
    .unwrap();
}

async fn sql(w: &World, q: &'static str, id: Uuid) {
    sqlx::query(q).bind(id).execute(w.app.pool()).await.unwrap();
}

/// Enrolls machine `n`, starts its inspection and runs the jobs (PXE once, power cycle).
async fn inspecting(w: &World, n: u32) -> (Uuid, Arc<FakeBmc>) {
    let (id, f) = w.enroll(n, PASSWORD).await;
    w.act(id, Verb::Inspect).await.unwrap();
    w.runner.drain().await.unwrap();
    assert_eq!(f.power_now(), PowerState::On);
    (id, f)
}

/// Fails the machine's inspection on its timeout (its state entered 11 minutes ago);
/// the reason and the event's `last_seen`.
async fn time_out(w: &World, id: Uuid) -> (String, serde_json::Value) {
    sql(
        w,
        "update machines set state_changed_at = now() - interval '11 minutes' where id = $1",
        id,
    )
    .await;
    assert_eq!(w.app.fail_stuck(&timeouts()).await.unwrap(), 1);
    let m = w.app.get_machine(&admin(), id).await.unwrap();
    assert_eq!(m.state, MachineState::InspectFailed);
    let ev = w.events_of_kind(id, "inspect_fail").await;
    (m.state_reason.unwrap(), ev[0].details["last_seen"].clone())
}

#[tokio::test]
async fn a_machine_that_never_asked_for_a_lease_is_told_apart() {
    let w = world(settings()).await;
    subnet(&w.app).await;
    let (id, _) = inspecting(&w, 1).await;
    let (reason, seen) = time_out(&w, id).await;
    assert!(
        reason.starts_with("no inspection report within 600 s"),
        "{reason}"
    );
    for part in [
        "last seen: no DHCP lease since inspecting began at ",
        "; no script request since inspecting began at ",
        "; no file fetched since inspecting began at ",
        "; power on, read at ",
    ] {
        assert!(reason.contains(part), "{part:?} in {reason}");
    }
    assert!(seen["lease"].is_null() && seen["script"].is_null() && seen["file"].is_null());
    assert_eq!(seen["power"]["state"], "on");
    assert_eq!(seen["state"], "inspecting");
}

#[tokio::test]
async fn a_lease_and_a_script_but_no_file() {
    let w = world(settings()).await;
    subnet(&w.app).await;
    let (id, _) = inspecting(&w, 1).await;
    let ip = dora(&w.app, mac(1)).await;
    script(&w.app, mac(1), ip).await;
    let (reason, seen) = time_out(&w, id).await;
    assert!(
        reason.contains(&format!("last seen: lease {ip} bound at ")),
        "{reason}"
    );
    assert!(
        reason.contains("; script request (ramdisk.ipxe) at "),
        "{reason}"
    );
    assert!(
        reason.contains("; no file fetched since inspecting began"),
        "{reason}"
    );
    assert!(!reason.contains("before inspecting began)"), "{reason}");
    assert_eq!(seen["lease"]["address"], ip.to_string());
    assert_eq!(seen["lease"]["before_state"], false);
    assert_eq!(seen["script"]["script"], "ramdisk.ipxe");
}

#[tokio::test]
async fn a_lease_that_lapsed_is_not_taken_for_no_lease() {
    let w = world(settings()).await;
    subnet(&w.app).await;
    let (id, _) = inspecting(&w, 1).await;
    let ip = dora(&w.app, mac(1)).await;
    // A renewal (the same REQUEST again) moves bound_at; then the machine goes quiet, the
    // lease expires and the reconciler frees it.
    dora(&w.app, mac(1)).await;
    sqlx::query("update leases set expires_at = now() - interval '1 second' where address = $1")
        .bind(IpAddr::V4(ip))
        .execute(w.app.pool())
        .await
        .unwrap();
    assert_eq!(w.app.reclaim_leases().await.unwrap(), 1);
    let (reason, seen) = time_out(&w, id).await;
    assert!(
        reason.contains(&format!("last seen: lease {ip} bound at ")),
        "{reason}"
    );
    assert!(reason.contains(", expired or released at "), "{reason}");
    assert_eq!(seen["lease"]["state"], "free");
    assert!(seen["lease"]["bound_at"].is_string(), "{seen}");
}

#[tokio::test]
async fn a_file_fetched_in_part_and_a_lease_from_before_the_state() {
    let w = world(settings()).await;
    subnet(&w.app).await;
    let (id, _) = inspecting(&w, 1).await;
    let ip = dora(&w.app, mac(1)).await;
    // The lease was renewed three hours ago (before the inspection began), not since.
    sqlx::query(
        "update leases set updated_at = now() - interval '3 hours', \
         bound_at = now() - interval '3 hours' where address = $1",
    )
    .bind(IpAddr::V4(ip))
    .execute(w.app.pool())
    .await
    .unwrap();
    script(&w.app, mac(1), ip).await;
    let log = w.app.fetch_log();
    log.record(ip.into(), Protocol::Tftp, "undionly.kpxe", 0, 70_000, false);
    log.record(
        ip.into(),
        Protocol::Tftp,
        "undionly.kpxe",
        70_000,
        70_000,
        true,
    );
    log.record(
        ip.into(),
        Protocol::Http,
        "ramdisk/initrd.img",
        0,
        4_000_000,
        false,
    );
    log.record(
        ip.into(),
        Protocol::Http,
        "ramdisk/initrd.img",
        1_048_576,
        4_000_000,
        false,
    );
    // Not flushed yet: the timeout flushes this instance's log before it judges.
    assert_eq!(log.len(), 2);
    let (reason, seen) = time_out(&w, id).await;
    assert!(
        reason.contains(&format!("last seen: lease {ip} bound at ")),
        "{reason}"
    );
    assert!(
        reason.contains("ago, before inspecting began); script request"),
        "{reason}"
    );
    assert!(
        reason.contains("; file http ramdisk/initrd.img, 1048576 of 4000000 bytes, incomplete at "),
        "{reason}"
    );
    assert_eq!(seen["lease"]["before_state"], true);
    assert_eq!(seen["file"]["complete"], false);
    assert_eq!(seen["files"].as_array().unwrap().len(), 2, "{seen}");
    assert_eq!(seen["files"][1]["protocol"], "tftp");
    assert_eq!(seen["files"][1]["complete"], true);
}

#[tokio::test]
async fn everything_fetched_then_silence_read_by_another_instance() {
    let w = world(settings()).await;
    subnet(&w.app).await;
    let (id, _) = inspecting(&w, 1).await;
    let ip = dora(&w.app, mac(1)).await;
    script(&w.app, mac(1), ip).await;
    // Another instance served the files; this one judges the timeout.
    let other = w._db.app();
    other.fetch_log().record(
        ip.into(),
        Protocol::Http,
        "ramdisk/vmlinuz",
        9_000,
        9_000,
        true,
    );
    other.fetch_log().record(
        ip.into(),
        Protocol::Http,
        "ramdisk/initrd.img",
        4_000,
        4_000,
        true,
    );
    // A client nobody leased an address to is not written.
    other.fetch_log().record(
        IpAddr::V4(Ipv4Addr::new(10, 31, 0, 222)),
        Protocol::Tftp,
        "undionly.kpxe",
        1,
        2,
        false,
    );
    assert_eq!(other.flush_fetches().await.unwrap(), 1);
    assert!(other.fetch_log().is_empty());
    // An older fetch flushed late (by a third instance) does not replace the newer one.
    let third = w._db.app();
    third
        .fetch_log()
        .record(ip.into(), Protocol::Http, "ramdisk/old", 1, 2, false);
    sqlx::query("update file_fetches set at = now() + interval '1 minute' where address = $1")
        .bind(IpAddr::V4(ip))
        .execute(w.app.pool())
        .await
        .unwrap();
    assert_eq!(third.flush_fetches().await.unwrap(), 0);
    let (reason, seen) = time_out(&w, id).await;
    assert!(
        reason.contains("; file http ramdisk/initrd.img, 4000 of 4000 bytes, complete at "),
        "{reason}"
    );
    assert_eq!(seen["file"]["path"], "ramdisk/initrd.img");
}

/// As if the state had been entered two minutes ago and its jobs had finished a minute ago.
async fn age(w: &World, id: Uuid) {
    sql(
        w,
        "update machines set state_changed_at = state_changed_at - interval '2 minutes' where id = $1",
        id,
    )
    .await;
    sql(
        w,
        "update jobs set finished_at = finished_at - interval '1 minute' where machine_id = $1",
        id,
    )
    .await;
}

#[tokio::test]
async fn a_static_address_maps_fetches_to_its_machine() {
    let w = world(settings()).await;
    // A machine plinth hands no lease to (virtual media, a static network): its NIC's address.
    let ip = Ipv4Addr::new(10, 32, 0, 7);
    let m = w
        .app
        .enroll_machine(
            &admin(),
            MachineCreate {
                hostname: Some("static-1".into()),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: Some(Arch::X86_64),
                nics: vec![NicSpec {
                    mac: mac(9),
                    ipv4: Some(ip),
                    pxe: None,
                }],
                bmc: None,
            },
        )
        .await
        .unwrap();
    w.app
        .fetch_log()
        .record(ip.into(), Protocol::Http, "vmedia/boot.iso", 10, 20, false);
    let seen = w.app.last_seen(m.id).await.unwrap().unwrap();
    assert_eq!(seen.seen.fetches.len(), 1);
    let text = seen.text();
    assert!(
        text.contains("file http vmedia/boot.iso, 10 of 20 bytes, incomplete at "),
        "{text}"
    );
    assert!(
        text.contains("no DHCP lease since enrolled began") && text.ends_with("; no BMC"),
        "{text}"
    );
    assert!(w.app.last_seen(Uuid::new_v4()).await.unwrap().is_none());
}

/// Two power readings of the machine: the sync's polls, each made due at once.
async fn poll_twice(w: &World, s: &Arc<PowerSync>, id: Uuid) {
    for _ in 0..2 {
        w.app.poll_bmc_now(Some(id)).await.unwrap();
        assert_eq!(s.run_once().await.unwrap().polled, 1);
        // Distinct transaction times.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_ramdisk_that_powered_off_fails_at_once() {
    let w = world(settings()).await;
    subnet(&w.app).await;
    let s = sync(&w);
    let (id, f) = inspecting(&w, 1).await;
    let ip = dora(&w.app, mac(1)).await;
    script(&w.app, mac(1), ip).await;
    let grace = Duration::from_secs(5);
    // The ramdisk found no network and powered off. One reading is not enough.
    f.power(PowerAction::Off { force: true }).await.unwrap();
    w.app.poll_bmc_now(Some(id)).await.unwrap();
    s.run_once().await.unwrap();
    assert_eq!(w.app.fail_powered_off(Duration::ZERO).await.unwrap(), 0);
    // Two readings, but within the grace after plinth's power cycle: a reading taken before
    // the power-on could have landed then. Not believed.
    poll_twice(&w, &s, id).await;
    assert_eq!(w.app.fail_powered_off(grace).await.unwrap(), 0);
    // The power cycle finished a minute before (the readings are well past the grace).
    age(&w, id).await;
    // A job queued for the machine (a technician's power on): plinth is acting, wait.
    let on = w
        .app
        .request_power(
            &admin(),
            id,
            PowerRequest {
                action: PowerOp::On,
                force: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(w.app.fail_powered_off(grace).await.unwrap(), 0);
    w.app.cancel_job(&admin(), on.id).await.unwrap();
    // The cancelled job finished now: readings before it + grace are not believed either.
    assert_eq!(w.app.fail_powered_off(grace).await.unwrap(), 0);
    sql(
        &w,
        "update jobs set finished_at = finished_at - interval '1 minute' where id = $1",
        on.id,
    )
    .await;
    assert_eq!(w.app.fail_powered_off(grace).await.unwrap(), 1);
    assert_eq!(w.app.fail_powered_off(grace).await.unwrap(), 0, "once");
    let m = w.app.get_machine(&admin(), id).await.unwrap();
    assert_eq!(m.state, MachineState::InspectFailed);
    let reason = m.state_reason.unwrap();
    assert!(
        reason.starts_with("the machine powered off without reporting"),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("last seen: lease {ip} bound at ")),
        "{reason}"
    );
    assert!(reason.contains("; power off, read at "), "{reason}");
    let ev = w.events_of_kind(id, "inspect_fail").await;
    assert_eq!(ev[0].actor, "system");
    assert_eq!(ev[0].details["last_seen"]["power"]["state"], "off");
    assert!(ev[0].details["powered_off"]["off_at"].is_string());
}

#[tokio::test]
async fn a_power_off_plinth_caused_or_read_before_the_power_on_fails_nothing() {
    let w = world(settings()).await;
    let s = sync(&w);
    // a: read off twice, then plinth's power cycle of the inspection runs: the off readings
    // were before the power-on job finished (which read the machine on).
    let (a, fa) = w.enroll(1, PASSWORD).await;
    w.runner.drain().await.unwrap();
    fa.power(PowerAction::Off { force: true }).await.unwrap();
    poll_twice(&w, &s, a).await;
    w.act(a, Verb::Inspect).await.unwrap();
    assert_eq!(
        w.app.fail_powered_off(Duration::ZERO).await.unwrap(),
        0,
        "jobs queued"
    );
    w.runner.drain().await.unwrap();
    age(&w, a).await;
    assert_eq!(w.app.fail_powered_off(Duration::ZERO).await.unwrap(), 0);

    // b: the agent's report arrives, then the machine is off (plinth's own power-off job,
    // or the agent's): the machine is ready, nothing fails.
    let (b, fb) = inspecting(&w, 2).await;
    let mac_b = w.app.get_machine(&admin(), b).await.unwrap().nics[0].mac;
    w.app
        .submit_inspection(&admin(), b, uefi_report(b, mac_b))
        .await
        .unwrap();
    fb.power(PowerAction::Off { force: true }).await.unwrap();
    poll_twice(&w, &s, b).await;
    age(&w, b).await;
    assert_eq!(w.app.fail_powered_off(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(
        w.app.get_machine(&admin(), b).await.unwrap().state,
        MachineState::Ready
    );

    // c: in maintenance, a technician is at it: left alone.
    let (c, fc) = inspecting(&w, 3).await;
    sql(
        &w,
        "update machines set maintenance = true, maintenance_reason = 'bench' where id = $1",
        c,
    )
    .await;
    fc.power(PowerAction::Off { force: true }).await.unwrap();
    poll_twice(&w, &s, c).await;
    age(&w, c).await;
    assert_eq!(w.app.fail_powered_off(Duration::ZERO).await.unwrap(), 0);
    // Out of maintenance, the same machine fails.
    sql(
        &w,
        "update machines set maintenance = false, maintenance_reason = null where id = $1",
        c,
    )
    .await;
    assert_eq!(w.app.fail_powered_off(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(
        w.app.get_machine(&admin(), c).await.unwrap().state,
        MachineState::InspectFailed
    );
}
