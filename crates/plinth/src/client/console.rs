//! `plinth machine console ID`: a machine's serial console in this terminal, over the API's
//! console WebSocket.
//!
//! Like ssh and `ipmitool sol activate`: the terminal is put in raw mode (every key goes to the
//! machine, Ctrl-C included) and restored on every way out, and `~` after a newline (or first)
//! starts an escape: `~.` leaves (once what was typed before it is sent), `~B` sends a break, `~?` lists them, `~~` sends a `~`.
//! What the machine prints goes to stdout unchanged; what plinth says (the session's state, who
//! is attached, refused input) goes to stderr, one `[plinth: ...]` line each.
//!
//! When stdin is not a terminal (a pipe, a file) nothing is put in raw mode and the escapes
//! still work, so a script can type lines and leave with `~.`; at the end of its input the
//! console stays attached (showing output) until plinth closes it, `~.`, or a signal.
//!
//! Input is paced below the API's limit (at most 4096 bytes a message, 8 KiB/s per viewer), so a
//! paste or a piped file is sent whole rather than refused in part.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::Context;
use plinth_client::console::{ConsoleMessage, INPUT_RATE, MAX_INPUT};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Api;

const HELP: &str = "supported escapes (after a newline):\n  ~.  leave\n  ~B  send a break\n  ~?  this help\n  ~~  send a ~";

/// What a key (or a run of them) asks for.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Send(Vec<u8>),
    Break,
    Help,
    Leave,
}

/// The escape sequences, sans-IO: bytes in, actions out. `~` is held at the start of a line
/// until the next byte says what it is.
#[derive(Debug)]
struct Escapes {
    line_start: bool,
    tilde: bool,
}

impl Escapes {
    fn new() -> Escapes {
        Escapes {
            line_start: true,
            tilde: false,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        let mut send = Vec::new();
        for &b in bytes {
            if std::mem::take(&mut self.tilde) {
                let action = match b {
                    b'.' => Some(Action::Leave),
                    b'B' => Some(Action::Break),
                    b'?' => Some(Action::Help),
                    b'~' => {
                        send.push(b'~');
                        self.line_start = false;
                        None
                    }
                    _ => {
                        send.extend_from_slice(&[b'~', b]);
                        self.line_start = matches!(b, b'\r' | b'\n');
                        None
                    }
                };
                if let Some(a) = action {
                    if !send.is_empty() {
                        out.push(Action::Send(std::mem::take(&mut send)));
                    }
                    let leave = a == Action::Leave;
                    out.push(a);
                    if leave {
                        return out;
                    }
                    // after a command escape, still at the start of a line
                    self.line_start = true;
                }
                continue;
            }
            if self.line_start && b == b'~' {
                self.tilde = true;
                continue;
            }
            send.push(b);
            self.line_start = matches!(b, b'\r' | b'\n');
        }
        if !send.is_empty() {
            out.push(Action::Send(send));
        }
        out
    }
}

/// The terminal in raw mode while this lives; restored when it is dropped (returning, an error,
/// a panic unwinding).
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let saved = rustix::termios::tcgetattr(fd).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Flush, &raw)
            .context("putting the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        rustix::termios::tcsetattr(
            stdin.as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        )
        .ok();
    }
}

/// Prints what plinth says on stderr, one bracketed line (in raw mode the terminal does not turn
/// LF into CR LF: that is done here).
fn say(raw: bool, what: &str) {
    let mut err = std::io::stderr().lock();
    if raw {
        let what = what.replace('\n', "\r\n");
        write!(err, "\r[plinth: {what}]\r\n").ok();
    } else {
        writeln!(err, "[plinth: {what}]").ok();
    }
    err.flush().ok();
}

/// Reads stdin on a thread of its own (a blocking read that must not hold the runtime when the
/// console ends) and sends what it reads; `None` at the end of input.
fn read_stdin() -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; MAX_INPUT];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    tx.blocking_send(None).ok();
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// A token bucket a little under the API's: how long to wait before sending `n` more bytes.
struct Pace {
    tokens: f64,
    at: tokio::time::Instant,
}

impl Pace {
    const RATE: f64 = INPUT_RATE as f64 * 0.9;
    const BURST: f64 = 16384.0;

    fn new() -> Pace {
        Pace {
            tokens: Self::BURST,
            at: tokio::time::Instant::now(),
        }
    }

    fn take(&mut self, n: usize) -> Duration {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * Self::RATE).min(Self::BURST);
        self.at = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / Self::RATE)
        }
    }
}

/// How much input may wait to be sent before stdin is no longer read.
const QUEUE: usize = 64 * 1024;

/// Input as it may go: chunks of at most [`MAX_INPUT`] bytes, and breaks, paced.
enum Input {
    Bytes(Vec<u8>),
    Break,
}

pub async fn attach(api: &Api, id: Uuid) -> anyhow::Result<()> {
    let mut console = api.client.console(id).await?;
    let tty = std::io::stdin().is_terminal();
    let raw = if tty { Some(RawMode::enter()?) } else { None };
    let is_raw = raw.is_some();
    say(
        is_raw,
        &format!("attached to {id}; ~. to leave, ~? for help"),
    );
    let result = run(&mut console, is_raw).await;
    drop(raw);
    if let Ok(Some(why)) = &result {
        say(false, why);
    }
    console.close().await;
    result.map(|_| ())
}

/// The session: returns why it ended when that is worth a line, or the error.
async fn run(
    console: &mut plinth_client::console::Console,
    raw: bool,
) -> anyhow::Result<Option<&'static str>> {
    let mut stdin = read_stdin();
    let mut stdin_open = true;
    let mut escapes = Escapes::new();
    // Input waits here, paced, so that output keeps flowing while it is sent; stdin is read
    // only while little waits (a piped file is not read into memory whole).
    let (input_tx, mut input_rx) = mpsc::unbounded_channel::<Input>();
    // Dropped on `~.`: the pacer sends what waits, then ends, and so does the session.
    let mut input_tx = Some(input_tx);
    let (paced_tx, mut paced) = mpsc::channel::<Input>(1);
    let _forward = AbortOnDrop(tokio::spawn(async move {
        let mut pace = Pace::new();
        while let Some(i) = input_rx.recv().await {
            if let Input::Bytes(b) = &i {
                tokio::time::sleep(pace.take(b.len())).await;
            }
            if paced_tx.send(i).await.is_err() {
                return;
            }
        }
    }));
    let mut queued = 0usize;

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            m = console.next() => match m? {
                None => return Ok(Some("the console was closed by plinth")),
                Some(ConsoleMessage::Output(b)) => {
                    stdout.write_all(&b)?;
                    stdout.flush()?;
                }
                Some(ConsoleMessage::Status { state, reason }) => match reason {
                    Some(r) => say(raw, &format!("console {state}: {r}")),
                    None => say(raw, &format!("console {state}")),
                },
                Some(ConsoleMessage::Viewers(v)) => say(raw, &format!("viewers: {}", v.join(", "))),
                Some(ConsoleMessage::Lagged(n)) => {
                    say(raw, &format!("fell behind: {n} chunks of output skipped"));
                }
                Some(ConsoleMessage::Error { code, message }) => {
                    say(raw, &format!("error: {message} ({code})"));
                }
            },
            i = paced.recv() => match i {
                Some(Input::Bytes(b)) => {
                    queued -= b.len();
                    console.send(&b).await?;
                }
                Some(Input::Break) => console.send_break().await?,
                // all input sent after `~.`
                None => return Ok(None),
            },
            bytes = stdin.recv(), if stdin_open && queued < QUEUE => match bytes.flatten() {
                None => stdin_open = false,
                Some(bytes) => {
                    let Some(tx) = &input_tx else { continue };
                    let mut leave = false;
                    for action in escapes.feed(&bytes) {
                        match action {
                            Action::Send(b) => {
                                queued += b.len();
                                for chunk in b.chunks(MAX_INPUT) {
                                    tx.send(Input::Bytes(chunk.to_vec())).ok();
                                }
                            }
                            Action::Break => {
                                tx.send(Input::Break).ok();
                                say(raw, "break sent");
                            }
                            Action::Help => say(raw, HELP),
                            Action::Leave => leave = true,
                        }
                    }
                    if leave {
                        stdin_open = false;
                        input_tx = None;
                    }
                }
            },
            _ = sigterm.recv() => anyhow::bail!("terminated (SIGTERM)"),
            _ = sigint.recv() => anyhow::bail!("interrupted (SIGINT)"),
            _ = sighup.recv() => anyhow::bail!("the terminal hung up (SIGHUP)"),
            _ = sigquit.recv() => anyhow::bail!("quit (SIGQUIT)"),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(e: &mut Escapes, s: &str) -> Vec<Action> {
        e.feed(s.as_bytes())
    }

    fn send(s: &str) -> Action {
        Action::Send(s.as_bytes().to_vec())
    }

    #[test]
    fn escapes_after_a_newline_or_first() {
        let mut e = Escapes::new();
        assert_eq!(feed(&mut e, "~."), vec![Action::Leave]);
        let mut e = Escapes::new();
        assert_eq!(
            feed(&mut e, "ls\r~B~?x"),
            vec![send("ls\r"), Action::Break, Action::Help, send("x")]
        );
        assert_eq!(feed(&mut e, "a~.b"), vec![send("a~.b")]);
        assert_eq!(feed(&mut e, "\n~~.\r"), vec![send("\n~.\r")]);
        // a ~ that is not an escape goes out with what follows it
        assert_eq!(feed(&mut e, "~x~."), vec![send("~x~.")]);
        // split over reads
        let mut e = Escapes::new();
        assert_eq!(feed(&mut e, "ok\n~"), vec![send("ok\n")]);
        assert_eq!(feed(&mut e, "."), vec![Action::Leave]);
        // what follows ~. is not sent
        let mut e = Escapes::new();
        assert_eq!(
            feed(&mut e, "a\r~.rm -rf /\r"),
            vec![send("a\r"), Action::Leave]
        );
        // ~ then a newline: both sent, and the line starts again
        let mut e = Escapes::new();
        assert_eq!(feed(&mut e, "~\r~."), vec![send("~\r"), Action::Leave]);
    }

    #[test]
    fn input_is_paced_under_the_apis_rate() {
        let mut p = Pace::new();
        assert_eq!(p.take(16384), Duration::ZERO);
        let wait = p.take(4096);
        assert!(wait > Duration::from_millis(500), "{wait:?}");
        assert!(wait < Duration::from_millis(600), "{wait:?}");
    }
}
