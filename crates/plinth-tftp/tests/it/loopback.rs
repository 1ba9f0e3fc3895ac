//! The server in this process on 127.0.0.1, against a client written here packet by packet:
//! the behaviours no stock client shows on demand (aborting after the OACK as UEFI firmware
//! does, vanishing mid-transfer, duplicate ACKs, a full server).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plinth_tftp::packet::{self, ErrorCode, Mode, Options, Packet};
use plinth_tftp::{Config, Content, Counters, Refusal, Server, Snapshot, Source};
use rand::RngCore;
use tokio::net::UdpSocket;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// What [`Source::transferred`] was told: (name, peer, sent, size, complete).
type Transferred = (String, SocketAddr, u64, u64, bool);

struct Mem(HashMap<String, Vec<u8>>, std::sync::Mutex<Vec<Transferred>>);

impl Source for Mem {
    fn transferred(&self, name: &str, peer: SocketAddr, sent: u64, size: u64, complete: bool) {
        let t = (name.to_owned(), peer, sent, size, complete);
        self.1.lock().unwrap().push(t);
    }

    async fn open(&self, name: &str, _peer: SocketAddr) -> Result<Content, Refusal> {
        match self.0.get(name) {
            Some(b) => Ok(Content::Bytes(b.clone())),
            None => Err(Refusal::new(ErrorCode::FileNotFound, "file not found")),
        }
    }
}

struct Running {
    addr: SocketAddr,
    source: Arc<Mem>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
    }

    fn counters(&self) -> Snapshot {
        self.counters.snapshot()
    }

    /// Waits until the counters satisfy `f` (transfers end asynchronously).
    async fn wait_for(&self, what: &str, f: impl Fn(&Snapshot) -> bool) {
        for _ in 0..500 {
            if f(&self.counters()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: counters {:?}", self.counters());
    }
}

async fn start(cfg: Config, files: &[(&str, Vec<u8>)]) -> Running {
    let source = Arc::new(Mem(
        files
            .iter()
            .map(|(n, c)| ((*n).to_owned(), c.clone()))
            .collect(),
        Default::default(),
    ));
    let server = Server::bind(
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..cfg
        },
        source.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let counters = server.counters();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server.serve(cancel.clone()));
    Running {
        addr,
        source,
        counters,
        cancel,
        task,
    }
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

fn rrq(name: &str, options: Options) -> Vec<u8> {
    Packet::Rrq {
        filename: name.into(),
        mode: Mode::Octet,
        options,
    }
    .encode()
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// The next packet and where it came from, or a panic after `wait`.
async fn recv(sock: &UdpSocket, wait: Duration) -> (Packet, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = timeout(wait, sock.recv_from(&mut buf))
        .await
        .expect("no packet in time")
        .unwrap();
    (packet::parse(&buf[..n]).unwrap(), from)
}

/// Whether a packet arrives within `wait`.
async fn quiet(sock: &UdpSocket, wait: Duration) -> Option<Packet> {
    let mut buf = vec![0u8; 70_000];
    match timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(r) => Some(packet::parse(&buf[..r.unwrap().0]).unwrap()),
        Err(_) => None,
    }
}

async fn send(sock: &UdpSocket, p: &Packet, to: SocketAddr) {
    sock.send_to(&p.encode(), to).await.unwrap();
}

/// A complete RFC 7440 client: requests `name` with `options`, acknowledges every window
/// (and, on a gap, the last block in order), returns the content.
async fn fetch(server: SocketAddr, name: &str, options: Options) -> Vec<u8> {
    let sock = client().await;
    fetch_on(&sock, server, name, options).await
}

async fn fetch_on(sock: &UdpSocket, server: SocketAddr, name: &str, options: Options) -> Vec<u8> {
    let wait = Duration::from_secs(5);
    sock.send_to(&rrq(name, options.clone()), server)
        .await
        .unwrap();
    let (mut p, tid) = recv(sock, wait).await;
    let mut blksize = 512usize;
    let mut window = 1u16;
    if let Packet::Oack { options: granted } = &p {
        blksize = granted.blksize.map_or(512, usize::from);
        window = granted.windowsize.unwrap_or(1);
        send(sock, &Packet::Ack { block: 0 }, tid).await;
        p = recv(sock, wait).await.0;
    }
    let mut out = Vec::new();
    let mut expected = 1u16;
    let mut in_window = 0u16;
    loop {
        let Packet::Data { block, data } = p else {
            panic!("expected DATA, got {p:?}");
        };
        if block == expected {
            out.extend_from_slice(&data);
            in_window += 1;
            let last = data.len() < blksize;
            if last || in_window == window {
                send(sock, &Packet::Ack { block }, tid).await;
                in_window = 0;
            }
            if last {
                return out;
            }
            expected = expected.wrapping_add(1);
        } else if block != expected.wrapping_sub(1) {
            // A gap: acknowledge what arrived in order (RFC 7440).
            send(
                sock,
                &Packet::Ack {
                    block: expected.wrapping_sub(1),
                },
                tid,
            )
            .await;
            in_window = 0;
        }
        p = recv(sock, wait).await.0;
    }
}

fn uefi_options() -> Options {
    Options {
        blksize: Some(1468),
        tsize: Some(0),
        windowsize: Some(4),
        timeout: None,
    }
}

#[tokio::test]
async fn aborted_after_oack_then_retried() {
    let file = random(100_000);
    let s = start(Config::default(), &[("snponly.efi", file.clone())]).await;
    // EDK2: a tsize probe, the OACK, ERROR 8, then the real request from the same port.
    let sock = client().await;
    sock.send_to(&rrq("snponly.efi", uefi_options()), s.addr)
        .await
        .unwrap();
    let (oack, tid) = recv(&sock, Duration::from_secs(5)).await;
    assert_eq!(
        oack,
        Packet::Oack {
            options: Options {
                blksize: Some(1468),
                tsize: Some(100_000),
                windowsize: Some(4),
                timeout: None,
            }
        }
    );
    assert_ne!(tid, s.addr, "the transfer runs on its own port");
    let abort = Packet::Error {
        code: ErrorCode::OptionsRefused,
        message: "tsize probe".into(),
    };
    send(&sock, &abort, tid).await;
    assert_eq!(
        fetch_on(&sock, s.addr, "snponly.efi", uefi_options()).await,
        file
    );
    s.wait_for("one ended by the client, one complete", |c| {
        c.failed == 1 && c.completed == 1 && c.active == 0
    })
    .await;

    // The same, but the firmware goes silent after the OACK and asks again from a new port.
    let silent = client().await;
    silent
        .send_to(&rrq("snponly.efi", uefi_options()), s.addr)
        .await
        .unwrap();
    assert!(matches!(
        recv(&silent, Duration::from_secs(5)).await.0,
        Packet::Oack { .. }
    ));
    assert_eq!(fetch(s.addr, "snponly.efi", uefi_options()).await, file);
    s.wait_for("the second retry complete", |c| c.completed == 2)
        .await;
    assert_eq!(s.counters().active, 1, "the silent probe still waits");
    drop(silent);
    s.stop().await;
}

/// The source hears of each transfer's end, with the bytes acknowledged: what plinth notes as
/// the machine's last fetch (issue 22).
#[tokio::test]
async fn the_source_hears_what_each_transfer_sent() {
    let cfg = Config {
        retries: 1,
        timeout: Duration::from_millis(100),
        ..Config::default()
    };
    let file = random(4096);
    let s = start(cfg, &[("f", file.clone())]).await;
    let whole = client().await;
    assert_eq!(
        fetch_on(&whole, s.addr, "f", Options::default()).await,
        file
    );
    s.wait_for("complete", |c| c.completed == 1).await;
    let peer = whole.local_addr().unwrap();
    assert_eq!(
        *s.source.1.lock().unwrap(),
        vec![("f".to_owned(), peer, 4096, 4096, true)]
    );
    // A client that acknowledges one block of 512 bytes, then falls silent.
    let part = client().await;
    part.send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    let (_, tid) = recv(&part, Duration::from_secs(5)).await;
    send(&part, &Packet::Ack { block: 1 }, tid).await;
    s.wait_for("given up", |c| c.failed == 1).await;
    let peer = part.local_addr().unwrap();
    assert_eq!(
        s.source.1.lock().unwrap()[1..],
        [("f".to_owned(), peer, 512, 4096, false)]
    );
    s.stop().await;
}

#[tokio::test]
async fn silent_client_is_given_up_and_its_slot_returned() {
    let cfg = Config {
        max_transfers: 1,
        retries: 2,
        timeout: Duration::from_millis(100),
        ..Config::default()
    };
    let file = random(4096);
    let s = start(cfg, &[("f", file.clone())]).await;
    // A client that never answers (or an address forged into a request): its first packet,
    // once, and nothing more.
    let never = client().await;
    never
        .send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    let (first, _) = recv(&never, Duration::from_secs(5)).await;
    assert!(matches!(first, Packet::Data { block: 1, .. }));
    assert_eq!(quiet(&never, Duration::from_millis(600)).await, None);
    s.wait_for("given up at the first timeout", |c| {
        c.failed == 1 && c.active == 0 && c.retransmits == 0
    })
    .await;
    // A client that answered and then fell silent: DATA 2 again after 100 ms and 200 ms,
    // then nothing.
    let sock = client().await;
    sock.send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    let (_, tid) = recv(&sock, Duration::from_secs(5)).await;
    send(&sock, &Packet::Ack { block: 1 }, tid).await;
    let (second, _) = recv(&sock, Duration::from_secs(5)).await;
    assert!(matches!(second, Packet::Data { block: 2, .. }));
    for _ in 0..2 {
        let (again, _) = recv(&sock, Duration::from_secs(2)).await;
        assert_eq!(again, second);
    }
    assert_eq!(quiet(&sock, Duration::from_millis(600)).await, None);
    s.wait_for("the transfer failed and its slot came back", |c| {
        c.failed == 2 && c.active == 0 && c.retransmits == 2
    })
    .await;
    // The only slot is free again.
    assert_eq!(fetch(s.addr, "f", Options::default()).await, file);
    s.stop().await;
}

#[tokio::test]
async fn one_address_gets_a_few_transfers_at_once() {
    let cfg = Config {
        max_transfers_per_peer: 2,
        ..Config::default()
    };
    let file = random(4096);
    let s = start(cfg, &[("f", file.clone())]).await;
    // Two transfers to 127.0.0.1 waiting on their first ACK...
    let mut held = Vec::new();
    for _ in 0..2 {
        let c = client().await;
        c.send_to(&rrq("f", Options::default()), s.addr)
            .await
            .unwrap();
        recv(&c, Duration::from_secs(5)).await;
        held.push(c);
    }
    // ...and a third is turned away, from the listening port.
    let third = client().await;
    third
        .send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    let (busy, from) = recv(&third, Duration::from_secs(5)).await;
    assert_eq!(
        busy,
        Packet::Error {
            code: ErrorCode::NotDefined,
            message: "server busy: too many transfers to your address".into()
        }
    );
    assert_eq!(from, s.addr);
    // Another address is served meanwhile.
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    assert_eq!(
        fetch_on(&other, s.addr, "f", Options::default()).await,
        file
    );
    // Once the held ones end (their 1 s first timeout, unanswered), 127.0.0.1 is served again.
    s.wait_for("the held transfers ended", |c| c.active == 0)
        .await;
    assert_eq!(fetch(s.addr, "f", Options::default()).await, file);
    drop(held);
    s.stop().await;
}

#[tokio::test]
async fn a_long_client_timeout_is_not_granted() {
    let s = start(Config::default(), &[("f", random(100))]).await;
    let sock = client().await;
    for (asked, granted) in [(5u8, Some(5u8)), (10, Some(10)), (11, None), (255, None)] {
        let options = Options {
            timeout: Some(asked),
            tsize: Some(0),
            ..Default::default()
        };
        sock.send_to(&rrq("f", options), s.addr).await.unwrap();
        let (oack, tid) = recv(&sock, Duration::from_secs(5)).await;
        assert_eq!(
            oack,
            Packet::Oack {
                options: Options {
                    timeout: granted,
                    tsize: Some(100),
                    ..Default::default()
                }
            },
            "timeout {asked}"
        );
        let abort = Packet::Error {
            code: ErrorCode::OptionsRefused,
            message: "done".into(),
        };
        send(&sock, &abort, tid).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn vanished_client_is_cleaned_up_at_once() {
    let cfg = Config {
        max_transfers: 1,
        retries: 5,
        timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let file = random(4096);
    let s = start(cfg, &[("f", file.clone())]).await;
    let sock = client().await;
    sock.send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    recv(&sock, Duration::from_secs(5)).await;
    // The client's port closes: the first retransmission meets ICMP port unreachable, and the
    // transfer ends long before its 5 retries (0.2 + 0.4 + ... = 12.6 s) would run out.
    drop(sock);
    s.wait_for("failed without waiting out the retries", |c| {
        c.failed == 1 && c.active == 0
    })
    .await;
    assert!(s.counters().retransmits <= 2, "{:?}", s.counters());
    assert_eq!(fetch(s.addr, "f", Options::default()).await, file);
    s.stop().await;
}

#[tokio::test]
async fn duplicate_acks_do_not_trigger_retransmission() {
    let file = random(512 * 4 + 10);
    let s = start(Config::default(), &[("f", file.clone())]).await;
    let sock = client().await;
    sock.send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    let (p, tid) = recv(&sock, Duration::from_secs(5)).await;
    assert!(matches!(p, Packet::Data { block: 1, .. }));
    send(&sock, &Packet::Ack { block: 1 }, tid).await;
    send(&sock, &Packet::Ack { block: 1 }, tid).await;
    send(&sock, &Packet::Ack { block: 1 }, tid).await;
    assert!(matches!(
        recv(&sock, Duration::from_secs(5)).await.0,
        Packet::Data { block: 2, .. }
    ));
    // The retransmit timeout is 1 s: within half of it, nothing more may come.
    assert_eq!(quiet(&sock, Duration::from_millis(500)).await, None);
    assert_eq!(s.counters().retransmits, 0);
    s.stop().await;
}

/// Every slot taken: a request waits for one, silently (PXE firmware takes an ERROR as the
/// end of its boot), and is served when one frees; its client's repeat does not queue twice;
/// beyond the wait queue a request goes unanswered, and its client's next try is served.
#[tokio::test]
async fn a_full_server_keeps_requests_waiting_and_answers_no_error() {
    let cfg = Config {
        max_transfers: 1,
        max_waiting: 1,
        ..Config::default()
    };
    let file = random(2000);
    let s = start(cfg, &[("f", file.clone())]).await;
    let hog = client().await;
    hog.send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    let (_, tid) = recv(&hog, Duration::from_secs(5)).await;

    let waiter = client().await;
    waiter
        .send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    s.wait_for("the request waits", |c| c.waited == 1).await;
    assert_eq!(quiet(&waiter, Duration::from_millis(300)).await, None);
    // Its client sends it again: still one request waiting.
    waiter
        .send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    s.wait_for("the repeat is left unanswered", |c| c.unanswered == 1)
        .await;
    // The queue is full: a third client's request goes unanswered, without an ERROR.
    let third = client().await;
    third
        .send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    s.wait_for("the third is left unanswered", |c| c.unanswered == 2)
        .await;
    assert_eq!(quiet(&third, Duration::from_millis(300)).await, None);
    assert_eq!(quiet(&waiter, Duration::from_millis(10)).await, None);

    // The hog gives up; the waiting request gets the slot and its whole file.
    send(
        &hog,
        &Packet::Error {
            code: ErrorCode::NotDefined,
            message: "bye".into(),
        },
        tid,
    )
    .await;
    let mut got = Vec::new();
    loop {
        let (p, from) = recv(&waiter, Duration::from_secs(5)).await;
        assert_ne!(from, s.addr, "DATA comes from the transfer's own port");
        let Packet::Data { block, data } = p else {
            panic!("expected DATA, got {p:?}");
        };
        got.extend_from_slice(&data);
        send(&waiter, &Packet::Ack { block }, from).await;
        if data.len() < 512 {
            break;
        }
    }
    assert_eq!(got, file);
    // The third client tries again and is served.
    assert_eq!(
        fetch_on(&third, s.addr, "f", Options::default()).await,
        file
    );
    let c = s.counters();
    assert_eq!(
        (c.busy, c.waited, c.unanswered, c.peak_active),
        (0, 1, 2, 1)
    );
    s.stop().await;
}

#[tokio::test]
async fn windowed_transfer_with_wrap_and_refusals() {
    // More than 65,535 blocks of 8 bytes, 16 per window.
    let big = random(70_000 * 8 + 5);
    let exact = random(1024);
    let s = start(
        Config {
            max_windowsize: 16,
            ..Config::default()
        },
        &[("big", big.clone()), ("exact", exact.clone())],
    )
    .await;
    let opts = Options {
        blksize: Some(8),
        windowsize: Some(64),
        ..Options::default()
    };
    assert_eq!(fetch(s.addr, "big", opts).await, big);
    // Exactly two blocks: a third, empty DATA ends the transfer.
    assert_eq!(fetch(s.addr, "exact", Options::default()).await, exact);

    let sock = client().await;
    for (request, code) in [
        (rrq("missing", Options::default()), ErrorCode::FileNotFound),
        (
            Packet::Wrq {
                filename: "f".into(),
                mode: Mode::Octet,
            }
            .encode(),
            ErrorCode::AccessViolation,
        ),
        (
            Packet::Rrq {
                filename: "big".into(),
                mode: Mode::Netascii,
                options: Options::default(),
            }
            .encode(),
            ErrorCode::IllegalOperation,
        ),
        (
            b"\x00\x01big\x00octet\x00blksize\x007\x00".to_vec(),
            ErrorCode::OptionsRefused,
        ),
    ] {
        sock.send_to(&request, s.addr).await.unwrap();
        let (p, _) = recv(&sock, Duration::from_secs(5)).await;
        assert!(
            matches!(p, Packet::Error { code: c, .. } if c == code),
            "{p:?}"
        );
    }
    let c = s.counters();
    assert_eq!((c.completed, c.refused, c.failed), (2, 4, 0), "{c:?}");
    assert_eq!(c.bytes, (big.len() + exact.len()) as u64);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_ends_transfers_in_progress() {
    let s = start(Config::default(), &[("f", random(10_000))]).await;
    let sock = client().await;
    sock.send_to(&rrq("f", Options::default()), s.addr)
        .await
        .unwrap();
    recv(&sock, Duration::from_secs(5)).await;
    let counters = s.counters.clone();
    timeout(Duration::from_secs(5), s.stop())
        .await
        .expect("serve returns promptly on cancel");
    let c = counters.snapshot();
    assert_eq!((c.failed, c.active), (1, 0), "{c:?}");
    // The client is told rather than left to time out.
    assert_eq!(
        recv(&sock, Duration::from_secs(1)).await.0,
        Packet::Error {
            code: ErrorCode::NotDefined,
            message: "server shutting down".into()
        }
    );
}

/// Windows of Ethernet-sized blocks leave in one segmented send each (UDP GSO, which loopback
/// supports): the client must still see one DATA per datagram, in order, byte-identical, also
/// when the file ends in a short block inside a window.
#[tokio::test]
async fn segmented_windows_arrive_as_single_packets() {
    let data = random(3 * 1024 * 1024 + 777);
    let s = start(Config::default(), &[("f", data.clone())]).await;
    for (blksize, windowsize) in [(1428, 16), (1468, 64), (512, 8), (1024, 3)] {
        let opts = Options {
            blksize: Some(blksize),
            windowsize: Some(windowsize),
            tsize: Some(0),
            ..Options::default()
        };
        assert!(
            fetch(s.addr, "f", opts).await == data,
            "blksize {blksize} windowsize {windowsize}"
        );
    }
}
