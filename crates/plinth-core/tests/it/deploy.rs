//! `deploy` against a real PostgreSQL and a real images root: every refusal happens before
//! anything moves (the machine stays allocated, no deployment is recorded); an accepted deploy
//! records the disk chosen from the facts and moves the machine to deploying; release forgets
//! the deployment, user data and keys included.

use plinth_core::boot::{BootSettings, Templates};
use plinth_core::lifecycle::Action;
use plinth_core::{App, Principal};
use plinth_testkit::TestDb;
use plinth_types::api::*;
use plinth_types::{ErrorKind, MachineState, Role, Verb};
use uuid::Uuid;

struct World {
    app: App,
    db: TestDb,
    root: tempfile::TempDir,
}

fn admin() -> Principal {
    Principal {
        token_id: None,
        name: "test".into(),
        role: Role::Admin,
    }
}

async fn world() -> World {
    let db = TestDb::new().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let app = db.app().with_boot(
        BootSettings::with_root(root.path().to_owned()),
        Templates::load(None).unwrap(),
    );
    World { app, db, root }
}

impl World {
    async fn image(&self, name: &str, kind: ImageKind, bytes: usize) {
        std::fs::write(self.root.path().join(name), vec![7u8; bytes]).unwrap();
        self.app
            .register_image(
                &admin(),
                ImageRegister {
                    name: name.into(),
                    kind,
                    arch: Some("x86_64".into()),
                    path: name.into(),
                    sha256: None,
                    firmware: None,
                },
            )
            .await
            .unwrap();
    }

    /// An inspected, allocated machine with the given disks (name, GiB, serial).
    async fn allocated(&self, disks: &[(&str, u64, &str)], firmware: &str) -> Uuid {
        let m = self
            .app
            .enroll_machine(
                &admin(),
                MachineCreate {
                    hostname: Some("node-1".into()),
                    rack: None,
                    rack_unit: None,
                    size_u: None,
                    pool: None,
                    tags: None,
                    arch: Some(Arch::X86_64),
                    nics: vec![NicSpec {
                        mac: "52:54:00:de:00:01".parse().unwrap(),
                        ipv4: None,
                        pxe: None,
                    }],
                    bmc: None,
                },
            )
            .await
            .unwrap();
        self.app
            .act(
                &admin(),
                m.id,
                Action {
                    verb: Verb::Inspect,
                    expected_version: None,
                    reason: None,
                },
            )
            .await
            .unwrap();
        let report: InspectionReport = serde_json::from_value(serde_json::json!({
            "cpu": { "model": "x", "cores": 4, "threads": 8 },
            "memory_mib": 8192,
            "disks": disks.iter().map(|(n, gib, s)| serde_json::json!({
                "name": n, "size_bytes": gib << 30, "model": null, "serial": s, "rotational": false
            })).collect::<Vec<_>>(),
            "nics": [{ "name": "eth0", "mac": "52:54:00:de:00:01", "speed_mbps": 1000, "link": true }],
            "system": { "vendor": "v", "product": "p", "serial": "s", "uuid": "u" },
            "firmware": firmware,
            "arch": "x86_64"
        }))
        .unwrap();
        self.app
            .submit_inspection(&admin(), m.id, report)
            .await
            .unwrap();
        self.app
            .allocate(
                &admin(),
                AllocationRequest {
                    count: Some(1),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        m.id
    }

    async fn deployments(&self) -> i64 {
        sqlx::query_scalar("select count(*) from deployments")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

fn req(image: &str) -> DeployRequest {
    DeployRequest {
        image: image.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_deploys_are_refused_before_anything_moves() {
    let w = world().await;
    w.image("debian.raw", ImageKind::DiskImage, 4096).await;
    w.image("vmlinuz-x", ImageKind::Kernel, 100).await;
    let id = w.allocated(&[("sda", 100, "S1")], "uefi").await;
    let cases: Vec<(DeployRequest, &str)> = vec![
        (req(""), "missing_image"),
        (req("nope"), "unknown_image"),
        (req("vmlinuz-x"), "not_a_disk_image"),
        (
            DeployRequest {
                root_device: Some(RootDeviceHint {
                    serial: Some("NOPE".into()),
                    ..Default::default()
                }),
                ..req("debian.raw")
            },
            "no_matching_disk",
        ),
        (
            DeployRequest {
                hostname: Some("Not_A_Host!".into()),
                ..req("debian.raw")
            },
            "invalid_hostname",
        ),
        (
            DeployRequest {
                ssh_authorized_keys: Some(vec!["not a key".into()]),
                ..req("debian.raw")
            },
            "invalid_ssh_key",
        ),
        (
            DeployRequest {
                user_data: Some("x".repeat(70_000)),
                ..req("debian.raw")
            },
            "invalid_cloud_init",
        ),
    ];
    for (r, code) in cases {
        let e = w.app.deploy(&admin(), id, r, None).await.unwrap_err();
        assert_eq!(e.code, code, "{e:?}");
    }
    // The image's file gone from the images root: unusable.
    std::fs::remove_file(w.root.path().join("debian.raw")).unwrap();
    let e = w
        .app
        .deploy(&admin(), id, req("debian.raw"), None)
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::Conflict, "image_unavailable"));
    // Firmware: a BIOS-only image on a UEFI machine.
    w.image("bios-only.raw", ImageKind::DiskImage, 4096).await;
    sqlx::query("update images set firmware = 'bios' where name = 'bios-only.raw'")
        .execute(&w.db.pool)
        .await
        .unwrap();
    let e = w
        .app
        .deploy(&admin(), id, req("bios-only.raw"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "image_firmware_mismatch");

    let m = w.app.get_machine(&admin(), id).await.unwrap();
    assert_eq!(m.state, MachineState::Allocated, "nothing moved");
    assert_eq!(w.deployments().await, 0);
}

#[tokio::test]
async fn a_deploy_records_its_disk_and_release_forgets_it() {
    let w = world().await;
    w.image("debian.raw", ImageKind::DiskImage, 4096).await;
    let id = w
        .allocated(
            &[
                ("nvme0n1", 960, "N1"),
                ("sda", 240, "S1"),
                ("sdb", 480, "S2"),
            ],
            "uefi",
        )
        .await;
    let m = w
        .app
        .deploy(
            &admin(),
            id,
            DeployRequest {
                image: "debian.raw".into(),
                root_device: Some(RootDeviceHint {
                    size: Some(DiskSize::Largest),
                    ..Default::default()
                }),
                hostname: Some("web-01".into()),
                user_data: Some("#cloud-config\npackages: [nginx]\n".into()),
                ssh_authorized_keys: Some(vec![
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me@laptop".into(),
                ]),
                network_config: None,
                reason: Some("web tier".into()),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(m.state, MachineState::Deploying);
    let d = w
        .app
        .deployment(&admin(), id)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(d.image, "debian.raw");
    assert_eq!(d.root_device, "nvme0n1", "the largest");
    assert_eq!(d.hostname.as_deref(), Some("web-01"));
    assert!(d.has_user_data);
    assert_eq!(d.ssh_authorized_keys, 1);
    // Deploying again from deploying: the state says no, the deployment is kept.
    let e = w
        .app
        .deploy(&admin(), id, req("debian.raw"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_transition");
    // An image in use stays in the catalog.
    let e = w
        .app
        .delete_image(&admin(), "debian.raw")
        .await
        .unwrap_err();
    assert_eq!(e.code, "image_in_use", "{e:?}");

    // The deploy fails (the agent's report) and the machine is released → cleaning: the
    // deployment, user data and keys are gone.
    for verb in [Verb::DeployFail, Verb::Release] {
        w.app
            .act(
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
        let kept = w.app.deployment(&admin(), id).await.unwrap().is_some();
        assert_eq!(kept, verb == Verb::DeployFail, "{verb}");
    }
    assert!(w.app.deployment(&admin(), id).await.unwrap().is_none());
    assert_eq!(w.deployments().await, 0);
    let leftover: i64 = sqlx::query_scalar(
        "select count(*) from events where details::text like '%nginx%' or details::text like '%AAAAC3Nz%'",
    )
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(leftover, 0, "user data and keys never went into events");
}

#[tokio::test]
async fn a_client_deploys_only_its_own_machines() {
    let w = world().await;
    w.image("debian.raw", ImageKind::DiskImage, 4096).await;
    let id = w.allocated(&[("sda", 100, "S1")], "bios").await;
    let stranger = Principal {
        token_id: Some(Uuid::new_v4()),
        name: "someone".into(),
        role: Role::Client,
    };
    let e = w
        .app
        .deploy(&stranger, id, req("debian.raw"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "not theirs: not even seen");
    let viewer = Principal {
        token_id: None,
        name: "v".into(),
        role: Role::Viewer,
    };
    let e = w
        .app
        .deploy(&viewer, id, req("debian.raw"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert_eq!(w.deployments().await, 0);
}

#[tokio::test]
async fn disk_images_record_their_firmware_and_written_size() {
    let w = world().await;
    let raw = vec![0x5au8; 3 << 20];
    std::fs::write(
        w.root.path().join("os.raw.zst"),
        zstd::encode_all(&raw[..], 3).unwrap(),
    )
    .unwrap();
    let reg = |name: &str, path: &str, firmware: Option<&str>| ImageRegister {
        name: name.into(),
        kind: ImageKind::DiskImage,
        arch: None,
        path: path.into(),
        sha256: None,
        firmware: firmware.map(Into::into),
    };
    let img = w
        .app
        .register_image(&admin(), reg("os", "os.raw.zst", Some("uefi")))
        .await
        .unwrap();
    assert_eq!(img.raw_size, Some(3 << 20), "the decompressed size");
    assert!(img.size < 3 << 20, "the file is compressed");
    assert_eq!(img.firmware.as_deref(), Some("uefi"));

    // A file that claims to be zstd and is not, a firmware that is not one: refused.
    std::fs::write(w.root.path().join("bad.raw.zst"), b"not zstd at all").unwrap();
    let e = w
        .app
        .register_image(&admin(), reg("bad", "bad.raw.zst", None))
        .await
        .unwrap_err();
    assert_eq!(e.code, "corrupt_image");
    let e = w
        .app
        .register_image(&admin(), reg("os2", "os.raw.zst", Some("coreboot")))
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_firmware");
    let names: Vec<String> = w
        .app
        .list_images(&admin())
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["os"], "nothing recorded for the refused ones");

    // The written size decides which disk holds it: a 2 MiB disk is too small.
    let id = w.allocated(&[("tiny", 0, "T1")], "uefi").await;
    let e = w
        .app
        .deploy(&admin(), id, req("os"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "disk_too_small");
}

/// The SHA-256 of what a deploy writes: of the file itself when it is raw, of the decompressed
/// bytes when it is gzip or zstd; the deploy manifest carries it to the agent.
#[tokio::test]
async fn disk_images_record_the_sha256_of_what_is_written() {
    use sha2::Digest;
    use std::io::Write;
    let w = world().await;
    // Not all zeros, not all one byte: a hash of the wrong bytes cannot match by chance.
    let raw: Vec<u8> = (0..(2u32 << 20) + 517)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = hex::encode(sha2::Sha256::digest(&raw));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let files: [(&str, Vec<u8>); 3] = [
        ("os.raw", raw.clone()),
        ("os.raw.gz", gz.finish().unwrap()),
        ("os.raw.zst", zstd::encode_all(&raw[..], 3).unwrap()),
    ];
    for (i, (path, bytes)) in files.iter().enumerate() {
        std::fs::write(w.root.path().join(path), bytes).unwrap();
        let img = w
            .app
            .register_image(
                &admin(),
                ImageRegister {
                    name: format!("os{i}"),
                    kind: ImageKind::DiskImage,
                    arch: None,
                    path: (*path).into(),
                    sha256: None,
                    firmware: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(img.raw_sha256.as_deref(), Some(want.as_str()), "{path}");
        assert_eq!(img.raw_size, Some(raw.len() as u64), "{path}");
        assert_eq!(
            img.sha256,
            hex::encode(sha2::Sha256::digest(bytes)),
            "{path}"
        );
        let again = w.app.get_image(&admin(), &img.name).await.unwrap();
        assert_eq!(again.raw_sha256, img.raw_sha256, "{path}: stored");
    }

    // The deploy manifest hands it to the agent.
    let id = w.allocated(&[("sda", 100, "S1")], "bios").await;
    w.app.deploy(&admin(), id, req("os1"), None).await.unwrap();
    let operator = w
        .app
        .create_token(&Principal::system(), "ops", Role::Admin)
        .await
        .unwrap()
        .secret;
    let m = w.app.deploy_manifest(&operator, None, id).await.unwrap();
    assert_eq!(m.raw_sha256.as_deref(), Some(want.as_str()));
    assert_eq!(m.raw_size, Some(raw.len() as u64));

    // A qcow2 is never registered in place, whether its name or its content says so.
    std::fs::write(w.root.path().join("cloud.qcow2"), &raw).unwrap();
    let mut qcow2 = b"QFI\xfb".to_vec();
    qcow2.extend_from_slice(&raw[..4096]);
    std::fs::write(w.root.path().join("cloud.raw"), &qcow2).unwrap();
    for path in ["cloud.qcow2", "cloud.raw"] {
        let e = w
            .app
            .register_image(
                &admin(),
                ImageRegister {
                    name: "cloud".into(),
                    kind: ImageKind::DiskImage,
                    arch: None,
                    path: path.into(),
                    sha256: None,
                    firmware: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, "unsupported_image", "{path}: {e}");
        assert!(e.message.contains("upload it"), "{path}: {e}");
    }
    assert_eq!(
        std::fs::read(w.root.path().join("cloud.raw")).unwrap(),
        qcow2,
        "untouched"
    );
    assert!(w.app.get_image(&admin(), "cloud").await.is_err());
}

#[tokio::test]
async fn a_deploy_without_progress_fails_after_its_timeout_and_progress_keeps_it_alive() {
    let w = world().await;
    w.image("debian.raw", ImageKind::DiskImage, 4096).await;
    let quiet = w.allocated(&[("sda", 100, "S1")], "bios").await;
    w.app
        .deploy(&admin(), quiet, req("debian.raw"), None)
        .await
        .unwrap();
    let t = plinth_core::lifecycle::StuckTimeouts {
        deploy: std::time::Duration::from_secs(600),
        ..Default::default()
    };
    assert_eq!(w.app.fail_stuck(&t).await.unwrap(), 0, "not yet");
    // Eleven minutes without a sign of life.
    sqlx::query(
        "update machines set state_changed_at = now() - interval '11 minutes',
             updated_at = now() - interval '11 minutes' where id = $1",
    )
    .bind(quiet)
    .execute(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(w.app.fail_stuck(&t).await.unwrap(), 1);
    let m = w.app.get_machine(&admin(), quiet).await.unwrap();
    assert_eq!(m.state, MachineState::DeployFailed);
    assert!(
        m.state_reason
            .unwrap()
            .contains("no deploy progress report within 600 s"),
        "the reason says why"
    );
    // Deploying for long but reporting progress (updated_at moves): left alone.
    sqlx::query(
        "update machines set state = 'deploying', state_changed_at = now() - interval '2 hours',
             updated_at = now() where id = $1",
    )
    .bind(quiet)
    .execute(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(w.app.fail_stuck(&t).await.unwrap(), 0);
}
