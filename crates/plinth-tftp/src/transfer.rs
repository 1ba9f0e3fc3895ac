//! The state machine of one read transfer, with no sockets and no clock: it is told what
//! arrived (a packet, or that the retransmit timer fired) and answers what to send, how long to
//! wait before the timer fires next, and whether the transfer is over.
//!
//! Blocks are counted here with a `u64` index (1 is the first DATA block), so files of more
//! than 65,535 blocks work: the block number on the wire is the index modulo 65,536 (it wraps
//! from 65,535 to 0, as tftp-hpa, atftp, iPXE and EDK2 expect), and an ACK's number is mapped
//! back to the one index of the window in flight that matches it.
//!
//! Retransmission happens only when the timer fires (never because of a duplicate ACK: that is
//! the Sorcerer's Apprentice bug of RFC 1350), with the wait doubled after each timeout and a
//! bounded number of retries, and never before the client has answered once: a read request
//! with a forged source address gets one packet sent to its victim, not `retries` more (a real
//! client whose first packet was lost asks again). With a window (RFC 7440), an ACK for a block inside the window
//! means the client lost the block after it; sending resumes from there.

use std::time::Duration;

use crate::packet::{ErrorCode, Options, Packet};

/// The longest the retransmit timer is backed off to.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// What a transfer was set up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Bytes of the file.
    pub size: u64,
    pub blksize: u16,
    /// Blocks sent before waiting for an ACK (1: lock-step, RFC 1350).
    pub windowsize: u16,
    /// The OACK to send first, if the client asked for options.
    pub oack: Option<Options>,
    /// The first retransmit timeout.
    pub timeout: Duration,
    /// Timeouts in a row after which the transfer is given up.
    pub retries: u32,
}

/// What the server is to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    Oack(Options),
    /// DATA blocks `first..first + count` (indexes, see the module docs).
    Blocks {
        first: u64,
        count: u64,
    },
}

/// The answer to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this, then arm the retransmit timer for `timeout` from now.
    Send { send: Emit, timeout: Duration },
    /// Nothing to send; the timer keeps its current deadline.
    Wait,
    /// The client acknowledged the last block.
    Done,
    /// The transfer is over without success.
    Failed(Failure),
}

/// Why a transfer ended without success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("no answer after {retries} retransmissions")]
    TimedOut { retries: u32 },
    #[error(
        "the client never answered (nothing is sent again to an address that may not have asked)"
    )]
    NeverAnswered,
    #[error("the client sent ERROR {code:?}: {message}")]
    ClientError { code: ErrorCode, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started yet.
    New,
    /// OACK sent, waiting for ACK 0.
    Oack,
    /// DATA in flight.
    Data,
    Over,
}

/// One read transfer. See the module docs.
#[derive(Debug, Clone)]
pub struct Transfer {
    params: Params,
    /// The number of DATA blocks: the last one is shorter than `blksize`, possibly empty.
    blocks: u64,
    phase: Phase,
    /// The highest block index the client acknowledged (0: none).
    acked: u64,
    /// The highest block index sent in the window in flight.
    sent: u64,
    /// Timeouts in a row without progress.
    timeouts: u32,
    timeout: Duration,
    /// Retransmissions so far (for the log).
    retransmits: u64,
    /// Whether the client has sent anything on the transfer (an ACK, an ERROR).
    heard: bool,
}

/// The block number on the wire of the block with this index.
pub fn wire_block(index: u64) -> u16 {
    (index % 65_536) as u16
}

impl Transfer {
    pub fn new(params: Params) -> Transfer {
        let blocks = params.size / u64::from(params.blksize.max(1)) + 1;
        let timeout = params.timeout;
        Transfer {
            params,
            blocks,
            phase: Phase::New,
            acked: 0,
            sent: 0,
            timeouts: 0,
            timeout,
            retransmits: 0,
            heard: false,
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The number of DATA blocks of the transfer.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The byte range of the file that block `index` carries.
    pub fn block_range(&self, index: u64) -> std::ops::Range<u64> {
        let bs = u64::from(self.params.blksize);
        let start = (index - 1).saturating_mul(bs).min(self.params.size);
        start..(start + bs).min(self.params.size)
    }

    /// Bytes the client has acknowledged.
    pub fn bytes_acked(&self) -> u64 {
        if self.acked == 0 {
            0
        } else {
            self.block_range(self.acked).end
        }
    }

    pub fn retransmits(&self) -> u64 {
        self.retransmits
    }

    /// The first thing to send: the OACK if options were granted, else the first window.
    pub fn start(&mut self) -> Step {
        if self.phase != Phase::New {
            return Step::Wait;
        }
        match self.params.oack.clone() {
            Some(o) => {
                self.phase = Phase::Oack;
                self.send(Emit::Oack(o))
            }
            None => {
                self.phase = Phase::Data;
                self.window()
            }
        }
    }

    /// A packet from the client arrived.
    pub fn on_packet(&mut self, packet: &Packet) -> Step {
        if matches!(packet, Packet::Ack { .. }) {
            self.heard = true;
        }
        match (self.phase, packet) {
            (Phase::New | Phase::Over, _) => Step::Wait,
            (_, Packet::Error { code, message }) => self.fail(Failure::ClientError {
                code: *code,
                message: message.clone(),
            }),
            (Phase::Oack, Packet::Ack { block: 0 }) => {
                self.phase = Phase::Data;
                self.progress();
                self.window()
            }
            (Phase::Data, Packet::Ack { block }) => self.on_ack(*block),
            // Anything else (a stray DATA, a late duplicate of the first ACK, an OACK) is noise.
            _ => Step::Wait,
        }
    }

    /// The retransmit timer fired.
    pub fn on_timeout(&mut self) -> Step {
        match self.phase {
            Phase::New | Phase::Over => return Step::Wait,
            Phase::Oack | Phase::Data => {}
        }
        if !self.heard {
            return self.fail(Failure::NeverAnswered);
        }
        if self.timeouts >= self.params.retries {
            return self.fail(Failure::TimedOut {
                retries: self.timeouts,
            });
        }
        self.timeouts += 1;
        self.timeout = (self.timeout * 2).min(MAX_TIMEOUT);
        self.retransmits += 1;
        match self.phase {
            Phase::Oack => {
                let o = self.params.oack.clone().unwrap_or_default();
                self.send(Emit::Oack(o))
            }
            _ => self.window(),
        }
    }

    fn on_ack(&mut self, block: u16) -> Step {
        // The window in flight is acked+1..=sent; its numbers are distinct on the wire as long
        // as it is shorter than 65,536 blocks, which a u16 window size guarantees.
        let span = self.sent - self.acked;
        let offset = u64::from(block.wrapping_sub(wire_block(self.acked)));
        if offset == 0 || offset > span {
            // A duplicate of an older ACK, or a number from nowhere: never a reason to send
            // (Sorcerer's Apprentice), the timer will retransmit if something was lost.
            return Step::Wait;
        }
        self.acked += offset;
        self.progress();
        if self.acked == self.blocks {
            self.phase = Phase::Over;
            return Step::Done;
        }
        // Either the whole window arrived (next window), or the client lost the block after
        // `acked` (RFC 7440: resume from there).
        self.window()
    }

    fn progress(&mut self) {
        self.timeouts = 0;
        self.timeout = self.params.timeout;
    }

    /// (Re)sends the window starting after the last acknowledged block.
    fn window(&mut self) -> Step {
        let first = self.acked + 1;
        let count = u64::from(self.params.windowsize.max(1)).min(self.blocks - self.acked);
        self.sent = self.acked + count;
        self.send(Emit::Blocks { first, count })
    }

    fn send(&self, send: Emit) -> Step {
        Step::Send {
            send,
            timeout: self.timeout,
        }
    }

    fn fail(&mut self, failure: Failure) -> Step {
        self.phase = Phase::Over;
        Step::Failed(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn params(size: u64, blksize: u16, windowsize: u16) -> Params {
        Params {
            size,
            blksize,
            windowsize,
            oack: None,
            timeout: T,
            retries: 3,
        }
    }

    fn blocks(first: u64, count: u64, timeout: Duration) -> Step {
        Step::Send {
            send: Emit::Blocks { first, count },
            timeout,
        }
    }

    fn ack(block: u16) -> Packet {
        Packet::Ack { block }
    }

    #[test]
    fn lock_step() {
        // 1200 bytes in 512-byte blocks: 512, 512, 176.
        let mut t = Transfer::new(params(1200, 512, 1));
        assert_eq!(t.blocks(), 3);
        assert_eq!(t.start(), blocks(1, 1, T));
        assert_eq!(t.on_packet(&ack(1)), blocks(2, 1, T));
        assert_eq!(t.on_packet(&ack(2)), blocks(3, 1, T));
        assert_eq!(t.block_range(3), 1024..1200);
        assert_eq!(t.on_packet(&ack(3)), Step::Done);
        assert_eq!(t.bytes_acked(), 1200);
        // Nothing more after the end.
        assert_eq!(t.on_packet(&ack(3)), Step::Wait);
        assert_eq!(t.on_timeout(), Step::Wait);
    }

    #[test]
    fn empty_file_is_one_empty_block() {
        let mut t = Transfer::new(params(0, 512, 4));
        assert_eq!(t.blocks(), 1);
        assert_eq!(t.start(), blocks(1, 1, T));
        assert_eq!(t.block_range(1), 0..0);
        assert_eq!(t.on_packet(&ack(1)), Step::Done);
    }

    #[test]
    fn exactly_blksize_ends_with_an_empty_block() {
        let mut t = Transfer::new(params(1024, 512, 1));
        assert_eq!(t.blocks(), 3);
        t.start();
        t.on_packet(&ack(1));
        assert_eq!(t.on_packet(&ack(2)), blocks(3, 1, T));
        assert_eq!(t.block_range(3), 1024..1024, "the final DATA is empty");
        assert_eq!(t.on_packet(&ack(3)), Step::Done);
    }

    #[test]
    fn windowed() {
        // 10 full blocks and an empty one, windows of 4.
        let mut t = Transfer::new(params(5120, 512, 4));
        assert_eq!(t.blocks(), 11);
        assert_eq!(t.start(), blocks(1, 4, T));
        assert_eq!(t.on_packet(&ack(4)), blocks(5, 4, T));
        // An ACK inside the window: the client has 5 and 6, resume at 7.
        assert_eq!(t.on_packet(&ack(6)), blocks(7, 4, T));
        assert_eq!(
            t.on_packet(&ack(10)),
            blocks(11, 1, T),
            "the last window is short"
        );
        assert_eq!(t.on_packet(&ack(11)), Step::Done);
    }

    #[test]
    fn ack_of_an_older_window_is_ignored() {
        let mut t = Transfer::new(params(5120, 512, 4));
        t.start();
        assert_eq!(t.on_packet(&ack(4)), blocks(5, 4, T));
        for b in [0, 1, 4, 9, 200] {
            assert_eq!(t.on_packet(&ack(b)), Step::Wait, "ACK {b}");
        }
        assert_eq!(t.on_packet(&ack(8)), blocks(9, 3, T));
    }

    #[test]
    fn lost_ack_retransmits_with_backoff() {
        let mut t = Transfer::new(params(3000, 512, 2));
        assert_eq!(t.start(), blocks(1, 2, T));
        assert_eq!(t.on_packet(&ack(2)), blocks(3, 2, T));
        assert_eq!(t.on_timeout(), blocks(3, 2, 2 * T));
        assert_eq!(t.on_timeout(), blocks(3, 2, 4 * T));
        assert_eq!(t.retransmits(), 2);
        // Progress resets the backoff.
        assert_eq!(t.on_packet(&ack(4)), blocks(5, 2, T));
        assert_eq!(t.on_timeout(), blocks(5, 2, 2 * T));
    }

    #[test]
    fn nothing_is_sent_again_before_the_client_answers() {
        // A read request with a forged source: one window (one packet: no options) went to
        // the victim; nothing more does.
        let mut t = Transfer::new(params(4096, 512, 1));
        assert_eq!(t.start(), blocks(1, 1, T));
        assert_eq!(t.on_timeout(), Step::Failed(Failure::NeverAnswered));
        assert_eq!(t.retransmits(), 0);
        // Nor the OACK of a request with options.
        let mut t = Transfer::new(Params {
            oack: Some(Options {
                tsize: Some(4096),
                ..Default::default()
            }),
            ..params(4096, 512, 1)
        });
        assert!(matches!(
            t.start(),
            Step::Send {
                send: Emit::Oack(_),
                ..
            }
        ));
        assert_eq!(t.on_timeout(), Step::Failed(Failure::NeverAnswered));
    }

    #[test]
    fn backoff_is_capped() {
        let mut t = Transfer::new(Params {
            retries: 10,
            timeout: Duration::from_secs(10),
            ..params(20 * 512, 512, 1)
        });
        t.start();
        t.on_packet(&ack(1));
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            let Step::Send { timeout, .. } = t.on_timeout() else {
                panic!("expected a retransmission")
            };
            last = timeout;
        }
        assert_eq!(last, MAX_TIMEOUT);
    }

    #[test]
    fn duplicate_ack_does_not_retransmit() {
        // Sorcerer's Apprentice: a delayed duplicate ACK 1 must not send block 2 again.
        let mut t = Transfer::new(params(4096, 512, 1));
        t.start();
        assert_eq!(t.on_packet(&ack(1)), blocks(2, 1, T));
        assert_eq!(t.on_packet(&ack(1)), Step::Wait);
        assert_eq!(t.on_packet(&ack(2)), blocks(3, 1, T));
        assert_eq!(t.on_packet(&ack(2)), Step::Wait);
        assert_eq!(t.on_packet(&ack(1)), Step::Wait);
        assert_eq!(t.retransmits(), 0);
    }

    #[test]
    fn retries_exhausted_gives_up() {
        let mut t = Transfer::new(params(4096, 512, 1));
        t.start();
        t.on_packet(&ack(1));
        assert!(matches!(t.on_timeout(), Step::Send { .. }));
        assert!(matches!(t.on_timeout(), Step::Send { .. }));
        assert!(matches!(t.on_timeout(), Step::Send { .. }));
        assert_eq!(
            t.on_timeout(),
            Step::Failed(Failure::TimedOut { retries: 3 })
        );
        // Over: a late ACK changes nothing.
        assert_eq!(t.on_packet(&ack(2)), Step::Wait);
    }

    #[test]
    fn client_error_stops() {
        let mut t = Transfer::new(params(4096, 512, 1));
        t.start();
        t.on_packet(&ack(1));
        let err = Packet::Error {
            code: ErrorCode::NotDefined,
            message: "disk full".into(),
        };
        assert_eq!(
            t.on_packet(&err),
            Step::Failed(Failure::ClientError {
                code: ErrorCode::NotDefined,
                message: "disk full".into()
            })
        );
        assert_eq!(t.on_timeout(), Step::Wait);
    }

    #[test]
    fn oack_flow() {
        let oack = Options {
            blksize: Some(1468),
            tsize: Some(3000),
            ..Default::default()
        };
        let mut t = Transfer::new(Params {
            oack: Some(oack.clone()),
            ..params(3000, 1468, 1)
        });
        let send_oack = |timeout| Step::Send {
            send: Emit::Oack(oack.clone()),
            timeout,
        };
        assert_eq!(t.start(), send_oack(T));
        // An ACK for a data block before ACK 0 means nothing.
        assert_eq!(t.on_packet(&ack(1)), Step::Wait);
        assert_eq!(t.on_timeout(), send_oack(2 * T));
        assert_eq!(t.on_packet(&ack(0)), blocks(1, 1, T));
        assert_eq!(t.on_packet(&ack(0)), Step::Wait, "a duplicate ACK 0");
        assert_eq!(t.on_packet(&ack(1)), blocks(2, 1, T));
        assert_eq!(t.on_packet(&ack(2)), blocks(3, 1, T));
        assert_eq!(t.block_range(3), 2936..3000);
        assert_eq!(t.on_packet(&ack(3)), Step::Done);
    }

    #[test]
    fn oack_refused_by_the_client() {
        // UEFI firmware after its tsize probe.
        let mut t = Transfer::new(Params {
            oack: Some(Options {
                tsize: Some(10),
                ..Default::default()
            }),
            ..params(10, 512, 1)
        });
        t.start();
        assert!(matches!(
            t.on_packet(&Packet::Error {
                code: ErrorCode::OptionsRefused,
                message: String::new()
            }),
            Step::Failed(Failure::ClientError {
                code: ErrorCode::OptionsRefused,
                ..
            })
        ));
    }

    #[test]
    fn block_numbers_wrap() {
        // 70,000 full 8-byte blocks and the empty last one, lock-step, then windowed.
        for window in [1u16, 7] {
            let size = 70_000 * 8;
            let mut t = Transfer::new(params(size, 8, window));
            let mut step = t.start();
            let mut seen = 0u64;
            loop {
                match step {
                    Step::Send {
                        send: Emit::Blocks { first, count },
                        ..
                    } => {
                        assert_eq!(first, seen + 1);
                        seen = first + count - 1;
                        step = t.on_packet(&ack(wire_block(seen)));
                    }
                    Step::Done => break,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(seen, 70_001);
            assert_eq!(t.bytes_acked(), size);
        }
        assert_eq!(wire_block(65_535), 65_535);
        assert_eq!(wire_block(65_536), 0);
        assert_eq!(wire_block(65_537), 1);
    }

    #[test]
    fn windowed_ack_across_the_wrap() {
        // The window 65,533..=65,536 is 65533, 65534, 65535, 0 on the wire; an ACK 0 means the
        // client has everything up to index 65,536.
        let mut t = Transfer::new(params(70_000 * 8, 8, 4));
        t.start();
        let mut acked = 0u64;
        while acked + 4 < 65_534 {
            acked += 4;
            t.on_packet(&ack(wire_block(acked)));
        }
        assert_eq!(acked, 65_532);
        assert_eq!(t.bytes_acked(), 65_532 * 8);
        assert_eq!(t.on_packet(&ack(0)), blocks(65_537, 4, T));
        assert_eq!(t.bytes_acked(), 65_536 * 8);
    }
}
