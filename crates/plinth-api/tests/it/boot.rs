//! The boot endpoints and the image catalog over real HTTP, against a real PostgreSQL: the
//! iPXE script of every lifecycle state (golden files), agent tokens, boot events and the
//! boot-loop guard, bad input, template errors, image files with ranges and validators, and
//! image registration and upload.

use std::path::{Path, PathBuf};

use plinth_core::boot::{BootSettings, Templates};
use plinth_core::{App, Principal};
use plinth_testkit::api::{TestApi, token};
use plinth_testkit::{TestDb, mac};
use plinth_types::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;

const PUBLIC: &str = "http://10.0.0.2:8080";

struct Server {
    base: String,
    http: reqwest::Client,
    app: App,
    db: TestDb,
    admin: String,
    root: tempfile::TempDir,
}

fn settings(root: &Path) -> BootSettings {
    let mut s = BootSettings::with_root(root.to_owned());
    s.public_url = Some(PUBLIC.into());
    s
}

impl Server {
    async fn start() -> Server {
        Server::start_with(|_| {}, None).await
    }

    async fn start_with(tune: impl FnOnce(&mut BootSettings), templates: Option<&Path>) -> Server {
        let root = tempfile::tempdir().unwrap();
        let mut s = settings(root.path());
        tune(&mut s);
        let t =
            TestApi::start_with(|app| app.with_boot(s, Templates::load(templates).unwrap())).await;
        Server {
            base: t.base,
            http: reqwest::Client::new(),
            app: t.app,
            db: t.db,
            admin: t.admin,
            root,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!(s.is_success(), "POST {path}: {s} {v}");
        v
    }

    async fn act(&self, id: &str, verb: &str) {
        let body = if verb == "deploy" {
            json!({ "image": self.disk_image().await })
        } else if verb.ends_with("_complete") {
            // An agent's outcome, without the agent: forced by the admin.
            json!({ "force": true, "reason": "test: no agent" })
        } else {
            json!({})
        };
        self.post(&format!("/api/v1/machines/{id}/actions/{verb}"), body)
            .await;
    }

    /// A small disk image in the catalog, for deploys (registered on first use).
    async fn disk_image(&self) -> &'static str {
        const NAME: &str = "test-disk.raw";
        let (status, _) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/images/{NAME}"),
                None,
            )
            .await;
        if status == reqwest::StatusCode::NOT_FOUND {
            std::fs::write(self.root.path().join(NAME), vec![0u8; 4096]).unwrap();
            self.post(
                "/api/v1/images",
                json!({ "name": NAME, "kind": "disk-image", "path": NAME }),
            )
            .await;
        }
        NAME
    }

    async fn enroll(&self, n: u32) -> String {
        let m = self
            .post(
                "/api/v1/machines",
                json!({ "hostname": format!("node{n}"), "pool": format!("p{n}"), "nics": [{ "mac": mac(n) }] }),
            )
            .await;
        m["id"].as_str().unwrap().to_owned()
    }

    /// GET /boot/ipxe as iPXE would (or not), returning status and body.
    async fn script(&self, query: &str, ipxe: bool) -> (StatusCode, String) {
        let mut req = self.http.get(format!("{}/boot/ipxe{query}", self.base));
        if ipxe {
            req = req.header("user-agent", "iPXE/1.20.1+ (g4bd064de)");
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    async fn events(&self, id: &str, kind: &str) -> Vec<Value> {
        let (s, page) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/machines/{id}/events"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    }
}

fn report(n: u32) -> Value {
    json!({
        "cpu": { "model": "Xeon", "cores": 4, "threads": 8 },
        "memory_mib": 16384,
        "disks": [{ "name": "sda", "size_bytes": 480_000_000_000u64 }],
        "nics": [{ "name": "eth0", "mac": mac(n) }],
        "system": { "vendor": "QEMU", "product": "Standard PC", "serial": format!("S{n}"), "uuid": "4c4c4544-0000-0000-0000-000000000000" },
        "firmware": "uefi",
        "arch": "x86_64",
    })
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/boot")
}

/// Compares with the golden file, or writes it when `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

/// The script with the parts that differ per run (ids, tokens) replaced by placeholders.
fn normalize(script: &str, id: &str) -> String {
    let mut out = script.replace(id, "<machine-id>");
    while let Some(i) = out.find("plinth.token=plinth_") {
        let start = i + "plinth.token=".len();
        let end = out[start..]
            .find(|c: char| c.is_whitespace())
            .map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "<token>");
    }
    out
}

fn token_of(script: &str) -> Option<String> {
    let i = script.find("plinth.token=")? + "plinth.token=".len();
    Some(script[i..].split_whitespace().next()?.to_owned())
}

#[tokio::test]
async fn every_state_gets_its_script() {
    let s = Server::start().await;
    // Machines walked through the lifecycle by the API, one per state of interest.
    let mut machines: Vec<(&str, String, u32)> = Vec::new();
    let enrolled = s.enroll(1).await;
    machines.push(("enrolled", enrolled, 1));
    let inspecting = s.enroll(2).await;
    s.act(&inspecting, "inspect").await;
    machines.push(("inspecting", inspecting, 2));
    let ready = |n: u32| {
        let s = &s;
        async move {
            let id = s.enroll(n).await;
            s.act(&id, "inspect").await;
            s.post(&format!("/api/v1/machines/{id}/inspection"), report(n))
                .await;
            id
        }
    };
    machines.push(("ready", ready(7).await, 7));
    // Allocated (each machine alone in its pool, so the allocation takes it), then on.
    for (n, label, verbs) in [
        (6, "allocated", &[][..]),
        (5, "deploying", &["deploy"][..]),
        (4, "deployed", &["deploy", "deploy_complete"][..]),
        (3, "cleaning", &["release"][..]),
        (20, "deploy_failed", &["deploy", "deploy_fail"][..]),
        (21, "clean_failed", &["release", "clean_fail"][..]),
    ] {
        let id = ready(n).await;
        let alloc = s
            .post("/api/v1/allocations", json!({ "pool": format!("p{n}") }))
            .await;
        assert_eq!(alloc["machines"][0]["id"], id.as_str());
        for v in verbs {
            if *v == "release" {
                let path = format!("/api/v1/allocations/{}", alloc["id"].as_str().unwrap());
                let (st, b) = s.call(reqwest::Method::DELETE, &path, None).await;
                assert!(st.is_success(), "{b}");
            } else {
                s.act(&id, v).await;
            }
        }
        machines.push((label, id, n));
    }
    let failed = s.enroll(22).await;
    s.act(&failed, "inspect").await;
    s.act(&failed, "inspect_fail").await;
    machines.push(("inspect_failed", failed, 22));
    let leaving = s.enroll(23).await;
    s.act(&leaving, "decommission").await;
    machines.push(("decommissioning", leaving, 23));

    let decom = s.enroll(8).await;
    s.act(&decom, "decommission").await;
    if s.app
        .get_machine(&Principal::system(), decom.parse().unwrap())
        .await
        .unwrap()
        .state
        != plinth_types::MachineState::Decommissioned
    {
        s.act(&decom, "decommission_complete").await;
    }
    machines.push(("decommissioned", decom, 8));

    let mut covered: Vec<&str> = machines.iter().map(|(l, _, _)| *l).collect();
    covered.push("discovered"); // below: an unknown MAC
    covered.sort();
    let mut all: Vec<&str> = plinth_types::MachineState::ALL
        .iter()
        .map(|st| st.as_str())
        .collect();
    all.sort();
    assert_eq!(covered, all, "a golden script for every lifecycle state");
    for (label, id, n) in &machines {
        let m = s
            .app
            .get_machine(&Principal::system(), id.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(
            m.state.as_str(),
            *label,
            "the test walked {id} to the wrong state"
        );
        for platform in ["pcbios", "efi"] {
            let (st, script) = s
                .script(
                    &format!("?mac={}&platform={platform}&buildarch=x86_64", mac(*n)),
                    true,
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{label}: {script}");
            assert!(script.starts_with("#!ipxe\n"), "{script}");
            golden(&format!("{label}-{platform}.ipxe"), &normalize(&script, id));
        }
        let boots = s.events(id, "boot").await;
        assert_eq!(boots.len(), 2, "one boot event per request: {boots:?}");
        assert_eq!(boots[1]["details"]["firmware"], "efi");
        // The whole record, every field of the request named (absent ones as null).
        let details = &boots[1]["details"];
        assert_eq!(
            details,
            &json!({
                "mac": mac(*n), "firmware": "efi", "platform": "efi", "arch": "x86_64",
                "uuid": null, "serial": null, "remote": "127.0.0.1",
                "message": details["message"], "script": details["script"],
            }),
        );
    }

    // Unknown MAC: discovered on the spot and sent to inspection.
    let (st, script) = s
        .script(&format!("?mac={}&platform=efi", mac(99)), true)
        .await;
    assert_eq!(st, StatusCode::OK);
    let found = s
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines?q={}", mac(99)),
            None,
        )
        .await
        .1;
    let id = found["machines"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{found}"))
        .to_owned();
    assert_eq!(found["machines"][0]["state"], "discovered");
    golden("discovered-efi.ipxe", &normalize(&script, &id));
    let boot = &s.events(&id, "boot").await[0];
    assert_eq!(boot["details"]["message"], "booted inspection image");
    assert_eq!(boot["actor"], "ipxe@127.0.0.1");
}

#[tokio::test]
async fn agent_tokens_are_one_machine_one_mode_and_expire() {
    let s = Server::start_with(
        |b| b.agent_token_ttl = std::time::Duration::from_secs(60),
        None,
    )
    .await;
    let a = s.enroll(1).await;
    let b = s.enroll(2).await;
    s.act(&a, "inspect").await;
    let (_, script) = s.script(&format!("?mac={}", mac(1)), true).await;
    let first = token_of(&script).expect("the inspection script carries a token");
    let (_, again) = s.script(&format!("?mac={}", mac(1)), true).await;
    let token = token_of(&again).unwrap();
    assert_ne!(token, first, "every boot gets a fresh token");
    // ... which revokes the one before: one live token per machine and mode.
    let e = s
        .app
        .check_agent_token(&first, a.parse().unwrap(), "inspect")
        .await
        .unwrap_err();
    assert!(e.message.contains("replaced by a newer token"), "{e:?}");
    assert!(
        script.contains(&format!("plinth.api={PUBLIC} ")),
        "{script}"
    );
    assert!(script.contains("plinth.mode=inspect "), "{script}");
    assert!(
        script.contains("console=tty0 console=ttyS0,115200n8"),
        "{script}"
    );

    let row = s
        .app
        .check_agent_token(&token, a.parse().unwrap(), "inspect")
        .await
        .unwrap();
    assert_eq!(row.mode, plinth_types::AgentMode::Inspect);
    // Tokens are found by the machine a call names: another machine's is unknown there.
    let e = s
        .app
        .check_agent_token(&token, b.parse().unwrap(), "inspect")
        .await
        .unwrap_err();
    assert_eq!(e.kind, plinth_types::ErrorKind::Unauthorized, "{e:?}");
    assert!(e.message.contains("unknown agent token"), "{e:?}");
    let e = s
        .app
        .check_agent_token(&token, a.parse().unwrap(), "clean")
        .await
        .unwrap_err();
    assert_eq!(e.kind, plinth_types::ErrorKind::Forbidden, "{e:?}");
    assert!(e.message.contains("for inspect mode, not clean"), "{e:?}");
    let e = s
        .app
        .check_agent_token("plinth_nope", a.parse().unwrap(), "inspect")
        .await
        .unwrap_err();
    assert_eq!(e.kind, plinth_types::ErrorKind::Unauthorized);
    // Only the hash is stored; an expired token is refused.
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from agent_tokens where position($1::bytea in secret_sha256) > 0",
    )
    .bind(token.as_bytes())
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(stored, 0);
    sqlx::query("update agent_tokens set expires_at = now() - interval '1 second'")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let e = s
        .app
        .check_agent_token(&token, a.parse().unwrap(), "inspect")
        .await
        .unwrap_err();
    assert!(e.message.contains("expired"), "{e:?}");
    // A machine with nothing to run gets no token.
    let (_, local) = s.script(&format!("?mac={}", mac(2)), true).await;
    assert!(token_of(&local).is_none(), "{local}");
}

/// A machine that keeps asking for its ramdisk script replaces its token each time, in place:
/// one row per machine and mode however often it boots (the table does not grow by a row per
/// request), written as HOT updates (no index entry per token: the script endpoint's cost,
/// docs/benchmarks.md). The token replaced last is still told why it is refused; earlier ones
/// are unknown. The purge pass forgets the virtual-media boots of tokens gone for a day.
#[tokio::test]
async fn a_machine_keeps_one_token_row_per_mode_however_often_it_boots() {
    let s = Server::start().await;
    let a = s.enroll(1).await;
    let b = s.enroll(2).await;
    s.act(&a, "inspect").await;
    s.act(&b, "inspect").await;
    let hot_before: i64 = sqlx::query_scalar(
        "select n_tup_hot_upd from pg_stat_user_tables where relname = 'agent_tokens'",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    let mut tokens = Vec::new();
    for _ in 0..25 {
        let (_, script) = s.script(&format!("?mac={}", mac(1)), true).await;
        tokens.push(token_of(&script).expect("a token each time"));
    }
    let (_, script) = s.script(&format!("?mac={}", mac(2)), true).await;
    let b_token = token_of(&script).unwrap();
    let rows = |id: &str| {
        let (id, pool) = (id.parse::<uuid::Uuid>().unwrap(), s.db.pool.clone());
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from agent_tokens where machine_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(rows(&a).await, 1, "one row for the machine's inspect mode");
    assert_eq!(rows(&b).await, 1);
    // The 24 replacements were HOT updates (the statistics reach pg_stat_user_tables within
    // about a second of each transaction; a few may not be HOT when a page is pruned late).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let hot: i64 = sqlx::query_scalar(
            "select n_tup_hot_upd from pg_stat_user_tables where relname = 'agent_tokens'",
        )
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
        if hot - hot_before >= 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 24 replacements were HOT updates",
            hot - hot_before
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let id = a.parse().unwrap();
    s.app
        .check_agent_token(&tokens[24], id, "inspect")
        .await
        .expect("the live token works");
    s.app
        .check_agent_token(&b_token, b.parse().unwrap(), "inspect")
        .await
        .expect("another machine's token is untouched");
    // What an agent coming back with one of the earlier tokens is told.
    let told = |k: usize| {
        let (app, token) = (s.app.clone(), tokens[k].clone());
        async move {
            app.check_agent_token(&token, id, "inspect")
                .await
                .unwrap_err()
                .message
        }
    };
    assert!(
        told(23).await.contains("replaced by a newer token"),
        "the token replaced last"
    );
    assert!(
        told(0).await.contains("unknown agent token"),
        "an earlier one"
    );

    // A virtual-media boot a day old whose token was replaced is purged; a live one stays.
    sqlx::query(
        "insert into vmedia_boots (id_sha256, machine_id, token_sha256, mode, sealed_config, created_at)
         select sha256(x::bytea), machine_id, case when x = 'old' then prev_sha256 else secret_sha256 end,
                mode, decode(repeat('00', 28), 'hex'), now() - interval '2 days'
         from agent_tokens, (values ('old'), ('live')) v(x) where machine_id = $1",
    )
    .bind(id)
    .execute(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(s.app.purge_agent_tokens().await.unwrap(), 1);
    let left: Vec<Vec<u8>> = sqlx::query_scalar("select id_sha256 from vmedia_boots")
        .fetch_all(&s.db.pool)
        .await
        .unwrap();
    let live: Vec<u8> = sqlx::query_scalar("select sha256('live'::bytea)")
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(left, vec![live]);
    // Nothing more to do the second time.
    assert_eq!(s.app.purge_agent_tokens().await.unwrap(), 0);
}

/// A token row that another transaction changes while a script request's batch is replacing it
/// (here the test revokes it and holds the row until the batch waits for it) is never left
/// behind a token the script hands out: the request gets no token it could not use.
#[tokio::test]
async fn a_token_row_changed_under_a_batch_never_hands_out_a_token_that_was_not_stored() {
    let s = Server::start().await;
    let a = s.enroll(1).await;
    s.act(&a, "inspect").await;
    let first = token_of(&s.script(&format!("?mac={}", mac(1)), true).await.1).expect("a token");
    let id: uuid::Uuid = a.parse().unwrap();
    let mut tx = s.db.pool.begin().await.unwrap();
    sqlx::query(
        "update agent_tokens set revoked_at = now(), revoked_reason = 'held by the test'
         where machine_id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let pool = s.db.pool.clone();
    let release = async move {
        // Until the batch waits for the row the test holds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and wait_event = 'transactionid'
                   and query like '%boot_request_batch%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the batch never waited for the row"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tx.commit().await.unwrap();
    };
    let query = format!("?mac={}", mac(1));
    let ((st, script), ()) = tokio::join!(s.script(&query, true), release);
    assert_eq!(st, StatusCode::OK);
    let (reason, secret_is_first): (Option<String>, bool) = sqlx::query_as(
        "select revoked_reason, secret_sha256 = sha256($2::bytea) from agent_tokens
         where machine_id = $1",
    )
    .bind(id)
    .bind(first.as_bytes())
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    match token_of(&script) {
        Some(t) => {
            s.app
                .check_agent_token(&t, id, "inspect")
                .await
                .expect("a token handed out is stored and live");
        }
        None => {
            assert!(script.contains("has the agent token"), "{script}");
            assert_eq!(reason.as_deref(), Some("held by the test"));
            assert!(
                secret_is_first,
                "the row is as the other transaction left it"
            );
        }
    }
    // The next request gets its token.
    let next = token_of(&s.script(&format!("?mac={}", mac(1)), true).await.1).expect("a token");
    s.app
        .check_agent_token(&next, id, "inspect")
        .await
        .expect("stored and live");
}

/// A client whose requests come from `127.0.0.x` (every address of 127/8 is the loopback's).
fn client_from(x: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, x]))
        .build()
        .unwrap()
}

/// The script of `mac(n)` as iPXE at `127.0.0.x` asks for it.
async fn script_from(s: &Server, x: u8, n: u32) -> String {
    client_from(x)
        .get(format!("{}/boot/ipxe?mac={}", s.base, mac(n)))
        .header("user-agent", "iPXE/1.21")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Agent tokens: one live per machine and mode, bound to an address. Where plinth leased the
/// MAC an address, only that address gets a token; elsewhere the first request binds it; agent
/// calls from any other address are refused with an event; a state change revokes.
#[tokio::test]
async fn agent_tokens_are_bound_to_the_address_that_booted() {
    let s = Server::start().await;
    let a = s.enroll(1).await;
    s.act(&a, "inspect").await;

    // No lease (ProxyDHCP, another DHCP server): the first request binds the token.
    let first = token_of(&script_from(&s, 2, 1).await).expect("a token for the first");
    let other = script_from(&s, 3, 1).await;
    assert!(token_of(&other).is_none(), "{other}");
    assert!(other.contains("bound to another address"), "{other}");
    let spoof = s.events(&a, "boot_spoof_suspected").await;
    assert_eq!(spoof.len(), 1, "{spoof:#?}");
    assert_eq!(spoof[0]["details"]["remote"], "127.0.0.3");
    assert_eq!(spoof[0]["details"]["accepted"], json!(["127.0.0.2"]));
    let boots = s.events(&a, "boot").await;
    assert_eq!(
        boots.last().unwrap()["details"]["message"],
        "told to wait: this boot is bound to another address"
    );
    // The same address again (the machine rebooted): a new token, the old one revoked.
    let second = token_of(&script_from(&s, 2, 1).await).expect("a token after a reboot");
    assert_ne!(first, second);

    // Agent calls: from the bound address only.
    let post_report = |x: u8, token: String| {
        let url = format!("{}/api/v1/machines/{a}/inspection", s.base);
        async move {
            let r = client_from(x)
                .post(url)
                .bearer_auth(token)
                .json(&report(1))
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, body) = post_report(2, first.clone()).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("replaced"),
        "{body}"
    );
    let (st, body) = post_report(3, second.clone()).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    let refused = s.events(&a, "agent_token_refused").await;
    assert!(
        refused
            .iter()
            .any(|e| e["details"]["remote"] == "127.0.0.3"),
        "{refused:#?}"
    );
    let (st, body) = post_report(2, second.clone()).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "ready");

    // A lease from plinth: only its address gets a token, from the first request on.
    let b = s.enroll(2).await;
    s.act(&b, "inspect").await;
    sqlx::query(
        "with sn as (insert into subnets (cidr) values ('127.0.0.0/24') returning id)
         insert into leases (address, subnet_id, state, mac, expires_at)
         select '127.0.0.20', sn.id, 'bound', $1::text::macaddr, now() + interval '1 hour' from sn",
    )
    .bind(mac(2).to_string())
    .execute(&s.db.pool)
    .await
    .unwrap();
    let stranger = script_from(&s, 4, 2).await;
    assert!(token_of(&stranger).is_none(), "{stranger}");
    let spoof = s.events(&b, "boot_spoof_suspected").await;
    assert_eq!(
        spoof[0]["details"]["accepted"],
        json!(["127.0.0.20"]),
        "{spoof:#?}"
    );
    let own = token_of(&script_from(&s, 20, 2).await).expect("the leased address gets it");
    // A state change (here: the inspection failed) revokes it.
    s.act(&b, "inspect_fail").await;
    let e = s
        .app
        .check_agent_token(&own, b.parse().unwrap(), "inspect")
        .await
        .unwrap_err();
    assert!(
        e.message.contains("revoked") && e.message.contains("moved from inspecting"),
        "{e:?}"
    );
}

/// Someone on the provisioning network asking again and again with a machine's MAC from an
/// address its token may not be bound to is refused each time, but adds `boot_spoof_suspected`
/// events, like boot events, only until the machine's boot-loop window holds three times the
/// loop limit: a flood cannot grow the events table (and the event stream and webhooks behind
/// it) by a row per request. The machine's own boot still gets its token.
#[tokio::test]
async fn a_spoofing_flood_adds_events_only_up_to_the_windows_cap() {
    let s = Server::start_with(|b| b.loop_max = 3, None).await;
    let a = s.enroll(1).await;
    s.act(&a, "inspect").await;
    token_of(&script_from(&s, 2, 1).await).expect("the machine's own boot has its token");
    for _ in 0..30 {
        let w = script_from(&s, 3, 1).await;
        assert!(token_of(&w).is_none(), "{w}");
        assert!(w.contains("bound to another address"), "{w}");
    }
    let count = |kind: &'static str| {
        let (pool, id) = (s.db.pool.clone(), a.parse::<uuid::Uuid>().unwrap());
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from events where machine_id = $1 and kind = $2",
            )
            .bind(id)
            .bind(kind)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // 31 requests in the window; events for the first 9 (3 x loop_max), the machine's own first
    assert_eq!(count("boot").await, 9);
    assert_eq!(count("boot_spoof_suspected").await, 8);
    let loops = s.events(&a, "boot_loop").await;
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert_eq!(loops[0]["details"]["boot_events_up_to"], 9);
    // The machine's own boot, from its address, is not held up by the flood.
    token_of(&script_from(&s, 2, 1).await).expect("the machine's own boot has its token");
}

/// A token replayed again and again (a broken agent, or whoever holds a stolen one) is refused
/// each time, but records `agent_token_refused` only up to three times the loop limit per
/// window on each machine: a flood cannot grow the events table by a row per call. The
/// refusal itself does not change.
#[tokio::test]
async fn a_replayed_token_is_refused_every_time_and_recorded_up_to_the_cap() {
    let s = Server::start_with(|b| b.loop_max = 3, None).await;
    let a = s.enroll(1).await;
    let b = s.enroll(2).await;
    s.act(&a, "inspect").await;
    let token = token_of(&script_from(&s, 2, 1).await).expect("a token");
    let post = |x: u8, id: String| {
        let (url, token) = (
            format!("{}/api/v1/machines/{id}/inspection", s.base),
            token.clone(),
        );
        async move {
            client_from(x)
                .post(url)
                .bearer_auth(token)
                .json(&report(1))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..20 {
        // from an address the token is not bound to
        assert_eq!(post(3, a.clone()).await, StatusCode::FORBIDDEN);
    }
    for _ in 0..12 {
        // for another machine: not that machine's token (tokens are found by the machine a
        // call names), recorded there
        assert_eq!(post(2, b.clone()).await, StatusCode::UNAUTHORIZED);
    }
    let count = |id: &str| {
        let (pool, id) = (s.db.pool.clone(), id.parse::<uuid::Uuid>().unwrap());
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from events where machine_id = $1 and kind = 'agent_token_refused'",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(count(&a).await, 9, "3 x loop_max on the token's machine");
    assert_eq!(
        count(&b).await,
        9,
        "and on the machine it was presented for"
    );
    let e = &s.events(&b, "agent_token_refused").await[0];
    assert_eq!(e["details"]["remote"], "127.0.0.2");
    assert_eq!(e["details"]["events_up_to"], 9);
    // Past the cap a refusal does not go to the database again: with the events table locked
    // by another transaction (where recording one would wait), both are still answered at once.
    let mut lock = s.db.pool.begin().await.unwrap();
    sqlx::query("lock table events in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    for (x, id, status) in [
        (3, &a, StatusCode::FORBIDDEN),
        (2, &b, StatusCode::UNAUTHORIZED),
    ] {
        let answered =
            tokio::time::timeout(std::time::Duration::from_secs(10), post(x, id.clone())).await;
        assert_eq!(
            answered.ok(),
            Some(status),
            "refused without waiting for the lock"
        );
    }
    lock.rollback().await.unwrap();
    // The token still works from its own address: the flood changed nothing for the agent.
    let r = client_from(2)
        .post(format!("{}/api/v1/machines/{a}/inspection", s.base))
        .bearer_auth(&token)
        .json(&report(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_boot_loop_is_flagged_once() {
    let s = Server::start_with(|b| b.loop_max = 3, None).await;
    let id = s.enroll(1).await;
    s.act(&id, "inspect").await;
    for _ in 0..12 {
        let (st, _) = s.script(&format!("?mac={}", mac(1)), true).await;
        assert_eq!(st, StatusCode::OK, "every request is answered");
    }
    // Boot events are rate-limited per machine: three times the loop limit in a window.
    assert_eq!(s.events(&id, "boot").await.len(), 9);
    let loops = s.events(&id, "boot_loop").await;
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert_eq!(loops[0]["details"]["requests"], 4);
    assert_eq!(loops[0]["details"]["boot_events_up_to"], 9);
    // A new window starts counting again.
    sqlx::query("update boot_windows set started_at = now() - interval '1 hour'")
        .execute(&s.db.pool)
        .await
        .unwrap();
    for _ in 0..3 {
        s.script(&format!("?mac={}", mac(1)), true).await;
    }
    assert_eq!(s.events(&id, "boot_loop").await.len(), 1);
    s.script(&format!("?mac={}", mac(1)), true).await;
    assert_eq!(
        s.events(&id, "boot_loop").await.len(),
        2,
        "the next window's loop is flagged too"
    );
    // Requests arriving together (recorded in one batch) cross the limit once too.
    sqlx::query("update boot_windows set started_at = now() - interval '1 hour'")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let http = s.http.clone();
            let url = format!("{}/boot/ipxe?mac={}", s.base, mac(1));
            tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), StatusCode::OK);
    }
    // Batches are recorded whole while the window is under the limit.
    let n = s.events(&id, "boot").await.len();
    assert!((9 + 4 + 9..=9 + 4 + 20).contains(&n), "{n}");
    assert_eq!(s.events(&id, "boot_loop").await.len(), 3);
}

#[tokio::test]
async fn bad_requests_get_a_clear_answer() {
    let s = Server::start().await;
    for (q, code) in [
        ("", "missing_mac"),
        ("?mac=", "missing_mac"),
        ("?mac=not-a-mac", "bad_mac"),
        ("?mac=52:54:00:00:00:zz", "bad_mac"),
        (
            "?mac=52:54:00:00:00:01&platform=%07efi",
            "bad_boot_parameter",
        ),
    ] {
        // curl and friends: an HTTP error with a code.
        let (st, body) = s.script(q, false).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], code, "{q}: {body}");
        // iPXE: a script that says why and waits instead of retrying at once.
        let (st, script) = s.script(q, true).await;
        assert_eq!(st, StatusCode::OK);
        assert!(script.starts_with("#!ipxe\n"), "{script}");
        assert!(
            script.contains("sleep 60") && script.contains("\nexit\n"),
            "{script}"
        );
        assert!(!script.contains("kernel "), "{script}");
    }
    let (_, script) = s.script("?mac=nonsense", true).await;
    assert!(script.contains("is not a MAC address"), "{script}");
    assert_eq!(
        s.count_events().await,
        0,
        "bad requests record nothing (there is no machine to record them on)"
    );
}

impl Server {
    async fn count_events(&self) -> i64 {
        sqlx::query_scalar("select count(*) from events where kind in ('boot', 'discover')")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_template_error_is_a_500_naming_the_template() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ramdisk.ipxe"),
        "#!ipxe\nkernel {{ kernel_url }} {{ machine.no_such_field }}\n",
    )
    .unwrap();
    let s = Server::start_with(|_| {}, Some(dir.path())).await;
    let id = s.enroll(1).await;
    s.act(&id, "inspect").await;
    let (st, body) = s.script(&format!("?mac={}", mac(1)), true).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("ramdisk.ipxe"), "{body}");
    assert!(!body.contains("#!ipxe"), "never half a script: {body}");
    // The other templates are still the shipped ones and work.
    s.act(&id, "inspect_fail").await;
    let (st, body) = s.script(&format!("?mac={}", mac(1)), true).await;
    assert_eq!(st, StatusCode::OK, "{body}");
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn image_files_with_ranges_and_validators() {
    let s = Server::start().await;
    let data = random_bytes(3 * 1024 * 1024 + 17, 7);
    std::fs::create_dir_all(s.root.path().join("plinth")).unwrap();
    std::fs::write(s.root.path().join("plinth/vmlinuz"), &data).unwrap();
    let url = format!("{}/boot/plinth/vmlinuz", s.base);

    let resp = s.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-length"], data.len().to_string().as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    let etag = h["etag"].to_str().unwrap().to_owned();
    let modified = h["last-modified"].to_str().unwrap().to_owned();
    assert!(modified.ends_with("GMT"));
    assert!(resp.bytes().await.unwrap() == data, "byte-identical");

    let range = |r: &str| s.http.get(&url).header("range", r.to_owned()).send();
    let resp = range("bytes=1000-1999").await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 1000-1999/{}", data.len()).as_str()
    );
    assert_eq!(resp.headers()["content-length"], "1000");
    assert!(resp.bytes().await.unwrap() == data[1000..2000]);
    let resp = range("bytes=-10").await.unwrap();
    assert!(resp.bytes().await.unwrap() == data[data.len() - 10..]);
    let resp = range(&format!("bytes={}-", data.len())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes */{}", data.len()).as_str()
    );
    // If-Range with a stale validator: the whole file.
    let resp = s
        .http
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = s
        .http
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    // Conditional requests.
    let resp = s
        .http
        .get(&url)
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    let resp = s
        .http
        .get(&url)
        .header("if-modified-since", modified)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    // A GET with a body is handed to axum's handler: the same answers, streamed.
    let resp = s
        .http
        .get(&url)
        .header("range", "bytes=1000-1999")
        .body("odd")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["etag"].to_str().unwrap(), etag);
    assert!(resp.bytes().await.unwrap() == data[1000..2000]);
    let resp = s.http.get(&url).body("odd").send().await.unwrap();
    assert!(
        resp.bytes().await.unwrap() == data,
        "byte-identical through axum too"
    );
    // HEAD: the length, no body.
    let resp = s.http.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-length"],
        data.len().to_string().as_str()
    );
    // A rewritten file gets a new ETag.
    std::fs::write(s.root.path().join("plinth/vmlinuz"), b"new").unwrap();
    let resp = s
        .http
        .get(&url)
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_ne!(resp.headers()["etag"].to_str().unwrap(), etag);

    // Confinement: traversal (encoded, so the client does not normalise it), symlinks out.
    std::os::unix::fs::symlink("/etc/passwd", s.root.path().join("passwd")).unwrap();
    // (Raw requests: HTTP clients normalise `..` away before sending.)
    for (path, status) in [
        ("/boot/../../etc/passwd", 403),
        ("/boot/%2e%2e/%2e%2e/etc/passwd", 403),
        ("/boot/plinth/%2e%2e/%2e%2e/etc/passwd", 403),
        ("/boot/plinth/..%2f..%2fetc/passwd", 403),
        ("/boot/passwd", 403),
        ("/boot/plinth%00x", 403),
        ("/boot/missing", 404),
        ("/boot/plinth", 404),
    ] {
        let (st, body) = raw_get(&s.base, path).await;
        assert_eq!(st, status, "{path}: {body}");
        assert!(!body.contains("root:"), "{path}: {body}");
    }
}

/// A GET sent byte for byte as written, and the status and body of the answer.
async fn raw_get(base: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out)
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test]
async fn the_image_catalog() {
    let s = Server::start().await;
    let kernel = random_bytes(100_000, 3);
    std::fs::create_dir_all(s.root.path().join("plinth")).unwrap();
    std::fs::write(s.root.path().join("plinth/vmlinuz"), &kernel).unwrap();

    // Register a file already in the root: hashed by plinth, checked against the given sum.
    let (st, e) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/images",
            Some(json!({ "name": "k", "kind": "kernel", "path": "plinth/vmlinuz", "sha256": "0".repeat(64) })),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["code"], "checksum_mismatch");
    let img = s
        .post(
            "/api/v1/images",
            json!({ "name": "plinth-kernel", "kind": "kernel", "path": "plinth/vmlinuz", "sha256": sha_hex(&kernel) }),
        )
        .await;
    assert_eq!(img["size"], 100_000);
    assert_eq!(img["sha256"], sha_hex(&kernel));
    assert_eq!(img["source"], "registered");
    for (body, code) in [
        (
            json!({ "name": "x", "kind": "kernel", "path": "../etc/passwd" }),
            "invalid_image_path",
        ),
        (
            json!({ "name": "x", "kind": "kernel", "path": "nope" }),
            "image_file_missing",
        ),
        (
            json!({ "name": "bad name", "kind": "kernel", "path": "plinth/vmlinuz" }),
            "invalid_image_name",
        ),
        (
            json!({ "name": "x", "kind": "kernel", "arch": "sparc", "path": "plinth/vmlinuz" }),
            "invalid_arch",
        ),
    ] {
        let (st, e) = s
            .call(reqwest::Method::POST, "/api/v1/images", Some(body.clone()))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {e}");
        assert_eq!(e["error"]["code"], code, "{body}: {e}");
    }
    let (st, e) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/images",
            Some(json!({ "name": "k2", "kind": "kernel", "path": "plinth/vmlinuz" })),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");

    // Upload: streamed, verified, then in place; a bad checksum leaves nothing behind.
    let disk = random_bytes(5 * 1024 * 1024 + 3, 11);
    let upload = |name: &str, q: String, body: Vec<u8>| {
        s.http
            .put(format!("{}/api/v1/images/{name}?{q}", s.base))
            .bearer_auth(&s.admin)
            .body(body)
            .send()
    };
    let resp = upload(
        "disk",
        format!("kind=disk-image&sha256={}", "1".repeat(64)),
        disk.clone(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(!s.root.path().join("uploads/disk").exists());
    let leftovers: Vec<_> = std::fs::read_dir(s.root.path().join("uploads"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let resp = upload(
        "disk",
        format!("kind=disk-image&arch=any&sha256={}", sha_hex(&disk)),
        disk.clone(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let img: Value = resp.json().await.unwrap();
    assert_eq!(img["path"], "uploads/disk");
    assert_eq!(img["kind"], "disk-image");
    assert!(std::fs::read(s.root.path().join("uploads/disk")).unwrap() == disk);
    let resp = upload("disk", "kind=disk-image".into(), b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let resp = upload("y", "kind=floppy".into(), b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Served like any boot file.
    let got = s
        .http
        .get(format!("{}/boot/uploads/disk", s.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == disk);

    let (_, list) = s.call(reqwest::Method::GET, "/api/v1/images", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["disk", "plinth-kernel"]);

    // A viewer reads, never writes.
    let viewer = token(&s.app, "v", Role::Viewer).await;
    let resp = s
        .http
        .delete(format!("{}/api/v1/images/disk", s.base))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // What plinth boots cannot be deleted; an uploaded image takes its file with it.
    let (st, e) = s
        .call(
            reqwest::Method::DELETE,
            "/api/v1/images/plinth-kernel",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "image_in_use");
    let (st, _) = s
        .call(reqwest::Method::DELETE, "/api/v1/images/disk", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(!s.root.path().join("uploads/disk").exists());
    let (st, _) = s
        .call(reqwest::Method::GET, "/api/v1/images/disk", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// Runs qemu-img (from qemu-utils) as a test's own tool; its absence fails the test.
fn qemu_img(args: &[&str]) {
    let run = || {
        std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("qemu-img is needed to test qcow2 uploads: apt-get install qemu-utils ({e})")
            })
    };
    let mut out = run();
    // qemu-img 7.2 times its LUKS key derivation with getrusage and gives up when a busy
    // machine shows it no CPU time at all ("Unable to get accurate CPU usage"): try again.
    for _ in 0..5 {
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("accurate CPU usage")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        out = run();
    }
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, hidden ones (upload temporaries) included.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn qcow2_uploads_are_converted_to_raw_once() {
    let s = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let at = |name: &str| work.path().join(name).to_str().unwrap().to_owned();
    let upload = |name: &str, q: String, body: Vec<u8>| {
        s.http
            .put(format!("{}/api/v1/images/{name}?{q}", s.base))
            .bearer_auth(&s.admin)
            .body(body)
            .send()
    };

    // A 6 MiB disk, mostly zeros (qcow2 leaves those out), with data here and there.
    let mut raw = vec![0u8; 6 << 20];
    for (i, off) in [0usize, 65_536 + 513, 3 << 20, (6 << 20) - 4096]
        .into_iter()
        .enumerate()
    {
        raw[off..off + 4096].copy_from_slice(&random_bytes(4096, 40 + i as u64));
    }
    std::fs::write(at("disk.raw"), &raw).unwrap();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &at("disk.raw"),
        &at("disk.qcow2"),
    ]);
    let qcow2 = std::fs::read(at("disk.qcow2")).unwrap();
    assert!(qcow2.starts_with(b"QFI\xfb") && qcow2.len() < raw.len());

    // The checksum given is of the qcow2 as uploaded: the raw's is refused.
    let resp = upload(
        "cloud",
        format!("kind=disk-image&sha256={}", sha_hex(&raw)),
        qcow2.clone(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "checksum_mismatch", "{e}");
    assert_eq!(files_under(s.root.path()), Vec::<PathBuf>::new());

    // Known by its content: stored raw, byte for byte, as `<name>.raw`.
    let resp = upload(
        "cloud",
        format!("kind=disk-image&firmware=uefi&sha256={}", sha_hex(&qcow2)),
        qcow2.clone(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let img: Value = resp.json().await.unwrap();
    assert_eq!(img["path"], "uploads/cloud.raw", "{img}");
    assert_eq!(img["size"], raw.len(), "{img}");
    assert_eq!(img["sha256"], sha_hex(&raw), "{img}");
    assert_eq!(img["raw_size"], raw.len(), "{img}");
    assert_eq!(img["raw_sha256"], sha_hex(&raw), "{img}");
    assert_eq!(img["firmware"], "uefi", "{img}");
    assert!(std::fs::read(s.root.path().join("uploads/cloud.raw")).unwrap() == raw);
    assert_eq!(
        files_under(s.root.path()),
        [s.root.path().join("uploads/cloud.raw")],
        "no qcow2 and no temporaries left"
    );
    let (_, shown) = s
        .call(reqwest::Method::GET, "/api/v1/images/cloud", None)
        .await;
    assert_eq!(shown, img);

    // Known by its name, at a given path: `.qcow2` becomes `.raw`.
    let resp = upload(
        "cloud2",
        "kind=disk-image&path=disks/cloud2.qcow2".into(),
        qcow2.clone(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let img: Value = resp.json().await.unwrap();
    assert_eq!(img["path"], "disks/cloud2.raw", "{img}");
    assert_eq!(img["raw_sha256"], sha_hex(&raw), "{img}");
    assert!(std::fs::read(s.root.path().join("disks/cloud2.raw")).unwrap() == raw);
    let converted = files_under(s.root.path());
    assert_eq!(converted.len(), 2, "{converted:?}");

    // Refused, with nothing left behind: a backing file (it could name any file on the
    // server), an external data file, encryption, a disk larger than the free space, and a
    // qcow2 that is not one.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "/etc/hostname",
        "-F",
        "raw",
        &at("backed.qcow2"),
    ]);
    let data_file = format!("data_file={}", at("data.img"));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &data_file,
        &at("external.qcow2"),
        "1M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=hunter2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        &at("encrypted.qcow2"),
        "1M",
    ]);
    qemu_img(&["create", "-q", "-f", "qcow2", &at("huge.qcow2"), "64T"]);
    let mut corrupt = b"QFI\xfb".to_vec();
    corrupt.extend_from_slice(&random_bytes(65_536, 9));
    for (file, body, code) in [
        ("backed.qcow2", None, "unsupported_image"),
        ("external.qcow2", None, "unsupported_image"),
        ("encrypted.qcow2", None, "unsupported_image"),
        ("huge.qcow2", None, "image_too_large"),
        ("corrupt", Some(corrupt), "corrupt_image"),
    ] {
        let body = body.unwrap_or_else(|| std::fs::read(at(file)).unwrap());
        let resp = upload("bad", "kind=disk-image".into(), body).await.unwrap();
        let st = resp.status();
        let e: Value = resp.json().await.unwrap();
        assert_eq!(st, StatusCode::BAD_REQUEST, "{file}: {e}");
        assert_eq!(e["error"]["code"], code, "{file}: {e}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(
            !msg.contains(s.root.path().to_str().unwrap()),
            "{file}: the server's paths stay on the server: {msg}"
        );
        assert_eq!(
            files_under(s.root.path()),
            converted,
            "{file}: nothing left"
        );
    }
    let (_, list) = s.call(reqwest::Method::GET, "/api/v1/images", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cloud", "cloud2"]);

    // A qcow2 already under the root is not registered (nor converted in place).
    std::fs::copy(at("disk.qcow2"), s.root.path().join("disk.qcow2")).unwrap();
    let (st, e) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/images",
            Some(json!({ "name": "in-place", "kind": "disk-image", "path": "disk.qcow2" })),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["code"], "unsupported_image", "{e}");
    assert!(std::fs::read(s.root.path().join("disk.qcow2")).unwrap() == qcow2);
}

/// Requests arriving together are recorded in batches: every one answered for its own machine,
/// one event each, a token only in ramdisk scripts, one live token per machine at the end.
#[tokio::test]
async fn concurrent_requests_each_get_their_own_script() {
    let s = Server::start().await;
    let mut ids = Vec::new();
    for n in 1..=40 {
        let id = s.enroll(n).await;
        if n % 2 == 1 {
            s.act(&id, "inspect").await;
        }
        ids.push(id);
    }
    let mut tasks = Vec::new();
    for round in 0..5 {
        for n in 1..=40u32 {
            let http = s.http.clone();
            let url = format!("{}/boot/ipxe?mac={}&platform=efi", s.base, mac(n));
            tasks.push(tokio::spawn(async move {
                let r = http
                    .get(url)
                    .header("user-agent", "iPXE/1.21")
                    .send()
                    .await
                    .unwrap();
                (n, round, r.status(), r.text().await.unwrap())
            }));
        }
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let (n, _, st, script) = t.await.unwrap();
        assert_eq!(st, StatusCode::OK);
        let id = &ids[n as usize - 1];
        assert!(
            script.contains(&format!("node{n} (")),
            "machine {n} got another's script:\n{script}"
        );
        if n % 2 == 1 {
            // A ramdisk script with its own token, or (a request of the same machine in the
            // same batch took the token) a script that waits.
            match token_of(&script) {
                Some(t) => {
                    assert!(
                        script.contains(&format!("plinth.machine={id} ")),
                        "{script}"
                    );
                    assert!(tokens.insert(t), "tokens are never reused");
                }
                None => assert!(script.contains("has the agent token"), "{script}"),
            }
        } else {
            assert!(token_of(&script).is_none(), "{script}");
        }
    }
    let (events, stored): (i64, i64) = sqlx::query_as(
        "select (select count(*) from events where kind = 'boot'), (select count(*) from agent_tokens)",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(events, 200);
    assert_eq!(stored, 20, "one token row per inspecting machine and mode");
    assert!(tokens.len() >= 20, "every machine got at least one");
    let live: i64 = sqlx::query_scalar(
        "select count(*) from agent_tokens where used_at is null and revoked_at is null",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(live, 20, "one live token per inspecting machine");
}

/// Files go out by sendfile on the listener's own path; on one keep-alive connection a file, a
/// range of it, and then an API request (handed over to axum mid-connection) all get their
/// answers, pipelined.
#[tokio::test]
async fn file_requests_and_api_requests_share_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    let data = random_bytes(300_000, 5);
    std::fs::write(s.root.path().join("initrd.img"), &data).unwrap();
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(
        format!(
            "GET /boot/initrd.img HTTP/1.1\r\nHost: {addr}\r\n\r\n\
             GET /boot/initrd.img HTTP/1.1\r\nHost: {addr}\r\nRange: bytes=10-19\r\n\r\n\
             HEAD /boot/initrd.img HTTP/1.1\r\nHost: {addr}\r\n\r\n\
             GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .expect("the server closes after Connection: close")
        .unwrap();
    // Split the stream into responses by their Content-Length.
    let mut rest = &out[..];
    let mut responses = Vec::new();
    for head_only in [false, false, true, false] {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let body_len = if head_only { 0 } else { len };
        responses.push((head, rest[end..end + body_len].to_vec()));
        rest = &rest[end + body_len..];
    }
    assert!(rest.is_empty(), "{} bytes left over", rest.len());
    assert!(
        responses[0].0.starts_with("http/1.1 200"),
        "{}",
        responses[0].0
    );
    assert!(responses[0].1 == data, "the file, byte-identical");
    assert!(
        responses[1].0.starts_with("http/1.1 206"),
        "{}",
        responses[1].0
    );
    assert!(responses[1].0.contains("content-range: bytes 10-19/300000"));
    assert!(responses[1].1 == data[10..20]);
    assert!(
        responses[2].0.starts_with("http/1.1 200")
            && responses[2].0.contains("content-length: 300000")
    );
    assert!(
        responses[3].0.starts_with("http/1.1 200"),
        "{}",
        responses[3].0
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&responses[3].1).unwrap()["status"],
        "ok",
        "the API request after the files went to axum"
    );
    // HTTP/1.0 without keep-alive: one answer, then the connection closes.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /boot/initrd.img HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(String::from_utf8_lossy(&out[..end]).contains("connection: close"));
    assert!(out[end..] == data[..]);
}

/// iPXE's own order on one kept-alive connection: the script, then the kernel and initrd. The
/// listener answers the script itself (the handler axum would run: a token bound to the client's
/// address, a boot event) so that the files after it still go out by sendfile; an API request
/// after them is handed to axum.
#[tokio::test]
async fn ipxe_gets_its_script_and_files_on_one_connection_without_a_hand_off() {
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    let id = s.enroll(7).await;
    s.act(&id, "inspect").await;
    let data = random_bytes(200_000, 7);
    std::fs::write(s.root.path().join("vmlinuz"), &data).unwrap();
    let counters = std::sync::Arc::new(plinth_api::ListenerCounters::default());
    let addr = plinth_testkit::api::listen(
        &s.app,
        plinth_api::ServeOptions {
            counters: counters.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!(
            "GET /boot/ipxe?mac={}&platform=pcbios&buildarch=i386 HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: iPXE/1.21\r\n\r\n\
             GET /boot/vmlinuz HTTP/1.1\r\nHost: {addr}\r\n\r\n\
             GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
            mac(7)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .expect("the server closes after Connection: close")
        .unwrap();
    let mut rest = &out[..];
    let mut responses = Vec::new();
    for _ in 0..3 {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        responses.push((head, rest[end..end + len].to_vec()));
        rest = &rest[end + len..];
    }
    assert!(rest.is_empty(), "{} bytes left over", rest.len());
    let script = String::from_utf8(responses[0].1.clone()).unwrap();
    assert!(
        responses[0].0.starts_with("http/1.1 200"),
        "{}",
        responses[0].0
    );
    assert!(
        responses[0].0.contains("cache-control: no-store"),
        "{}",
        responses[0].0
    );
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(
        token_of(&script).is_some(),
        "an inspecting machine's script carries its token: {script}"
    );
    // The same script as axum's path renders (its base the configured public URL).
    assert!(script.contains(&format!("plinth.api={PUBLIC}")), "{script}");
    assert!(
        responses[1].0.starts_with("http/1.1 200"),
        "{}",
        responses[1].0
    );
    assert!(responses[1].1 == data, "the kernel, byte-identical");
    assert_eq!(
        serde_json::from_slice::<Value>(&responses[2].1).unwrap()["status"],
        "ok"
    );
    assert_eq!(
        (
            counters.scripts.load(Relaxed),
            counters.files.load(Relaxed),
            counters.handed_off.load(Relaxed)
        ),
        (1, 1, 1),
        "the script and the kernel on the listener's path, the API request handed over"
    );
    // The request was recorded as axum's would be: a boot event, the token bound to the
    // client's address (another address is refused one).
    assert_eq!(s.events(&id, "boot").await.len(), 1);
    let other = script_from(&s, 3, 7).await;
    assert!(other.contains("bound to another address"), "{other}");
}

impl Server {
    /// A request with this bearer secret (an agent token).
    async fn call_as(
        &self,
        method: reqwest::Method,
        secret: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(secret);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post_as(&self, secret: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call_as(reqwest::Method::POST, secret, path, Some(body))
            .await
    }
}

#[tokio::test]
async fn the_agent_reports_once_with_its_own_token() {
    let s = Server::start().await;
    let a = s.enroll(1).await;
    let b = s.enroll(2).await;
    s.act(&a, "inspect").await;
    let (_, script) = s.script(&format!("?mac={}", mac(1)), true).await;
    let token = token_of(&script).unwrap();

    // Another machine's report, or a report of another kind, with this token: refused, and
    // the timeline of the machine named says so. (Tokens are found by the machine a call
    // names: for machine b this is no token at all.)
    let (st, v) = s
        .post_as(
            &token,
            &format!("/api/v1/machines/{b}/inspection"),
            report(2),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(
        v["error"]["message"],
        "not an agent token of this machine, nor an API token"
    );
    let clean = json!({ "result": "complete", "disks": [] });
    let (st, v) = s
        .post_as(
            &token,
            &format!("/api/v1/machines/{a}/clean"),
            clean.clone(),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("inspect mode"),
        "{v}"
    );
    assert_eq!(s.events(&a, "agent_token_refused").await.len(), 1);
    let refused = s.events(&b, "agent_token_refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["details"]["token_machine"], Value::Null);
    assert_eq!(refused[0]["details"]["presented_for"], b);

    // Its own report: stored, ready; the token is used up.
    let (st, m) = s
        .post_as(
            &token,
            &format!("/api/v1/machines/{a}/inspection"),
            report(1),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    assert_eq!(m["state"], "ready");
    assert_eq!(m["facts"]["memory_mib"], 16384);
    let done = s.events(&a, "inspect_complete").await;
    assert_eq!(done[0]["actor"], "agent:inspect");
    let (st, v) = s
        .post_as(
            &token,
            &format!("/api/v1/machines/{a}/inspection"),
            report(1),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used")
    );
    assert_eq!(s.events(&a, "agent_token_refused").await.len(), 2);
    // Neither a made-up token (recorded too) nor none at all.
    let (st, _) = s
        .post_as(
            "plinth_madeup",
            &format!("/api/v1/machines/{a}/inspection"),
            report(1),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(s.events(&a, "agent_token_refused").await.len(), 3);

    // Cleaning: allocate, release, the clean ramdisk's token reports.
    let alloc = s.post("/api/v1/allocations", json!({ "count": 1 })).await;
    let (st, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/allocations/{}", alloc["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, script) = s.script(&format!("?mac={}", mac(1)), true).await;
    assert!(script.contains("plinth.mode=clean "), "{script}");
    let token = token_of(&script).unwrap();
    // An inconsistent report is refused before the token is spent.
    let bad = json!({ "result": "complete", "disks": [
        { "name": "sda", "size_bytes": 1000, "zeroed_bytes": 10, "full": false, "error": "EIO" } ] });
    let (st, v) = s
        .post_as(&token, &format!("/api/v1/machines/{a}/clean"), bad)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let failed = json!({ "result": "failed", "reason": "sdb: write error at 4096", "disks": [
        { "name": "sda", "size_bytes": 1048576000u64, "zeroed_bytes": 2097152, "full": false, "error": null },
        { "name": "sdb", "size_bytes": 1048576000u64, "zeroed_bytes": 0, "full": false, "error": "EIO" } ] });
    let (st, m) = s
        .post_as(&token, &format!("/api/v1/machines/{a}/clean"), failed)
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    assert_eq!(m["state"], "clean_failed");
    assert_eq!(m["state_reason"], "sdb: write error at 4096");
    let ev = s.events(&a, "clean_fail").await;
    assert_eq!(ev[0]["details"]["disks"][1]["error"], "EIO");
}

impl Server {
    async fn get_as(&self, secret: &str, path: &str) -> (StatusCode, Value) {
        self.call_as(reqwest::Method::GET, secret, path, None).await
    }

    /// An allocated machine (its own pool) deployed with the test disk image.
    async fn deploying(&self, n: u32, body: Value) -> String {
        let id = self.enroll(n).await;
        self.act(&id, "inspect").await;
        self.post(&format!("/api/v1/machines/{id}/inspection"), report(n))
            .await;
        let pool = format!("deploy{n}");
        self.call(
            reqwest::Method::PATCH,
            &format!("/api/v1/machines/{id}"),
            Some(json!({ "pool": pool })),
        )
        .await;
        self.post("/api/v1/allocations", json!({ "pool": pool }))
            .await;
        let mut body = body;
        body["image"] = self.disk_image().await.into();
        self.post(&format!("/api/v1/machines/{id}/actions/deploy"), body)
            .await;
        id
    }
}

#[tokio::test]
async fn the_deploy_agent_gets_its_manifest_reports_progress_and_finishes_once() {
    let s = Server::start().await;
    let a = s
        .deploying(
            31,
            json!({
                "hostname": "web-31",
                "user_data": "#cloud-config\nruncmd: [echo hi]\n",
                "ssh_authorized_keys": ["ssh-ed25519 AAAAC3Nz me@laptop"],
                "network_config": "version: 2\n"
            }),
        )
        .await;
    let b = s.deploying(32, json!({})).await;
    let (_, script) = s.script(&format!("?mac={}", mac(31)), true).await;
    assert!(script.contains("plinth.mode=deploy"), "{script}");
    let token = token_of(&script).unwrap();

    // The manifest: the image (served by the boot file server), the disk, the seed.
    let (st, m) = s
        .get_as(&token, &format!("/api/v1/machines/{a}/deployment/manifest"))
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    assert_eq!(m["root_device"], "sda");
    assert_eq!(m["compression"], "none");
    assert_eq!(m["size"], 4096);
    assert_eq!(
        m["raw_sha256"],
        sha_hex(&[0u8; 4096]),
        "what the agent reads back"
    );
    let meta = m["seed"]["meta_data"].as_str().unwrap();
    assert!(meta.contains("local-hostname: \"web-31\""), "{meta}");
    assert!(
        meta.contains("  - \"ssh-ed25519 AAAAC3Nz me@laptop\""),
        "{meta}"
    );
    assert_eq!(m["seed"]["user_data"], "#cloud-config\nruncmd: [echo hi]\n");
    assert_eq!(m["seed"]["network_config"], "version: 2\n");
    let image = s
        .http
        .get(format!("{}{}", s.base, m["url_path"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), StatusCode::OK);
    assert_eq!(image.bytes().await.unwrap().len(), 4096);
    // Another machine's manifest with this token: refused, and recorded.
    let (st, _) = s
        .get_as(&token, &format!("/api/v1/machines/{b}/deployment/manifest"))
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(s.events(&b, "agent_token_refused").await.len(), 1);

    // Progress: the state reason says how far; one event within 10 s.
    for written in [1024u64, 2048] {
        let (st, v) = s
            .post_as(
                &token,
                &format!("/api/v1/machines/{a}/deploy-progress"),
                json!({ "bytes_written": written, "total_bytes": 4096, "bytes_per_sec": 104857600 }),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    }
    let (_, machine) = s
        .call(reqwest::Method::GET, &format!("/api/v1/machines/{a}"), None)
        .await;
    assert_eq!(
        machine["state_reason"],
        "writing test-disk.raw to sda: 50%, 0.0 MiB at 100.0 MiB/s"
    );
    assert_eq!(s.events(&a, "deploy_progress").await.len(), 1);

    // Done: deployed, once; the token is used up.
    let done = json!({ "result": "complete", "bytes_written": 4096, "sha256": m["sha256"] });
    let (st, v) = s
        .post_as(
            &token,
            &format!("/api/v1/machines/{a}/deploy-report"),
            done.clone(),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "deployed");
    let (st, _) = s
        .post_as(&token, &format!("/api/v1/machines/{a}/deploy-report"), done)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "the token was used up");

    // The other machine's agent fails: deploy_failed with its reason.
    let (_, script) = s.script(&format!("?mac={}", mac(32)), true).await;
    let token_b = token_of(&script).unwrap();
    let (st, v) = s
        .post_as(
            &token_b,
            &format!("/api/v1/machines/{b}/deploy-report"),
            json!({ "result": "failed", "reason": "sha256 of what was written differs" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "deploy_failed");
    assert_eq!(v["state_reason"], "sha256 of what was written differs");
}

#[tokio::test]
async fn the_metadata_endpoint_serves_the_seed_until_release() {
    let s = Server::start().await;
    let id = s
        .deploying(
            41,
            json!({ "hostname": "db-41", "user_data": "#cloud-config\nhostname: db-41\n" }),
        )
        .await;
    let (st, d) = s
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{id}/deployment"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{d}");
    assert_eq!(d["has_user_data"], true);
    // The admin sees the tenant's data (so do the allocation's client and operators).
    assert_eq!(d["data"]["user_data"], "#cloud-config\nhostname: db-41\n");
    let instance = d["instance_id"].as_str().unwrap().to_owned();
    // The machine boots its deploy ramdisk from 127.0.0.41: the address its metadata is for.
    let script = script_from(&s, 41, 41).await;
    assert!(token_of(&script).is_some(), "{script}");
    let get_from = |x: u8, file: String| {
        let s = &s;
        async move {
            let r = client_from(x)
                .get(format!("{}/metadata/{file}", s.base))
                .send()
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let get = |file: String| get_from(41, file);
    // Anyone else with the instance id: the same 404 as for an unknown one, and an event.
    let (st, _) = get_from(1, format!("{instance}/user-data")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let refused = s.events(&id, "metadata_refused").await;
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["details"]["remote"], "127.0.0.1");
    // Asked again and again: every answer the same 404, the events capped per machine (three
    // times the boot-loop limit per window, as the event says).
    let cap = refused[0]["details"]["events_up_to"].as_u64().unwrap();
    assert_eq!(cap, 30, "three times the default boot-loop limit");
    for _ in 0..cap + 5 {
        let (st, _) = get_from(1, format!("{instance}/user-data")).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
    let refused = s.events(&id, "metadata_refused").await;
    assert_eq!(refused.len() as u64, cap, "{refused:#?}");
    // ...and past it the database is not asked to record another: with the events table
    // locked (where recording one would wait), the refusal is still answered at once.
    let mut lock = s.db.pool.begin().await.unwrap();
    sqlx::query("lock table events in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        get_from(1, format!("{instance}/user-data")),
    )
    .await;
    assert_eq!(answered.ok().map(|a| a.0), Some(StatusCode::NOT_FOUND));
    lock.rollback().await.unwrap();
    let (st, meta) = get(format!("{instance}/meta-data")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        meta.contains(&format!("instance-id: \"{instance}\"")),
        "{meta}"
    );
    assert!(meta.contains("local-hostname: \"db-41\""), "{meta}");
    let (st, user) = get(format!("{instance}/user-data")).await;
    assert_eq!(
        (st, user.as_str()),
        (StatusCode::OK, "#cloud-config\nhostname: db-41\n")
    );
    let (st, _) = get(format!("{instance}/network-config")).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "none given");
    let (st, _) = get(format!("{}/meta-data", uuid::Uuid::new_v4())).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = get("not-a-uuid/meta-data".into()).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Failed, then released: the seed is gone with the deployment.
    s.act(&id, "deploy_fail").await;
    s.act(&id, "release").await;
    let (st, _) = get(format!("{instance}/user-data")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// A tenant's data is its own, per role: the allocation's client sees its machines (BMC power
/// state only), their events from its allocation on, and its deployment's data; another client
/// sees none of it; a viewer sees that a deployment exists, not its instance id; operators and
/// admins see all. What a client may do: deploy, power and release its own machines, nothing
/// else. Allocation does not follow a client onto the machine it just released.
#[tokio::test]
async fn tenants_see_and_do_only_what_is_theirs() {
    let s = Server::start().await;
    let token = |name: &'static str, role: Role| token(&s.app, name, role);
    let (alice, bob) = (
        token("alice", Role::Client).await,
        token("bob", Role::Client).await,
    );
    let (vera, otto) = (
        token("vera", Role::Viewer).await,
        token("otto", Role::Operator).await,
    );
    // Three ready machines with a BMC each, in pool "t".
    let mut ids = Vec::new();
    for n in 61..=63u32 {
        let m = s
            .post(
                "/api/v1/machines",
                json!({ "hostname": format!("t{n}"), "pool": "t", "nics": [{ "mac": mac(n) }],
                        "bmc": { "protocol": "redfish", "address": format!("10.9.0.{n}"), "username": "root", "password": "Secret-Bmc-9" } }),
            )
            .await;
        let id = m["id"].as_str().unwrap().to_owned();
        s.act(&id, "inspect").await;
        s.post(&format!("/api/v1/machines/{id}/inspection"), report(n))
            .await;
        ids.push(id);
    }
    let get = |who: &str, path: String| {
        let (s, who) = (&s, who.to_owned());
        async move { s.call_as(reqwest::Method::GET, &who, &path, None).await }
    };

    // Alice allocates one: the longest-ready, t61.
    let (st, alloc) = s
        .post_as(
            &alice,
            "/api/v1/allocations",
            json!({ "count": 1, "pool": "t" }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{alloc}");
    let mine = alloc["machines"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(mine, ids[0], "the longest-ready machine first");
    let bmc = &alloc["machines"][0]["bmc"];
    assert_eq!(bmc["protocol"], "redfish");
    for hidden in ["address", "username", "identity", "last_error"] {
        assert!(
            bmc.get(hidden).is_none() || bmc[hidden].is_null(),
            "{hidden}: {bmc}"
        );
    }
    let (_, page) = get(&alice, "/api/v1/machines".into()).await;
    let seen: Vec<&str> = page["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, [mine.as_str()]);
    let (st, m) = get(&alice, format!("/api/v1/machines/{mine}")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(m["bmc"].get("address").is_none(), "{m}");
    let (_, m) = get(&otto, format!("/api/v1/machines/{mine}")).await;
    assert_eq!(m["bmc"]["address"], "10.9.0.61", "operators see the BMC");
    for other in [&bob, &alice] {
        let target = if other == &bob { &mine } else { &ids[1] };
        let (st, _) = get(other, format!("/api/v1/machines/{target}")).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "not theirs");
    }

    // Events: Alice's from her allocation on; everyone before her is not her business.
    let (_, ev) = get(&alice, format!("/api/v1/machines/{mine}/events")).await;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"allocate"), "{kinds:?}");
    for before in ["enroll", "inspect", "inspect_complete"] {
        assert!(!kinds.contains(&before), "{before} in {kinds:?}");
    }
    let (_, ev) = get(&otto, format!("/api/v1/machines/{mine}/events")).await;
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "enroll")
    );

    // Deploy: Alice may; the deployment's data is hers (and the operators'), not a viewer's,
    // nor Bob's.
    let image = s.disk_image().await;
    let (st, e) = s
        .post_as(
            &bob,
            &format!("/api/v1/machines/{mine}/actions/deploy"),
            json!({ "image": image }),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{e}");
    let (st, m) = s
        .post_as(
            &alice,
            &format!("/api/v1/machines/{mine}/actions/deploy"),
            json!({ "image": image, "user_data": "#cloud-config\nhostname: a\n", "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"] }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    assert!(m["bmc"].get("address").is_none(), "{m}");
    let (_, d) = get(&alice, format!("/api/v1/machines/{mine}/deployment")).await;
    assert!(d["instance_id"].is_string(), "{d}");
    assert_eq!(d["data"]["user_data"], "#cloud-config\nhostname: a\n");
    assert_eq!(
        d["data"]["ssh_authorized_keys"].as_array().unwrap().len(),
        1
    );
    let (_, d) = get(&otto, format!("/api/v1/machines/{mine}/deployment")).await;
    assert!(d["data"]["user_data"].is_string(), "{d}");
    let (st, d) = get(&vera, format!("/api/v1/machines/{mine}/deployment")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(d["instance_id"].is_null() && d["data"].is_null(), "{d}");
    assert_eq!(d["image"], image);
    let (st, _) = get(&bob, format!("/api/v1/machines/{mine}/deployment")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Power: her own machine, not another's; a viewer never.
    let power = |who: &str, id: &str| {
        let (s, who, path) = (&s, who.to_owned(), format!("/api/v1/machines/{id}/power"));
        async move { s.post_as(&who, &path, json!({ "action": "on" })).await }
    };
    assert_eq!(power(&alice, &mine).await.0, StatusCode::ACCEPTED);
    assert_eq!(power(&bob, &mine).await.0, StatusCode::NOT_FOUND);
    assert_eq!(power(&vera, &mine).await.0, StatusCode::FORBIDDEN);
    // Nothing else: enroll, inspect her own machine, pools, force an outcome.
    let (st, _) = s
        .post_as(
            &alice,
            "/api/v1/machines",
            json!({ "nics": [{ "mac": mac(69) }] }),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .post_as(
            &alice,
            &format!("/api/v1/machines/{mine}/actions/inspect"),
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call_as(
            reqwest::Method::PUT,
            &alice,
            "/api/v1/pools/t",
            Some(json!({ "wipe_method": "quick" })),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call_as(
            reqwest::Method::PUT,
            &otto,
            "/api/v1/pools/t",
            Some(json!({ "wipe_method": "quick" })),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "pools' wipe methods are the admins'"
    );
    let (st, _) = s
        .post_as(
            &alice,
            &format!("/api/v1/machines/{mine}/actions/deploy_complete"),
            json!({ "force": true, "reason": "x" }),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Release (the deploy finished: forced here, no agent): Bob may not release hers; she may.
    s.act(&mine, "deploy_complete").await;
    let alloc_id = alloc["id"].as_str().unwrap();
    let (st, _) = s
        .call_as(
            reqwest::Method::DELETE,
            &bob,
            &format!("/api/v1/allocations/{alloc_id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .call_as(
            reqwest::Method::DELETE,
            &alice,
            &format!("/api/v1/allocations/{alloc_id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    // Her machine is cleaned (forced here: no agent) and ready again; Bob allocating next
    // does not land on it, nor does Alice.
    s.act(&mine, "clean_complete").await;
    for who in [&bob, &alice] {
        let (st, a) = s
            .post_as(
                who,
                "/api/v1/allocations",
                json!({ "count": 1, "pool": "t" }),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{a}");
        assert_ne!(a["machines"][0]["id"], mine.as_str(), "{a}");
    }
}

/// Uploads are bounded (issue 17): by images.max_upload_bytes and the free space, whether or
/// not the client says the length up front, and a compressed disk image by what it
/// decompresses to. Nothing is left behind.
#[tokio::test]
async fn uploads_are_bounded() {
    let s = Server::start_with(
        |b| {
            b.max_upload_bytes = 1 << 20;
            b.max_raw_bytes = 4 << 20;
        },
        None,
    )
    .await;
    let put = |name: &str, q: &str| {
        s.http
            .put(format!("{}/api/v1/images/{name}?{q}", s.base))
            .bearer_auth(&s.admin)
    };
    // Declared too large: refused before a byte is written.
    let r = put("big", "kind=rootfs")
        .body(vec![7u8; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "image_too_large", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("images.max_upload_bytes"),
        "{e}"
    );
    // Streamed without a length: stopped once it passes the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..32).map(|_| Ok(vec![7u8; 64 * 1024])).collect();
    let r = put("streamed", "kind=rootfs")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    // The server may answer and close before the whole body is sent.
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "image_too_large", "{e}");
    }
    // A gzip bomb: 8 MiB of zeros in a few KiB, over the 4 MiB it may decompress to.
    let out = std::process::Command::new("sh")
        .args(["-c", "head -c 8388608 /dev/zero | gzip -c"])
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.len() < 64 * 1024);
    let r = put("bomb", "kind=disk-image&path=bomb.img.gz")
        .body(out.stdout)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "image_too_large", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("decompresses to more than"),
        "{e}"
    );
    // Nothing was registered, nothing is left under the images root.
    let (_, list) = s.call(reqwest::Method::GET, "/api/v1/images", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    let left = files_under(s.root.path());
    assert!(left.is_empty(), "{left:?}");
    // Within the limits, an upload works.
    let r = put("small", "kind=rootfs")
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}
