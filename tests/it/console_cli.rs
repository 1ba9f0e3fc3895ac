//! `plinth machine console ID` from a terminal: the real `plinth` binary under a pseudo-terminal
//! (util-linux `script`), attached through a real plinth API to a real IPMI SOL console
//! (`ipmi_sim`, whose serial port the test holds). What the machine prints reaches the CLI's
//! stdout, a typed line reaches the serial port, `~B` is a break, `~.` leaves with status 0 and
//! the terminal as it was (SIGTERM restores it too); the same through a pipe; a viewer is refused.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plinth_testkit::api::TestApi;
use plinth_testkit::ipmi_sim::{IpmiSim, PASSWORD, SerialPort, USER};
use plinth_testkit::mac;
use plinth_types::Role;
use plinth_types::api::{Arch, BmcProtocol, BmcSpec, MachineCreate, NicSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::support::BIN;

const WITHIN: Duration = Duration::from_secs(20);

async fn machine(api: &TestApi, sim: &IpmiSim) -> Uuid {
    api.client()
        .enroll_machine(&MachineCreate {
            hostname: Some("node-1".into()),
            rack: None,
            rack_unit: None,
            size_u: None,
            pool: None,
            tags: None,
            arch: Some(Arch::X86_64),
            nics: vec![NicSpec {
                mac: mac(1),
                ipv4: None,
                pxe: None,
            }],
            bmc: Some(BmcSpec {
                protocol: BmcProtocol::Ipmi,
                address: sim.addr().to_string(),
                username: USER.into(),
                password: PASSWORD.into(),
                verify_tls: None,
                plain_http: None,
            }),
        })
        .await
        .unwrap()
        .id
}

/// A child whose stdout (and stderr) is collected as it comes.
struct Cli {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    /// The stdout and stderr readers: they end at EOF, which may come after the child is reaped.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Cli {
    fn start(mut cmd: Command) -> Cli {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            readers.push(tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        Cli {
            child,
            out,
            readers,
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    async fn wait_for(&self, want: &str) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        while !self.output().contains(want) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {want:?} from the CLI; it printed {:?}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn type_(&mut self, s: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(s.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for the CLI to end and for everything it printed to be read: the child can be
    /// reaped before the readers have drained its pipes.
    async fn exit(&mut self) -> std::process::ExitStatus {
        let status = tokio::time::timeout(WITHIN, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the CLI did not end; it printed {:?}", self.output()))
            .unwrap();
        for reader in std::mem::take(&mut self.readers) {
            tokio::time::timeout(WITHIN, reader)
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "the CLI's output did not end; it printed {:?}",
                        self.output()
                    )
                })
                .unwrap();
        }
        status
    }
}

/// The machine prints until the CLI shows it (ipmi_sim drops what the machine writes before SOL
/// is active on its side).
async fn machine_prints(serial: &mut SerialPort, cli: &Cli, text: &str) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !cli.output().contains(text) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{text:?} never reached the CLI; it printed {:?}",
            cli.output()
        );
        serial.write(text.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn cli(api: &TestApi, token: &str) -> Command {
    let mut cmd = Command::new("script");
    cmd.env("PLINTH_API_URL", &api.base)
        .env("PLINTH_TOKEN", token)
        .env_remove("PLINTH_CA_FILE");
    cmd
}

#[tokio::test]
async fn attach_from_a_terminal_type_break_and_leave() {
    let api = TestApi::start().await;
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let id = machine(&api, &sim).await;
    let ops = api.token("ops", Role::Operator).await;

    // The terminal's settings before and after, around the CLI, in one pseudo-terminal.
    let mut cmd = cli(&api, &ops);
    cmd.args([
        "-qfec",
        &format!(
            "echo before=$(stty -g); {BIN} machine console {id}; echo rc=$?; echo after=$(stty -g)"
        ),
        "/dev/null",
    ]);
    let mut term = Cli::start(cmd);
    term.wait_for(&format!("[plinth: attached to {id}; ~. to leave"))
        .await;
    term.wait_for("[plinth: viewers: ops]").await;
    term.wait_for("[plinth: console open]").await;

    machine_prints(&mut serial, &term, "login: ").await;

    // Raw mode: the line goes as typed (a CR, not a translated LF), and is not echoed by
    // the terminal (only the machine echoes; this one does not).
    term.type_("root\r").await;
    serial.expect(b"root\r", WITHIN).await.unwrap();
    assert!(!term.output().contains("root"), "{:?}", term.output());
    // A ~ in the middle of a line is a ~; ~~ at the start sends one; ~B is a break.
    // (ipmi_sim passes a break on with the next byte.)
    term.type_("a~b\r~~c\r~Bs").await;
    serial.expect(b"a~b\r~c\rs", WITHIN).await.unwrap();
    assert_eq!(serial.breaks(), &[12]);
    term.wait_for("[plinth: break sent]").await;
    term.type_("\r~?").await;
    serial.expect(b"s\r", WITHIN).await.unwrap();
    term.wait_for("~.  leave").await;

    term.type_("~.").await;
    let status = term.exit().await;
    let out = term.output();
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("rc=0"), "{out}");
    let setting = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {key} in {out:?}"))
    };
    assert_eq!(
        setting("before="),
        setting("after="),
        "the terminal restored"
    );
    // nothing typed after the break (the escapes themselves) reached the machine
    assert_eq!(serial.received(), b"root\ra~b\r~c\rs\r", "{out}");
}

/// SIGTERM (and the other ways out that are not `~.`) restores the terminal too.
#[tokio::test]
async fn a_signal_restores_the_terminal() {
    let api = TestApi::start().await;
    let (sim, _serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let id = machine(&api, &sim).await;
    let ops = api.token("ops", Role::Operator).await;
    let mut cmd = cli(&api, &ops);
    cmd.args([
        "-qfec",
        &format!(
            "echo before=$(stty -g); echo shell=$$; {BIN} machine console {id}; echo rc=$?; echo after=$(stty -g)"
        ),
        "/dev/null",
    ]);
    let mut term = Cli::start(cmd);
    term.wait_for("[plinth: console open]").await;
    let out = term.output();
    let shell: u32 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("shell="))
        .unwrap()
        .parse()
        .unwrap();
    // the shell's one child: the CLI
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
    let cli_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        std::fs::read_to_string(format!("/proc/{cli_pid}/cmdline"))
            .unwrap()
            .contains("console")
    );
    Command::new("kill")
        .args(["-TERM", &cli_pid.to_string()])
        .status()
        .await
        .unwrap();
    let status = term.exit().await;
    let out = term.output();
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("rc=1"), "{out}");
    assert!(out.contains("terminated (SIGTERM)"), "{out}");
    let setting = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {key} in {out:?}"))
    };
    assert_eq!(
        setting("before="),
        setting("after="),
        "the terminal restored"
    );
}

#[tokio::test]
async fn a_pipe_types_lines_and_leaves_and_a_viewer_is_refused() {
    let api = TestApi::start().await;
    let (sim, mut serial) = IpmiSim::start_with_sol(None).await.unwrap();
    let id = machine(&api, &sim).await;
    let ops = api.token("ops", Role::Operator).await;
    let viewer = api.token("watcher", Role::Viewer).await;

    let mut cmd = Command::new(BIN);
    cmd.args(["machine", "console", &id.to_string()])
        .env("PLINTH_API_URL", &api.base)
        .env("PLINTH_TOKEN", &viewer);
    let refused = Cli::start(cmd);
    let mut refused = refused;
    let status = refused.exit().await;
    assert!(!status.success());
    let out = refused.output();
    assert!(out.contains("HTTP 403"), "{out}");
    assert!(!out.contains("[plinth: attached"), "{out}");

    // A script: no terminal, so no raw mode; lines go as they are, and ~. leaves.
    let mut cmd = Command::new(BIN);
    cmd.args(["machine", "console", &id.to_string()])
        .env("PLINTH_API_URL", &api.base)
        .env("PLINTH_TOKEN", &ops);
    let mut pipe = Cli::start(cmd);
    pipe.wait_for("[plinth: console open]").await;
    machine_prints(&mut serial, &pipe, "$ ").await;
    // more than one message's worth and faster than the API takes it at once: paced, all sent
    let long = "x".repeat(40_000);
    pipe.type_("echo hi\n").await;
    serial
        .expect(b"echo hi\n", WITHIN)
        .await
        .unwrap_or_else(|e| panic!("{e:#}; the CLI printed {:?}", pipe.output()));
    // Leaving right after the paste: what was typed before `~.` still reaches the machine
    // (plinth writes a viewer's queued input before it closes the session).
    pipe.type_(&format!("{long}\n~.")).await;
    let status = pipe.exit().await;
    let out = pipe.output();
    serial
        .expect(format!("echo hi\n{long}\n").as_bytes(), WITHIN)
        .await
        .unwrap_or_else(|e| panic!("{e:#}; the CLI printed {out:?}"));
    assert!(status.success(), "{status}: {out}");
    assert!(!out.contains("error:"), "no input refused: {out}");
    assert_eq!(serial.received(), format!("echo hi\n{long}\n").as_bytes());
}
