//! The TFTP transfer state machine driven by whatever a client (or an attacker on its port)
//! sends, and by timeouts: it never sends a block outside the file, never asks for the timer
//! to wait longer than the cap, ends when it says it ends, and only finishes once every block
//! was acknowledged.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use plinth_tftp::packet::{ErrorCode, Options, Packet};
use plinth_tftp::transfer::{Emit, MAX_TIMEOUT, Params, Step, Transfer};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let size = u64::from(u16::from_le_bytes([data[0], data[1]])) * 7;
    let blksize = [8u16, 512, 1468][usize::from(data[2] % 3)];
    let windowsize = u16::from(data[3] % 8) + 1;
    let oack = (data[2] & 0x80 != 0).then(|| Options {
        tsize: Some(size),
        ..Default::default()
    });
    let mut t = Transfer::new(Params {
        size,
        blksize,
        windowsize,
        oack,
        timeout: Duration::from_secs(1),
        retries: 3,
    });
    let blocks = t.blocks();
    let mut step = t.start();
    let mut over = false;
    for pair in data[4..].chunks(3) {
        match &step {
            Step::Send { send, timeout } => {
                assert!(!over, "sent after the end");
                assert!(*timeout <= MAX_TIMEOUT);
                if let Emit::Blocks { first, count } = send {
                    assert!(*first >= 1 && *count >= 1, "{send:?}");
                    assert!(first + count - 1 <= blocks, "{send:?} past {blocks} blocks");
                }
            }
            Step::Done => {
                assert_eq!(
                    t.bytes_acked(),
                    size,
                    "done before everything was acknowledged"
                );
                over = true;
            }
            Step::Failed(_) => over = true,
            Step::Wait => {}
        }
        let arg = u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        step = match pair.get(2).copied().unwrap_or(0) % 4 {
            0 => t.on_timeout(),
            1 => t.on_packet(&Packet::Error {
                code: ErrorCode::NotDefined,
                message: String::new(),
            }),
            2 => t.on_packet(&Packet::Data {
                block: arg,
                data: Vec::new(),
            }),
            _ => t.on_packet(&Packet::Ack { block: arg }),
        };
        if over {
            assert!(matches!(step, Step::Wait), "{step:?} after the end");
        }
    }
});
