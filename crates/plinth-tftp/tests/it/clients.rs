//! The TFTP server against real clients (tftp-hpa's `tftp` and `atftp`), in network namespaces
//! this test creates and removes: the example server (`examples/tftpd.rs`, plinth-core's
//! resolver over a directory) runs in a server namespace on one end of a veth pair, the
//! clients in a client namespace on the other. Needs root, `ip`, tftp-hpa and atftp
//! (crates/plinth-testkit/PACKAGES).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use plinth_testkit::netns::{Lab, Ns, Proc};
use rand::RngCore;

const SERVER: &str = "10.98.0.1";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The example server, in the test executable's own target dir and profile
/// (target/<profile>/examples/, while this test runs from target/<profile>/deps/). `cargo test`
/// builds examples, but not when one test target is picked (`--test clients`), and then a
/// binary from an older build would be tested: so it is (re)built here, once per run, which
/// costs a link when it is up to date.
fn example_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable lives in target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("no profile directory above {}", exe.display()),
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "plinth-tftp", "--example", "tftpd"])
            .args(["--profile", profile])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build --example tftpd");
        assert!(status.success(), "cargo build --example tftpd failed");
        let bin = profile_dir.join("examples").join("tftpd");
        assert!(bin.is_file(), "{} is missing", bin.display());
        bin
    })
    .clone()
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

struct Env {
    lab: Lab,
    cli: Ns,
    root: PathBuf,
    server: Proc,
    /// Local files written by clients.
    n: std::cell::Cell<u32>,
}

impl Env {
    /// Namespaces, a veth pair, a root with `files`, and the server listening on SERVER:69.
    fn new(files: &[(&str, &[u8])]) -> Env {
        let mut lab = Lab::new().unwrap();
        let srv = lab.namespace("tftpsrv").unwrap();
        let cli = lab.namespace("tftpcli").unwrap();
        let (a, b) = lab.link(&srv, &cli).unwrap();
        lab.addr(&srv, &a, &format!("{SERVER}/24")).unwrap();
        lab.addr(&cli, &b, "10.98.0.2/24").unwrap();
        let root = lab.dir().join("root");
        std::fs::create_dir_all(&root).unwrap();
        for (name, content) in files {
            std::fs::write(root.join(name), content).unwrap();
        }
        let mut cmd = Command::new(example_bin());
        cmd.arg(&root)
            .arg(format!("{SERVER}:69"))
            .env("RUST_LOG", "plinth_tftp=debug,info");
        let server = lab.spawn_named(&srv, "tftpd", cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.log_text().contains("TFTP listening") {
            assert!(server.is_running(), "tftpd exited:\n{}", server.log_text());
            assert!(
                Instant::now() < deadline,
                "tftpd did not start:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Env {
            lab,
            cli,
            root,
            server,
            n: std::cell::Cell::new(0),
        }
    }

    fn local(&self, name: &str) -> PathBuf {
        self.n.set(self.n.get() + 1);
        self.lab
            .dir()
            .join(format!("got-{}-{}", self.n.get(), name.len()))
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.lab
            .run_timeout(&self.cli, program, args, CLIENT_TIMEOUT)
            .unwrap()
    }

    /// tftp-hpa in octet mode; returns what it wrote (None: no file) and its output.
    fn tftp_hpa(&self, name: &str, mode: &str) -> (Option<Vec<u8>>, String) {
        let local = self.local(name);
        let l = local.to_str().unwrap();
        let out = self.run("tftp", &["-m", mode, SERVER, "-c", "get", name, l]);
        (std::fs::read(&local).ok(), text(&out))
    }

    /// atftp with `options` ("blksize 1468", ...); returns what it wrote and its output.
    fn atftp(&self, name: &str, options: &[&str]) -> (Option<Vec<u8>>, String, bool) {
        let local = self.local(name);
        let mut args = vec!["--trace", "-g", "-r", name, "-l", local.to_str().unwrap()];
        for o in options {
            args.extend(["--option", o]);
        }
        args.push(SERVER);
        let out = self.run("atftp", &args);
        (std::fs::read(&local).ok(), text(&out), out.status.success())
    }

    fn log(&self) -> String {
        self.server.log_text()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts `got` is `want` without printing megabytes.
fn assert_same(got: Option<Vec<u8>>, want: &[u8], what: &str, output: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no file written; client said:\n{output}"));
    assert!(
        got == want,
        "{what}: got {} bytes, want {} (first difference at {:?}); client said:\n{output}",
        got.len(),
        want.len(),
        got.iter().zip(want).position(|(a, b)| a != b)
    );
}

#[test]
fn clients_fetch_byte_identical_files() {
    // `big` crosses the block-number wrap at 512-byte blocks (more than 65,535 blocks).
    let big = random(65_536 * 512 + 3_000);
    let one = random(512);
    let one_1468 = random(1468);
    let mid = random(3 * 1024 * 1024 + 17);
    let files: [(&str, &[u8]); 5] = [
        ("empty", &[]),
        ("one", &one),
        ("one-1468", &one_1468),
        ("mid", &mid),
        ("big", &big),
    ];
    let env = Env::new(&files);
    for (name, content) in files {
        let (got, out) = env.tftp_hpa(name, "octet");
        assert_same(got, content, &format!("tftp-hpa {name}"), &out);
        let (got, out, ok) = env.atftp(name, &[]);
        assert!(ok, "atftp {name}: {out}");
        assert_same(got, content, &format!("atftp {name}"), &out);
    }
    for options in [
        &["blksize 1468"][..],
        &["tsize 0"],
        &["windowsize 32"],
        &["blksize 1468", "windowsize 32", "tsize 0"],
    ] {
        for (name, content) in [("one-1468", &one_1468[..]), ("mid", &mid), ("big", &big)] {
            let (got, out, ok) = env.atftp(name, options);
            assert!(ok, "atftp {options:?} {name}: {out}");
            assert_same(got, content, &format!("atftp {options:?} {name}"), &out);
            // The options were granted, not ignored: the OACK carries them.
            let oack = out
                .lines()
                .find(|l| l.contains("received OACK"))
                .unwrap_or_else(|| panic!("no OACK for {options:?}:\n{out}"));
            for o in options {
                let (key, value) = o.split_once(' ').unwrap();
                let value = if key == "tsize" {
                    content.len().to_string()
                } else {
                    value.to_owned()
                };
                assert!(
                    oack.contains(&format!("{key}: {value}")),
                    "{options:?}: {oack}"
                );
            }
        }
    }
    let log = env.log();
    assert!(
        log.contains("file=mid blksize=1468 windowsize=32"),
        "no windowed transfer in the server log:\n{log}"
    );
    // The generated script, through the Content::Bytes path.
    let (got, out, ok) = env.atftp("boot.ipxe", &["blksize 1468"]);
    assert!(ok, "{out}");
    assert_same(
        got,
        format!("#!ipxe\nchain http://{SERVER}/boot/ipxe?mac=${{net0/mac}}\n").as_bytes(),
        "boot.ipxe",
        &out,
    );
    assert!(
        !log.contains("WARN"),
        "warnings during clean transfers:\n{log}"
    );
}

#[test]
fn traversal_is_refused() {
    let env = Env::new(&[("ok", b"fine")]);
    let secret = env.lab.dir().join("secret");
    std::fs::write(&secret, b"SECRET CONTENT").unwrap();
    std::os::unix::fs::symlink(&secret, env.root.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", env.root.join("passwd")).unwrap();
    let long = "a".repeat(300);
    let names = ["../secret", "/etc/passwd", "escape", "passwd", &long];
    for name in names {
        let (got, out) = env.tftp_hpa(name, "octet");
        assert!(
            got.unwrap_or_default().is_empty(),
            "tftp-hpa got content for {name:?}"
        );
        assert!(out.contains("Error code 2"), "tftp-hpa {name:?}: {out}");
        if name.len() <= 255 {
            // atftp cuts longer names itself.
            let (got, out, ok) = env.atftp(name, &["tsize 0"]);
            assert!(!ok, "atftp succeeded for {name:?}: {out}");
            assert!(
                got.unwrap_or_default().is_empty(),
                "atftp got content for {name:?}"
            );
            assert!(
                out.contains("error received from server"),
                "atftp {name:?}: {out}"
            );
        }
    }
    let log = env.log();
    for name in ["../secret", "/etc/passwd", "escape", "passwd"] {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(&format!("file=\"{name}\""))),
            "no warning for {name:?}:\n{log}"
        );
    }
    assert!(log.contains("file name longer than 255 bytes"), "{log}");
    assert!(!log.contains("TFTP transfer complete"), "{log}");
    // A plain miss is not hostile, and the server still serves.
    let (got, out) = env.tftp_hpa("ok", "octet");
    assert_same(got, b"fine", "ok after the refusals", &out);
}

#[test]
fn writes_and_netascii_are_refused() {
    let env = Env::new(&[("f", b"line\nline\n")]);
    let upload = env.lab.dir().join("upload");
    std::fs::write(&upload, b"payload").unwrap();
    let out = env.run(
        "tftp",
        &[
            "-m",
            "octet",
            SERVER,
            "-c",
            "put",
            upload.to_str().unwrap(),
            "new",
        ],
    );
    let out = text(&out);
    assert!(out.contains("Error code 2: read-only server"), "{out}");
    assert!(!env.root.join("new").exists());

    let (got, out) = env.tftp_hpa("f", "netascii");
    assert!(got.unwrap_or_default().is_empty());
    assert!(
        out.contains("Error code 4: netascii mode is not served, only octet"),
        "{out}"
    );
    let log = env.log();
    assert!(log.contains("reason=read-only server"), "{log}");
    assert!(!log.contains("TFTP transfer complete"), "{log}");
}
