//! The attacks of issue 16 against a live plinth, each with its refusal and its event: `plinth
//! serve` hands out real DHCP leases on a lab network (namespaces joined by a bridge); a victim
//! machine and an attacker on the same segment talk to it with curl and the real agent, from the
//! addresses plinth leased them.
//!
//! - The attacker asks for the victim's boot script: no token, a `boot_spoof_suspected` event;
//!   the victim's own boot goes on and its agent's inspection completes.
//! - A victim's token replayed from the attacker's address (an inspection with forged facts, a
//!   clean report that wipes nothing): 403 and `agent_token_refused` with the attacker's address.
//! - A clean report from the right address that leaves a disk out: `clean_failed`, naming it.
//! - Forcing an agent's outcome without being an admin: 403.
//! - The victim's tenant data (its cloud-init user data) asked for by the attacker with the
//!   instance id: 404 and `metadata_refused`; the victim gets it.

use std::path::Path;
use std::time::Duration;

use plinth_core::Principal;
use plinth_core::boot::{BootSettings, Templates};
use plinth_testkit::dhcp_clients::{self, Client, Options};
use plinth_testkit::netns::{Lab, Ns};
use plinth_types::api::*;
use plinth_types::{MachineState, Role};
use serde_json::{Value, json};

use crate::support::env::Env;

const SERVER: &str = "10.87.0.2";
const VICTIM_MAC: &str = "52:54:00:87:00:01";
const ATTACKER_MAC: &str = "52:54:00:87:00:66";
const MIB: usize = 1 << 20;

/// `curl` in a namespace: (HTTP status, body).
fn curl(lab: &Lab, ns: &Ns, args: &[&str]) -> (u16, String) {
    let mut all = vec!["-s", "-m", "20", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = lab.run(ns, "curl", &all).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn api(path: &str) -> String {
    format!("http://{SERVER}:8080{path}")
}

/// The script of `mac` as iPXE in `ns` asks for it.
fn script(lab: &Lab, ns: &Ns, mac: &str) -> String {
    let (code, body) = curl(
        lab,
        ns,
        &["-A", "iPXE/1.21.1", &api(&format!("/boot/ipxe?mac={mac}"))],
    );
    assert_eq!(code, 200, "{body}");
    body
}

fn token_of(script: &str) -> Option<String> {
    let i = script.find("plinth.token=")? + "plinth.token=".len();
    Some(script[i..].split_whitespace().next()?.to_owned())
}

/// A POST with a bearer token from `ns`: (status, body).
fn post(lab: &Lab, ns: &Ns, token: &str, path: &str, body: &Value) -> (u16, String) {
    curl(
        lab,
        ns,
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "--data",
            &body.to_string(),
            &api(path),
        ],
    )
}

fn events(env: &Env, id: uuid::Uuid, kind: &str) -> Vec<Event> {
    env.rt
        .block_on(
            env.app
                .events(&Principal::system(), Some(id), Default::default()),
        )
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

fn state(env: &Env, id: uuid::Uuid) -> MachineState {
    env.rt
        .block_on(env.app.get_machine(&Principal::system(), id))
        .unwrap()
        .state
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// The victim's hardware as its ramdisk sees it (under `--root`), with two disks (`--dev`).
fn victim_machine(root: &Path, dev: &Path) {
    write(
        root,
        "proc/cpuinfo",
        "processor : 0\nmodel name : QEMU Virtual CPU\nphysical id : 0\ncore id : 0\n\n",
    );
    write(root, "proc/meminfo", "MemTotal: 1999000 kB\n");
    for (name, mib) in [("vda", 8usize), ("vdb", 4)] {
        write(
            root,
            &format!("sys/block/{name}/size"),
            &format!("{}\n", mib * 2048),
        );
        write(
            root,
            &format!("sys/block/{name}/serial"),
            &format!("victim-{name}\n"),
        );
        std::fs::write(dev.join(name), vec![0xa5u8; mib * MIB]).unwrap();
    }
    write(
        root,
        "sys/class/net/eth0/address",
        &format!("{VICTIM_MAC}\n"),
    );
    write(root, "sys/class/net/eth0/carrier", "1\n");
    write(root, "sys/class/dmi/id/sys_vendor", "QEMU\n");
    write(root, "sys/class/dmi/id/product_name", "victim\n");
    write(root, "sys/class/dmi/id/product_serial", "VICTIM-1\n");
    write(
        root,
        "sys/class/dmi/id/product_uuid",
        "0a0b0c0d-0000-4000-8000-000000008701\n",
    );
}

/// The kernel command line of a ramdisk script.
fn kernel_line(script: &str) -> String {
    script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line: {script}"))
        .trim_start_matches("kernel ")
        .split(" || ")
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn the_attacks_of_issue_16_are_refused_and_recorded() {
    let mut env = Env::new();
    let mut lab = Lab::new().unwrap();
    let root = lab.path("images");
    std::fs::create_dir_all(root.join("plinth")).unwrap();
    env.app = env.app.clone().with_boot(
        BootSettings::with_root(root.clone()),
        Templates::load(None).unwrap(),
    );
    env.subnet("10.87.0.0/24", "10.87.0.100", "10.87.0.200", None, &[]);

    // srv ── lan (bridge) ── victim, attacker
    let srv = lab.namespace("srv").unwrap();
    let lan = lab.namespace("lan").unwrap();
    let victim = lab.namespace("victim").unwrap();
    let attacker = lab.namespace("attacker").unwrap();
    let (s, l0) = lab.link(&srv, &lan).unwrap();
    let (v, l1) = lab.link(&victim, &lan).unwrap();
    let (a, l2) = lab.link(&attacker, &lan).unwrap();
    lab.bridge(&lan, &[&l0, &l1, &l2]).unwrap();
    lab.addr(&srv, &s, &format!("{SERVER}/24")).unwrap();
    let server = crate::support::lab::plinth(&mut lab, &srv, &s, &env.db.url, SERVER, &root, &[]);

    let admin = Principal::system();
    let m = env
        .rt
        .block_on(
            env.app.enroll_machine(
                &admin,
                serde_json::from_value(
                    json!({ "hostname": "victim", "nics": [{ "mac": VICTIM_MAC }] }),
                )
                .unwrap(),
            ),
        )
        .unwrap();
    let act = |verb: &str| {
        env.rt
            .block_on(env.app.act(
                &admin,
                m.id,
                plinth_core::lifecycle::Action {
                    verb: verb.parse().unwrap(),
                    expected_version: None,
                    reason: None,
                },
            ))
            .unwrap_or_else(|e| panic!("{verb}: {e:?}"))
    };
    act("inspect");

    // Both get their addresses from plinth.
    let lease_of = |lab: &mut Lab, ns: &Ns, iface: &str, mac: &str| {
        dhcp_clients::obtain_with(
            lab,
            ns,
            iface,
            Client::Udhcpc,
            &Options {
                mac: Some(mac.into()),
                timeout: Duration::from_secs(20),
                extra_args: vec![],
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", server.log_text()))
        .ip
        .to_string()
    };
    let victim_ip = lease_of(&mut lab, &victim, &v, VICTIM_MAC);
    let attacker_ip = lease_of(&mut lab, &attacker, &a, ATTACKER_MAC);
    assert_ne!(victim_ip, attacker_ip);

    // 1. The attacker asks for the victim's script: no token, and the machine says so.
    let stolen = script(&lab, &attacker, VICTIM_MAC);
    assert!(token_of(&stolen).is_none(), "{stolen}");
    assert!(stolen.contains("bound to another address"), "{stolen}");
    let spoof = events(&env, m.id, "boot_spoof_suspected");
    assert_eq!(spoof.len(), 1, "{spoof:?}");
    assert_eq!(spoof[0].details["remote"], attacker_ip.as_str());
    assert_eq!(spoof[0].details["accepted"], json!([victim_ip]));
    // The victim's own script has its token; its agent inspects from its address: ready.
    let own = script(&lab, &victim, VICTIM_MAC);
    let inspect_token = token_of(&own).expect("the victim's script has a token");

    // 2. That token replayed from the attacker's address, with forged facts: refused.
    let forged = json!({
        "cpu": { "model": "forged", "cores": 512, "threads": 1024 }, "memory_mib": 99999999,
        "disks": [], "nics": [{ "name": "eth0", "mac": VICTIM_MAC }],
        "system": { "vendor": "x", "product": "x", "serial": "x", "uuid": "x" },
        "firmware": "uefi", "arch": "x86_64"
    });
    let (code, body) = post(
        &lab,
        &attacker,
        &inspect_token,
        &format!("/api/v1/machines/{}/inspection", m.id),
        &forged,
    );
    assert_eq!(code, 403, "{body}");
    let refused = events(&env, m.id, "agent_token_refused");
    assert!(
        refused
            .iter()
            .any(|e| e.details["remote"] == attacker_ip.as_str()),
        "{refused:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (froot, fdev) = (dir.path().join("root"), dir.path().join("dev"));
    std::fs::create_dir_all(&fdev).unwrap();
    victim_machine(&froot, &fdev);
    let agent = Path::new(crate::support::BIN).with_file_name("plinth-agent");
    let run_agent = |lab: &Lab, script: &str| {
        let cmdline = froot.join("cmdline");
        std::fs::write(&cmdline, kernel_line(script)).unwrap();
        let out = lab
            .run(
                &victim,
                agent.to_str().unwrap(),
                &[
                    "--root",
                    froot.to_str().unwrap(),
                    "--dev",
                    fdev.to_str().unwrap(),
                    "--cmdline",
                    cmdline.to_str().unwrap(),
                ],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let out = run_agent(&lab, &own);
    assert!(out.contains("result=ok"), "{out}\n{}", server.log_text());
    assert_eq!(state(&env, m.id), MachineState::Ready);
    let facts = env
        .rt
        .block_on(env.app.get_machine(&admin, m.id))
        .unwrap()
        .facts;
    assert_eq!(
        facts["cpu"]["model"], "QEMU Virtual CPU",
        "not the forged facts"
    );

    // 3. Cleaning: the clean token replayed from the attacker's address to claim a wipe that
    // did not happen: refused. From the victim's address, a report that leaves vdb out:
    // clean_failed, naming it.
    let alloc = env
        .rt
        .block_on(env.app.allocate(&admin, AllocationRequest::default()))
        .unwrap();
    env.rt
        .block_on(env.app.release_allocation(&admin, alloc.id))
        .unwrap();
    let clean_script = script(&lab, &victim, VICTIM_MAC);
    let clean_token = token_of(&clean_script).unwrap();
    let no_wipe = json!({ "result": "complete", "disks": [] });
    let clean_path = format!("/api/v1/machines/{}/clean", m.id);
    let (code, body) = post(&lab, &attacker, &clean_token, &clean_path, &no_wipe);
    assert_eq!(code, 403, "{body}");
    assert_eq!(state(&env, m.id), MachineState::Cleaning);
    let half = json!({ "result": "complete", "disks": [
        { "name": "vda", "serial": "victim-vda", "size_bytes": 8 * MIB, "zeroed_bytes": 2 * MIB,
          "full": false, "method": "quick", "error": null }
    ]});
    let (code, body) = post(&lab, &victim, &clean_token, &clean_path, &half);
    assert_eq!(code, 200, "{body}");
    let after: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(after["state"], "clean_failed", "{after}");
    let reason = after["state_reason"].as_str().unwrap();
    assert!(
        reason.contains("vdb") && reason.contains("missing"),
        "{reason}"
    );

    // 4. Forcing the outcome instead: not for an operator (nor a client); an admin may, with a
    // reason, and it is recorded.
    let operator = env
        .rt
        .block_on(env.app.create_token(&admin, "otto", Role::Operator))
        .unwrap()
        .secret;
    act("clean");
    let (code, body) = post(
        &lab,
        &victim,
        &operator,
        &format!("/api/v1/machines/{}/actions/clean_complete", m.id),
        &json!({ "force": true, "reason": "trust me" }),
    );
    assert_eq!(code, 403, "{body}");
    let (code, body) = post(
        &lab,
        &victim,
        &operator,
        &format!("/api/v1/machines/{}/actions/clean_complete", m.id),
        &json!({}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("agent_outcome"), "{body}");
    // The clean agent does it properly: ready.
    let out = run_agent(&lab, &script(&lab, &victim, VICTIM_MAC));
    assert!(out.contains("result=ok"), "{out}");
    assert_eq!(state(&env, m.id), MachineState::Ready);

    // 5. The tenant's data: deployed with user data; the attacker with the instance id gets a
    // 404 and the machine an event; the machine itself gets it.
    std::fs::write(root.join("disk.raw"), vec![0u8; 1 << 20]).unwrap();
    env.rt
        .block_on(env.app.register_image(
            &admin,
            ImageRegister {
                name: "disk".into(),
                kind: ImageKind::DiskImage,
                arch: None,
                path: "disk.raw".into(),
                sha256: None,
                firmware: Some("both".into()),
            },
        ))
        .unwrap();
    let tenant = env
        .rt
        .block_on(env.app.create_token(&admin, "tenant", Role::Client))
        .unwrap()
        .secret;
    let tenant = env.rt.block_on(env.app.authenticate(&tenant)).unwrap();
    let alloc = env
        .rt
        .block_on(env.app.allocate(&tenant, AllocationRequest::default()))
        .unwrap();
    assert_eq!(alloc.machines[0].id, m.id);
    env.rt
        .block_on(env.app.deploy(
            &tenant,
            m.id,
            serde_json::from_value(json!({ "image": "disk", "user_data": "#cloud-config\npassword: tenant-secret\n" }))
                .unwrap(),
            None,
        ))
        .unwrap();
    let instance = env
        .rt
        .block_on(env.app.deployment(&tenant, m.id))
        .unwrap()
        .unwrap()
        .instance_id
        .unwrap();
    // The machine boots its deploy ramdisk (its token bound to its address).
    assert!(token_of(&script(&lab, &victim, VICTIM_MAC)).is_some());
    let user_data = api(&format!("/metadata/{instance}/user-data"));
    let (code, body) = curl(&lab, &attacker, &[&user_data]);
    assert_eq!(code, 404, "{body}");
    assert!(!body.contains("tenant-secret"));
    let refused = events(&env, m.id, "metadata_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].details["remote"], attacker_ip.as_str());
    let (code, body) = curl(&lab, &victim, &[&user_data]);
    assert_eq!(
        (code, body.as_str()),
        (200, "#cloud-config\npassword: tenant-secret\n")
    );
    // ... and the deploy manifest (with the same data) is not the attacker's either.
    let manifest = format!("/api/v1/machines/{}/deployment/manifest", m.id);
    let deploy_token = token_of(&script(&lab, &victim, VICTIM_MAC)).unwrap();
    let (code, body) = curl(
        &lab,
        &attacker,
        &[
            "-H",
            &format!("Authorization: Bearer {deploy_token}"),
            &api(&manifest),
        ],
    );
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("tenant-secret"));
}
