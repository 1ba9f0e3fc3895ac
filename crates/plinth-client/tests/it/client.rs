//! The typed client against a real plinth API (in process, over real HTTP on an ephemeral
//! port, on a real PostgreSQL): every method the callers use, and errors that carry the API's
//! code, status and the machine's current state.

use plinth_client::query::{EventFilter, ImageUpload, JobFilter, LeaseFilter, MachineFilter};
use plinth_client::{Client, Error};
use plinth_core::App;
use plinth_core::boot::{BootSettings, Templates};
use plinth_testkit::TestDb;
use plinth_testkit::api::TestApi;
use plinth_types::api::*;
use plinth_types::{MachineState, Role};
use sha2::Digest;
use uuid::Uuid;

struct Server {
    api: Client,
    app: App,
    images: tempfile::TempDir,
    _db: TestDb,
}

impl Server {
    async fn start() -> Server {
        let images = tempfile::tempdir().unwrap();
        let t = TestApi::start_with(|app| {
            app.with_boot(
                BootSettings::with_root(images.path().to_owned()),
                Templates::load(None).unwrap(),
            )
        })
        .await;
        // A trailing slash, as people type it: the client drops it.
        let base = format!("{}/", t.base);
        Server {
            api: Client::new(base, t.admin).unwrap(),
            app: t.app,
            images,
            _db: t.db,
        }
    }

    async fn token(&self, name: &str, role: Role) -> String {
        plinth_testkit::api::token(&self.app, name, role).await
    }

    async fn enroll(&self, n: u8) -> Machine {
        self.api
            .enroll_machine(&MachineCreate {
                hostname: Some(format!("n{n}")),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: None,
                nics: vec![NicSpec {
                    mac: mac(n).parse().unwrap(),
                    ipv4: None,
                    pxe: None,
                }],
                bmc: None,
            })
            .await
            .unwrap()
    }
}

/// MACs of their own (52:54:00:c1:00:NN), apart from the other tests' `mac(n)`.
fn mac(n: u8) -> String {
    plinth_testkit::mac(0xc1_0000 | u32::from(n)).to_string()
}

fn report(n: u8) -> InspectionReport {
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
            serial: Some(format!("S{n}")),
            rotational: Some(false),
        }],
        nics: vec![NicFacts {
            name: "eno1".into(),
            mac: mac(n).parse().unwrap(),
            speed_mbps: Some(25000),
            link: Some(true),
        }],
        system: SystemFacts {
            vendor: "Acme".into(),
            product: "X1".into(),
            serial: format!("SN{n}"),
            uuid: "4c4c4544-0000-0000-0000-000000000000".into(),
        },
        firmware: Firmware::Uefi,
        arch: Arch::X86_64,
    }
}

fn api_error(e: Error) -> plinth_client::ApiError {
    match e {
        Error::Api(a) => a,
        other => panic!("expected the API's error, got {other:?}"),
    }
}

#[tokio::test]
async fn inventory_round_trips_through_the_typed_client() {
    let s = Server::start().await;
    let api = &s.api;

    // Racks.
    let r = api
        .create_rack(&RackCreate {
            name: "r7".into(),
            site: Some("ams1".into()),
            room: None,
            row: None,
            height_u: 42,
        })
        .await
        .unwrap();
    assert_eq!((r.name.as_str(), r.height_u), ("r7", 42));
    let r = api
        .update_rack(
            "r7",
            &RackPatch {
                row: Some(Some("3".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (r.site.as_deref(), r.row.as_deref()),
        (Some("ams1"), Some("3"))
    );

    // Machines: enroll into the rack, find it by filter, page, edit.
    let m = api
        .enroll_machine(&MachineCreate {
            hostname: Some("DB-01".into()),
            rack: Some("r7".into()),
            rack_unit: Some(5),
            size_u: Some(2),
            pool: None,
            tags: Some(vec!["ssd".into()]),
            arch: Some(Arch::X86_64),
            nics: vec![NicSpec {
                mac: mac(1).parse().unwrap(),
                ipv4: None,
                pxe: None,
            }],
            bmc: None,
        })
        .await
        .unwrap();
    assert_eq!(
        (m.hostname.as_deref(), m.state, m.rack.as_deref()),
        (Some("db-01"), MachineState::Enrolled, Some("r7"))
    );
    for n in 2..=4 {
        s.enroll(n).await;
    }
    let in_rack = api
        .list_machines(&MachineFilter {
            rack: Some("r7".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(in_rack.machines.len(), 1);
    assert_eq!(in_rack.machines[0].id, m.id);
    assert_eq!(api.get_rack("r7").await.unwrap().machine_count, 1);
    let mut seen = Vec::new();
    let mut filter = MachineFilter {
        limit: Some(3),
        ..Default::default()
    };
    loop {
        let page = api.list_machines(&filter).await.unwrap();
        seen.extend(page.machines.into_iter().map(|m| m.id));
        match page.next_cursor {
            Some(c) => filter.cursor = Some(c),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "every machine once across pages");
    let edited = api
        .update_machine(
            m.id,
            &MachinePatch {
                tags: Some(vec!["nvme".into(), "gpu".into()]),
                rack: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(edited.tags, ["nvme", "gpu"].map(String::from).to_vec());
    assert_eq!(edited.rack, None);
    assert_eq!(api.get_machine(m.id).await.unwrap().tags, edited.tags);
    api.delete_rack("r7").await.unwrap();
    assert!(api.list_racks().await.unwrap().is_empty());

    // Pools.
    let p = api
        .update_pool(
            "default",
            &PoolUpdate {
                wipe_method: Some(WipeMethod::Full),
            },
        )
        .await
        .unwrap();
    assert_eq!(p.effective_wipe_method, WipeMethod::Full);
    let pools = api.list_pools().await.unwrap();
    assert!(pools.iter().any(|p| p.name == "default" && p.machines == 4));

    // Subnets and leases.
    let n = api
        .create_subnet(&SubnetCreate {
            cidr: "10.20.0.0/24".into(),
            ranges: vec![AddressRange {
                start: "10.20.0.100".parse().unwrap(),
                end: "10.20.0.199".parse().unwrap(),
            }],
            router: Some("10.20.0.1".parse().unwrap()),
            dns_servers: None,
            domain: None,
            lease_time: Some(600),
            boot_server: None,
            relay_addresses: None,
            relay_any_in_cidr: None,
        })
        .await
        .unwrap();
    assert_eq!((n.pool_size, n.lease_time), (100, 600));
    let n2 = api
        .update_subnet(
            n.id,
            &SubnetPatch {
                router: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(n2.router, None);
    assert_eq!(api.get_subnet(n.id).await.unwrap().router, None);
    assert_eq!(api.list_subnets().await.unwrap().len(), 1);
    let leases = api
        .list_leases(&LeaseFilter {
            subnet: Some(n.id),
            mac: Some(mac(1).parse().unwrap()),
        })
        .await
        .unwrap();
    assert!(leases.is_empty());
    api.delete_subnet(n.id).await.unwrap();
    let e = api_error(api.get_subnet(n.id).await.unwrap_err());
    assert_eq!((e.status, e.code()), (404, "not_found"));

    // Events: the audit log and one machine's.
    let all = api
        .list_events(&EventFilter {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.events.len(), 2);
    let since_now = api
        .list_events(&EventFilter {
            since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(since_now.events.is_empty());
    let mine = api
        .machine_events(m.id, &EventFilter::default())
        .await
        .unwrap();
    assert!(mine.events.iter().all(|e| e.machine_id == Some(m.id)));
    assert!(mine.events.iter().any(|e| e.kind == "enroll"), "{mine:?}");
    assert!(mine.events.iter().any(|e| e.kind == "update"), "{mine:?}");
}

#[tokio::test]
async fn api_errors_carry_the_code_status_and_current_state() {
    let s = Server::start().await;
    let m = s.enroll(1).await;

    // A stale If-Match: refused with the machine's state and version now.
    let e = s
        .api
        .machine_action(m.id, "inspect", &ActionRequest::default(), Some(5))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("stale_version"));
    assert_eq!(e.status(), Some(409));
    assert!(!e.is_transient());
    let a = api_error(e);
    assert_eq!(
        (a.current_state(), a.current_version()),
        (Some(MachineState::Enrolled), Some(m.state_version))
    );
    assert!(
        a.to_string()
            .ends_with("(stale_version, HTTP 409); the machine is enrolled"),
        "{a}"
    );
    // The right version goes through.
    let m = s
        .api
        .machine_action(
            m.id,
            "inspect",
            &ActionRequest {
                reason: Some("first look".into()),
                force: false,
            },
            Some(m.state_version),
        )
        .await
        .unwrap();
    assert_eq!(
        (m.state, m.state_reason.as_deref()),
        (MachineState::Inspecting, Some("first look"))
    );
    let e = s
        .api
        .deploy_machine(m.id, &DeployRequest::default(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_transition"), "{e}");

    let e = s.api.get_machine(Uuid::new_v4()).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(404), Some("not_found")));

    // Tokens: a viewer reads and may not write; a revoked token stops at once.
    let made = s
        .api
        .create_token(&TokenCreate {
            name: "watcher".into(),
            role: Role::Viewer,
            expires_in_secs: Some(3600),
        })
        .await
        .unwrap();
    assert!(made.token.expires_at.is_some());
    let viewer = s.api.with_token(&made.secret);
    assert_eq!(viewer.get_machine(m.id).await.unwrap().id, m.id);
    let e = viewer
        .create_rack(&RackCreate {
            name: "r1".into(),
            site: None,
            room: None,
            row: None,
            height_u: 42,
        })
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(403), Some("forbidden")));
    let names: Vec<String> = s
        .api
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(names.contains(&"watcher".to_owned()), "{names:?}");
    let revoked = s.api.revoke_token("watcher").await.unwrap();
    assert!(revoked.revoked_at.is_some());
    let e = viewer.list_racks().await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(401), Some("unauthorized")));

    // Nothing listening: a transport error, worth another try, naming the API.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = Client::new(format!("http://127.0.0.1:{port}"), "x").unwrap();
    let e = gone.list_racks().await.unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(
        e.to_string(),
        format!("cannot reach the plinth API at http://127.0.0.1:{port}")
    );
    assert!(std::error::Error::source(&e).is_some());

    // A CA file that holds no certificate is refused when the client is built.
    let junk = s.images.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = Client::builder("https://plinth.invalid")
        .ca_file(&junk)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("junk.pem") && e.to_string().contains("no PEM certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn allocation_agent_reports_and_jobs() {
    let s = Server::start().await;
    let api = &s.api;
    let m = s.enroll(1).await;
    api.machine_action(m.id, "inspect", &ActionRequest::default(), None)
        .await
        .unwrap();
    let m = api.report_inspection(m.id, &report(1)).await.unwrap();
    assert_eq!(m.state, MachineState::Ready);
    assert_eq!(m.facts["cpu"]["threads"], 16);

    // A client allocates and releases.
    let client = api.with_token(s.token("tenant", Role::Client).await);
    let e = client
        .allocate(&AllocationRequest {
            min_cpus: Some(64),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(409), Some("insufficient_capacity"))
    );
    let a = client
        .allocate(&AllocationRequest {
            count: Some(1),
            arch: Some(Arch::X86_64),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(a.machines[0].id, m.id);
    assert_eq!(a.machines[0].state, MachineState::Allocated);
    assert_eq!(client.list_allocations(false).await.unwrap().len(), 1);
    assert_eq!(client.get_allocation(a.id).await.unwrap().owner, "tenant");
    let e = client
        .get_deployment(m.id)
        .await
        .expect_err("nothing deployed yet");
    assert_eq!(e.status(), Some(404));
    let released = client.release_allocation(a.id).await.unwrap();
    assert!(released.released_at.is_some());
    assert_eq!(released.machines[0].state, MachineState::Cleaning);
    assert!(client.list_allocations(false).await.unwrap().is_empty());
    assert_eq!(client.list_allocations(true).await.unwrap().len(), 1);

    // The cleaning agent's plan and report (an operator may send them too).
    let plan = api.clean_plan(m.id).await.unwrap();
    assert_eq!(plan.disks, report(1).disks);
    let m = api
        .report_clean(
            m.id,
            &CleanReport {
                result: CleanResult::Complete,
                reason: None,
                disks: plan
                    .disks
                    .iter()
                    .map(|d| WipedDisk {
                        name: d.name.clone(),
                        serial: d.serial.clone(),
                        size_bytes: d.size_bytes,
                        zeroed_bytes: 2 << 20,
                        full: false,
                        method: Some(plan.method),
                        verification: None,
                        error: None,
                    })
                    .collect(),
            },
        )
        .await
        .unwrap();
    assert_eq!(m.state, MachineState::Ready, "{m:?}");
    let e = api.deploy_manifest(m.id).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");

    // BMC jobs: none without a BMC; with one, queued (no worker runs here), then cancelled.
    let e = api
        .power(
            m.id,
            &PowerRequest {
                action: PowerOp::On,
                force: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("no_bmc"));
    let m = api
        .update_machine(
            m.id,
            &MachinePatch {
                bmc: Some(Some(BmcSpec {
                    protocol: BmcProtocol::Redfish,
                    address: "https://192.0.2.1".into(),
                    username: "admin".into(),
                    password: "secret".into(),
                    verify_tls: Some(false),
                    plain_http: None,
                })),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let job = api
        .set_boot_device(
            m.id,
            &BootDeviceRequest {
                device: BootTarget::Pxe,
                persistent: Some(true),
                mode: Some(FirmwareMode::Uefi),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (job.kind.as_str(), job.state),
        ("boot_device", JobState::Queued)
    );
    assert_eq!(api.get_job(job.id).await.unwrap().params["device"], "pxe");
    let power = api
        .power(
            m.id,
            &PowerRequest {
                action: PowerOp::Off,
                force: Some(true),
            },
        )
        .await
        .unwrap();
    let page = api
        .list_jobs(&JobFilter {
            machine: Some(m.id),
            state: Some(JobState::Queued),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<Uuid> = page.jobs.iter().map(|j| j.id).collect();
    assert!(ids.contains(&job.id) && ids.contains(&power.id), "{ids:?}");
    let cancelled = api.cancel_job(power.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
}

#[tokio::test]
async fn images_register_upload_streamed_and_delete() {
    let s = Server::start().await;
    let api = &s.api;
    std::fs::write(s.images.path().join("vmlinuz"), b"a kernel").unwrap();
    let k = api
        .register_image(&ImageRegister {
            name: "kernel-1".into(),
            kind: ImageKind::Kernel,
            arch: None,
            path: "vmlinuz".into(),
            sha256: None,
            firmware: None,
        })
        .await
        .unwrap();
    assert_eq!((k.size, k.source.as_str()), (8, "registered"));

    // An upload streamed in chunks, checked against its SHA-256 on the server.
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(256 * 1024).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let upload = ImageUpload {
        kind: ImageKind::Initrd,
        arch: Some("any".into()),
        path: None,
        sha256: sha.clone(),
        firmware: None,
    };
    let i = api
        .upload_image("initrd.1", &upload, body, data.len() as u64)
        .await
        .unwrap();
    assert_eq!(
        (
            i.name.as_str(),
            i.size,
            i.sha256.as_str(),
            i.source.as_str()
        ),
        ("initrd.1", data.len() as u64, sha.as_str(), "uploaded")
    );
    assert_eq!(
        std::fs::read(s.images.path().join(&i.path)).unwrap(),
        data,
        "the file on the server is what was sent"
    );
    // The wrong hash: refused, nothing kept.
    let wrong = ImageUpload {
        sha256: "0".repeat(64),
        ..upload.clone()
    };
    let e = api
        .upload_image("initrd-2", &wrong, b"other".to_vec(), 5)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert_eq!(api.get_image("initrd.1").await.unwrap().id, i.id);
    assert_eq!(api.list_images().await.unwrap().len(), 2);
    let gone = api.delete_image("initrd.1").await.unwrap();
    assert_eq!(gone.id, i.id);
    let e = api.get_image("initrd.1").await.unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
}

/// The agent's transport: the same paths and error type over ureq.
#[cfg(feature = "blocking")]
#[tokio::test(flavor = "multi_thread")]
async fn the_blocking_client_reports_as_the_agent_does() {
    let s = Server::start().await;
    let m = s.enroll(3).await;
    s.api
        .machine_action(m.id, "inspect", &ActionRequest::default(), None)
        .await
        .unwrap();
    let base = s.api.base_url().to_owned();
    let token = s.token("ops", Role::Operator).await;
    let id = m.id.to_string();
    let (took, plan_err, bad) = tokio::task::spawn_blocking(move || {
        let agent = plinth_client::blocking::Client::new(&base, &token);
        let took = agent.report_inspection(&id, &report(3)).unwrap();
        let plan_err = agent.deploy_manifest(&id).unwrap_err();
        let bad = agent
            .report_inspection("not-a-machine", &report(3))
            .unwrap_err();
        (took, plan_err, bad)
    })
    .await
    .unwrap();
    assert_eq!(took.state, MachineState::Ready);
    assert_eq!(plan_err.status(), Some(409), "{plan_err}");
    assert!(!plan_err.is_transient());
    assert_eq!(bad.status(), Some(400), "{bad}");
    assert_eq!(
        s.api.get_machine(m.id).await.unwrap().facts["system"]["serial"],
        "SN3"
    );
}
