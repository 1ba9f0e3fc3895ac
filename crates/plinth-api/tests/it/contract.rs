//! The API contract, checked by the tools a client developer would use, against a live plinth
//! on loopback and a real PostgreSQL:
//! - the served OpenAPI document validates (openapi-spec-validator);
//! - schemathesis' generated requests, for every operation with an admin token, get the answers
//!   the document promises (statuses, bodies, headers; schema-valid data accepted, invalid data
//!   refused), with a fixed seed;
//! - a Python client generated from the document (openapi-python-client) runs the README's tour
//!   (tests/contract/tour.py).
//!
//! The Python tools come from PyPI: the test command installs them into its venv (`PLINTH_VENV`,
//! default /var/cache/plinth-venv). A missing tool fails the test, saying so.
//! `PLINTH_CONTRACT_KEEP=DIR` keeps what the tools saw (the document, schemathesis' report, the
//! generated client) under DIR; `PLINTH_CONTRACT_SEED=N` runs schemathesis with another seed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plinth_core::boot::{BootSettings, Templates};
use plinth_core::{App, BmcKey, Principal};
use plinth_testkit::TestDb;
use plinth_types::Role;
use serde_json::Value;

/// The name of the admin token the tools use (tests/contract/schemathesis_hooks.py knows it).
const OWN_TOKEN: &str = "contract-admin";

/// plinth serving on 127.0.0.1, with an images root of its own.
struct Live {
    base: String,
    admin: String,
    _app: App,
    _db: TestDb,
    root: tempfile::TempDir,
}

impl Live {
    async fn start() -> Live {
        let db = TestDb::new().await.unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut settings = BootSettings::with_root(root.path().to_owned());
        // Generated uploads are small; a bound keeps a runaway one from filling the disk.
        settings.max_upload_bytes = 1 << 20;
        let app = App::new(
            db.pool.clone(),
            BmcKey::from_base64(&BmcKey::generate_base64()).unwrap(),
        )
        .with_boot(settings, Templates::load(None).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(plinth_api::serve(
            listener,
            app.clone(),
            std::future::pending(),
        ));
        let admin = app
            .create_token(&Principal::system(), OWN_TOKEN, Role::Admin)
            .await
            .unwrap()
            .secret;
        Live {
            base,
            admin,
            _app: app,
            _db: db,
            root,
        }
    }

    /// The document as served (no token needed), saved as `dir/openapi.json`.
    async fn document(&self, dir: &Path) -> (PathBuf, Value) {
        let resp = reqwest::get(format!("{}/api/v1/openapi.json", self.base))
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        let text = resp.text().await.unwrap();
        let path = dir.join("openapi.json");
        std::fs::write(&path, &text).unwrap();
        (path, serde_json::from_str(&text).unwrap())
    }
}

/// A program of the Python test tools' venv.
fn tool(name: &str) -> PathBuf {
    let p = venv().join("bin").join(name);
    assert!(
        p.is_file(),
        "{} not found: scripts/test.sh installs openapi-spec-validator, schemathesis and \
         openapi-python-client (PyPI) into the venv {} (PLINTH_VENV names another)",
        p.display(),
        venv().display()
    );
    p
}

fn venv() -> PathBuf {
    std::env::var_os("PLINTH_VENV").map_or_else(|| "/var/cache/plinth-venv".into(), PathBuf::from)
}

/// This test's files (the project's Python: the tour, schemathesis' hooks).
fn here(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/contract")
        .join(name)
}

/// Runs a program of the venv (its `bin` first on PATH) to its end, at most `limit`, and gives
/// its exit status and output (stdout, then stderr).
async fn run(cmd: &mut tokio::process::Command, limit: Duration) -> (bool, String) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![venv().join("bin")];
    paths.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(paths).unwrap())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} still running after {limit:?}"))
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{cmd:?}: {} in {:.1?}", out.status, started.elapsed());
    (out.status.success(), text)
}

/// With `PLINTH_CONTRACT_KEEP=DIR`, what the tools saw is copied to DIR/`name`.
fn keep(dir: &Path, name: &str) {
    let Some(to) = std::env::var_os("PLINTH_CONTRACT_KEEP") else {
        return;
    };
    let to = Path::new(&to).join(name);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir)
        .arg(&to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "copying {} to {}",
        dir.display(),
        to.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_validates() {
    let live = Live::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, doc) = live.document(dir.path()).await;
    keep(dir.path(), "document");
    let (ok, out) = run(
        tokio::process::Command::new(tool("openapi-spec-validator")).arg(&path),
        Duration::from_secs(120),
    )
    .await;
    // Its complaint quotes the whole document: the start says what.
    assert!(ok, "openapi-spec-validator: {out:.4000}");

    // What the validator cannot know: every operation says each answer it can give, with the
    // error body, and a parameter is where the handler reads it.
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let what = format!("{method} {path}");
            let answers = op["responses"].as_object().unwrap();
            let mut want = vec!["401", "403", "503"];
            let params = op["parameters"].as_array().map_or(&[][..], |p| &p[..]);
            if !params.is_empty() || op.get("requestBody").is_some() {
                want.push("400");
            }
            if path.contains('{') {
                want.push("404");
            }
            if op["requestBody"]["content"]["application/json"].is_object() {
                want.push("413");
            }
            for code in want {
                assert_eq!(
                    answers[code]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{what}: {code}"
                );
            }
            for p in params {
                let name = p["name"].as_str().unwrap();
                let place = p["in"].as_str().unwrap();
                let in_path = path.contains(&format!("{{{name}}}"));
                assert_eq!(
                    place == "path",
                    in_path,
                    "{what}: parameter {name} is declared in {place}"
                );
            }
        }
    }
    assert!(operations >= 45, "{operations} operations");
    // Constraints the server enforces are in the document.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["RackCreate"]["properties"]["height_u"]["maximum"],
        100
    );
    assert!(schemas["MacAddr"]["pattern"].is_string());
    assert!(schemas["Hostname"]["pattern"].is_string());
    let _ = &live.root;
}

/// What schemathesis leaves out (their document entries are still validated): the event
/// stream never ends (tests/it/stream.rs checks it); a BMC scan contacts the network its request
/// names, and the tests send traffic only to their own namespaces (tests/it/credentials.rs
/// scans one).
const NEVER_ENDS: &str = "/api/v1/events/stream";
const SCANS_A_NETWORK: &str = "create_scan";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_document_does_not_say() {
    let live = Live::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, doc) = live.document(dir.path()).await;
    // Another seed explores further (PLINTH_CONTRACT_SEED); the suite's is fixed.
    let seed = std::env::var("PLINTH_CONTRACT_SEED").unwrap_or_else(|_| "1".into());
    let (ok, out) = run(
        tokio::process::Command::new(tool("schemathesis"))
            .current_dir(dir.path())
            .env("PYTHONPATH", here(""))
            .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
            .arg("run")
            .arg(&path)
            .args(["--url", &live.base])
            .args(["--header", &format!("Authorization: Bearer {}", live.admin)])
            // Every check, every phase; a fixed seed, one worker, a bounded number of cases per
            // operation (some 2,800 requests in about 30 s).
            .args(["--checks", "all", "--seed", &seed, "--max-examples", "10"])
            .args(["--workers", "1", "--generation-database", "none"])
            // PostgreSQL text cannot hold NUL: plinth refuses it with 400 wherever it appears
            // (api.rs, `text_with_nul_is_refused`), and the document does not repeat that on
            // every string.
            .args(["--generation-allow-x00", "false"])
            .args(["--exclude-path", NEVER_ENDS])
            .args(["--exclude-operation-id", SCANS_A_NETWORK])
            .args(["--report", "junit", "--report-dir"])
            .arg(dir.path().join("report"))
            .args(["--no-color", "--output-truncate", "false"]),
        Duration::from_secs(600),
    )
    .await;
    keep(dir.path(), "schemathesis");
    assert!(ok, "schemathesis:\n{out}");
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| *path != NEVER_ENDS)
        .flat_map(|(_, item)| item.as_object().unwrap().values())
        .filter(|op| op["operationId"] != SCANS_A_NETWORK)
        .count();
    assert!(
        out.contains(&format!("Tested: {operations}\n")),
        "all {operations} operations tested:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_readme_tour() {
    let live = Live::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = live.document(dir.path()).await;
    let client = dir.path().join("plinth_client");
    let (ok, out) = run(
        tokio::process::Command::new(tool("openapi-python-client"))
            .current_dir(dir.path())
            .arg("generate")
            .arg("--path")
            .arg(&path)
            .args(["--meta", "none", "--fail-on-warning"])
            .arg("--output-path")
            .arg(&client),
        Duration::from_secs(120),
    )
    .await;
    assert!(ok, "openapi-python-client:\n{out}");
    assert!(client.join("api").is_dir(), "{out}");
    let (ok, out) = run(
        tokio::process::Command::new(tool("python3"))
            .current_dir(dir.path())
            .env("PYTHONPATH", dir.path())
            .arg(here("tour.py"))
            .arg(&live.base)
            .arg(&live.admin)
            .arg(live.root.path()),
        Duration::from_secs(120),
    )
    .await;
    keep(dir.path(), "client");
    assert!(ok, "the tour:\n{out}");
    assert!(out.contains("steps passed"), "{out}");
}
