//! Virtual-media boots over real HTTP against a real PostgreSQL: `App::prepare_vmedia_boot`
//! and `GET|HEAD /boot/vmedia/{id}.iso` (the ISO read back with isoinfo: its grub.cfg carries
//! the iPXE script's ramdisk arguments and the static network; ranges, validators), the
//! agent token bound to the static address, and the 404 of every id that is not a live boot.

use std::path::Path;

use plinth_core::boot::{BootSettings, Templates};
use plinth_testkit::api::TestApi;
use plinth_testkit::mac;
use plinth_types::AgentMode;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PUBLIC: &str = "http://10.0.0.2:8080";

fn write(root: &Path, name: &str, len: usize, seed: u8) -> Vec<u8> {
    let b: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    let p = root.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, &b).unwrap();
    b
}

async fn post(t: &TestApi, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", t.base))
        .bearer_auth(&t.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(st.is_success(), "POST {path}: {st} {v}");
    v
}

async fn events(t: &TestApi, id: &str, kind: &str) -> Vec<Value> {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/machines/{id}/events", t.base))
        .bearer_auth(&t.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

fn isoinfo_extract(iso: &[u8], path: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("boot.iso");
    std::fs::write(&f, iso).unwrap();
    let out = std::process::Command::new("isoinfo")
        .args(["-x", path, "-i"])
        .arg(&f)
        .output()
        .expect("isoinfo (package genisoimage, crates/plinth-testkit/PACKAGES)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn a_virtual_media_boot_serves_its_iso_until_the_agent_reports() {
    let root = tempfile::tempdir().unwrap();
    let mut s = BootSettings::with_root(root.path().to_owned());
    s.public_url = Some(PUBLIC.into());
    write(root.path(), "plinth/vmedia-bios.img", 5000, 1);
    let efi = write(root.path(), "plinth/vmedia-efi.img", 4096, 2);
    let kernel = write(root.path(), "plinth/vmlinuz", 300_001, 3);
    let initrd = write(root.path(), "plinth/initrd.img", 200_000, 4);
    let t = TestApi::start_with(|app| app.with_boot(s, Templates::load(None).unwrap())).await;
    let http = reqwest::Client::new();

    post(&t, "/api/v1/subnets", json!({ "cidr": "10.41.0.0/24", "ranges": [], "router": "10.41.0.1", "dns_servers": ["10.41.0.53", "10.41.0.54"] })).await;
    let m = post(
        &t,
        "/api/v1/machines",
        json!({ "hostname": "vm1", "nics": [{ "mac": mac(1), "ipv4": "10.41.0.9", "pxe": true }] }),
    )
    .await;
    let id = m["id"].as_str().unwrap().to_owned();
    let uuid: uuid::Uuid = id.parse().unwrap();

    // Only a state that boots the ramdisk in that mode gets a boot.
    let e = t
        .app
        .prepare_vmedia_boot(uuid, AgentMode::Inspect)
        .await
        .unwrap_err();
    assert_eq!(e.code, "wrong_state", "{e:?}");
    post(
        &t,
        &format!("/api/v1/machines/{id}/actions/inspect"),
        json!({}),
    )
    .await;
    let e = t
        .app
        .prepare_vmedia_boot(uuid, AgentMode::Clean)
        .await
        .unwrap_err();
    assert_eq!(e.code, "wrong_state", "{e:?}");

    let first = t
        .app
        .prepare_vmedia_boot(uuid, AgentMode::Inspect)
        .await
        .unwrap();
    let boot = t
        .app
        .prepare_vmedia_boot(uuid, AgentMode::Inspect)
        .await
        .unwrap();
    assert!(
        !format!("{boot:?}").contains(&boot.url),
        "the URL is a secret: {boot:?}"
    );
    let net = boot.static_network.clone().expect("a static network");
    assert_eq!(net.address.to_string(), "10.41.0.9");
    assert_eq!(net.prefix, 24);
    let path = boot.url.strip_prefix(PUBLIC).unwrap().to_owned();
    let iso_id = path
        .strip_prefix("/boot/vmedia/")
        .and_then(|p| p.strip_suffix(".iso"))
        .unwrap();
    assert_eq!(iso_id.len(), 43, "256 bits");
    let get = |p: String| http.get(format!("{}{p}", t.base));

    // A newer boot replaced the first: its ISO is gone (404, as any unknown id).
    let old = first.url.strip_prefix(PUBLIC).unwrap().to_owned();
    assert_eq!(
        get(old).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    let r = get(path.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let len: u64 = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let iso = r.bytes().await.unwrap().to_vec();
    assert_eq!(iso.len() as u64, len);
    assert_eq!(len % 2048, 0);
    assert_eq!(isoinfo_extract(&iso, "/plinth/vmlinuz"), kernel);
    assert_eq!(isoinfo_extract(&iso, "/plinth/initrd"), initrd);
    assert!(
        iso.windows(efi.len()).any(|w| w == efi),
        "the ESP image is in the ISO"
    );
    let cfg = String::from_utf8(isoinfo_extract(&iso, "/plinth/grub.cfg")).unwrap();
    let linux = cfg
        .lines()
        .find(|l| l.starts_with("linux /plinth/vmlinuz "))
        .unwrap();
    let words: Vec<&str> = linux
        .split(' ')
        .skip(2)
        .map(|w| w.trim_matches('\''))
        .collect();
    // The iPXE script's ramdisk arguments, then the static network.
    let token = words
        .iter()
        .find_map(|w| w.strip_prefix("plinth.token="))
        .unwrap()
        .to_owned();
    let expected = plinth_core::boot::ramdisk_args(
        &t.app.boot_env().settings.console,
        "inspect",
        PUBLIC,
        uuid,
        &token,
        &t.app.boot_env().settings.kernel_args,
    );
    assert_eq!(
        words.join(" "),
        format!(
            "{expected} plinth.net={},10.41.0.9/24,10.41.0.1,10.41.0.53,10.41.0.54",
            mac(1)
        )
    );

    // Ranges and validators, GET and HEAD.
    let r = get(path.clone())
        .header("range", "bytes=100000-165535")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes 100000-165535/{len}")
    );
    assert_eq!(r.bytes().await.unwrap(), iso[100_000..165_536]);
    let r = get(path.clone())
        .header("range", format!("bytes={}-", len - 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), iso[len as usize - 10..]);
    let r = get(path.clone())
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = get(path.clone())
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = http.head(format!("{}{path}", t.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        len.to_string()
    );
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    // The same ISO again: the same bytes.
    assert_eq!(
        get(path.clone())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        iso
    );

    // Ids that are not a live boot's: 404 alike, nothing said.
    let mut other = iso_id.to_owned();
    other.replace_range(0..1, if other.starts_with('A') { "B" } else { "A" });
    for p in [
        format!("/boot/vmedia/{other}.iso"),
        format!("/boot/vmedia/{iso_id}"),
        format!("/boot/vmedia/{iso_id}.img"),
        "/boot/vmedia/x.iso".to_owned(),
        "/boot/vmedia/..%2F..%2Fetc%2Fpasswd.iso".to_owned(),
    ] {
        let r = get(p.clone()).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{p}");
        assert_eq!(r.text().await.unwrap(), "not found\n", "{p}");
    }

    // Every fetch counted; the first is an event; the URL is in no event.
    let fetched = events(&t, &id, "vmedia_fetched").await;
    assert_eq!(fetched.len(), 1, "{fetched:#?}");
    let prepared = events(&t, &id, "vmedia_prepared").await;
    assert_eq!(prepared.len(), 2, "{prepared:#?}");
    assert_eq!(prepared[1]["details"]["static_address"], "10.41.0.9/24");
    let all = serde_json::to_string(&events(&t, &id, "vmedia_prepared").await).unwrap();
    assert!(!all.contains(iso_id) && !all.contains(&token), "{all}");
    let (fetches, bound): (i32, Option<String>) = sqlx::query_as(
        "select v.fetches, host(t.bound_ip) from vmedia_boots v
         join agent_tokens t on t.machine_id = v.machine_id and t.mode = v.mode
              and t.secret_sha256 = v.token_sha256
         where t.used_at is null and t.revoked_at is null",
    )
    .fetch_one(&t.db.pool)
    .await
    .unwrap();
    // GET, three ranges, a conditional GET, HEAD, GET again.
    assert_eq!(fetches, 7);
    assert_eq!(bound.as_deref(), Some("10.41.0.9"));

    // The token is bound to the static address: from anywhere else it is refused.
    let report = json!({
        "cpu": { "model": "Xeon", "cores": 4, "threads": 8 },
        "memory_mib": 16384,
        "disks": [{ "name": "sda", "size_bytes": 480_000_000_000u64 }],
        "nics": [{ "name": "eth0", "mac": mac(1) }],
        "system": { "vendor": "QEMU", "product": "Standard PC", "serial": "S1", "uuid": "4c4c4544-0000-0000-0000-000000000000" },
        "firmware": "uefi",
        "arch": "x86_64",
    });
    let r = http
        .post(format!("{}/api/v1/machines/{id}/inspection", t.base))
        .bearer_auth(&token)
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert!(
        body.to_string()
            .contains("may not be used from this address"),
        "{body}"
    );
    // A state change revokes the token: the ISO is gone.
    post(
        &t,
        &format!("/api/v1/machines/{id}/actions/inspect_fail"),
        json!({ "reason": "test" }),
    )
    .await;
    assert_eq!(
        get(path.clone()).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

/// The boot method: a rack's for its machines, a machine's own over it, `null` back to the
/// rack's; shown in effect and as set; a word that is not one is a 400.
#[tokio::test]
async fn the_boot_method_of_machines_and_racks() {
    let t = TestApi::start().await;
    let http = reqwest::Client::new();
    let patch = |path: String, body: Value| {
        let req = http
            .patch(format!("{}{path}", t.base))
            .bearer_auth(&t.admin)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let st = r.status();
            (st, r.json::<Value>().await.unwrap())
        }
    };
    let rack = post(&t, "/api/v1/racks", json!({ "name": "r1", "height_u": 42 })).await;
    assert_eq!(rack["boot_method"], "network");
    let m = post(
        &t,
        "/api/v1/machines",
        json!({ "rack": "r1", "rack_unit": 1, "nics": [{ "mac": mac(1) }] }),
    )
    .await;
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (&m["boot_method"], &m["boot_method_setting"]),
        (&json!("network"), &Value::Null)
    );

    let (st, r) = patch(
        "/api/v1/racks/r1".into(),
        json!({ "boot_method": "virtual_media" }),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["boot_method"], "virtual_media");
    let get = || {
        let req = http
            .get(format!("{}/api/v1/machines/{id}", t.base))
            .bearer_auth(&t.admin);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let m = get().await;
    assert_eq!(
        (&m["boot_method"], &m["boot_method_setting"]),
        (&json!("virtual_media"), &Value::Null)
    );

    let (st, m) = patch(
        format!("/api/v1/machines/{id}"),
        json!({ "boot_method": "network" }),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    assert_eq!(
        (&m["boot_method"], &m["boot_method_setting"]),
        (&json!("network"), &json!("network"))
    );
    let (_, m) = patch(
        format!("/api/v1/machines/{id}"),
        json!({ "boot_method": null }),
    )
    .await;
    assert_eq!(
        (&m["boot_method"], &m["boot_method_setting"]),
        (&json!("virtual_media"), &Value::Null)
    );
    // Another field's patch leaves it alone.
    let (_, m) = patch(
        format!("/api/v1/machines/{id}"),
        json!({ "boot_method": "virtual_media" }),
    )
    .await;
    let (_, m2) = patch(format!("/api/v1/machines/{id}"), json!({ "tags": ["a"] })).await;
    assert_eq!(m2["boot_method_setting"], m["boot_method_setting"]);

    for body in [json!({ "boot_method": "usb" }), json!({ "boot_method": 1 })] {
        let (st, e) = patch(format!("/api/v1/machines/{id}"), body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {e}");
        let (st, e) = patch("/api/v1/racks/r1".into(), body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {e}");
    }
    assert_eq!(get().await["boot_method_setting"], "virtual_media");
}
