//! TFTP: a datagram parsed as a packet; what parses encodes and parses back to itself (but an
//! OACK left empty once unknown options are dropped, which plinth never sends), and a
//! read request's options negotiate within the server's limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_tftp::packet::{self, Limits, MAX_CLIENT_TIMEOUT, Packet};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = packet::parse(data) else {
        return;
    };
    // An OACK of options plinth does not know parses as one with none, which has no encoding
    // (plinth never sends an empty OACK: no options, no OACK).
    let empty_oack = matches!(&p, Packet::Oack { options } if options.is_empty());
    if !empty_oack {
        let again = packet::parse(&p.encode()).expect("an encoded packet parses");
        assert_eq!(again, p, "encode then parse gives the same packet");
    }
    if let Packet::Rrq { options, .. } = &p {
        let limits = Limits {
            max_blksize: 1468,
            max_windowsize: 64,
            max_timeout: MAX_CLIENT_TIMEOUT,
        };
        let n = packet::negotiate(options, limits, 1 << 20);
        assert!((8..=1468).contains(&n.blksize) || n.blksize == 512, "{n:?}");
        assert!((1..=64).contains(&n.windowsize), "{n:?}");
        assert!(n.timeout.is_none_or(|t| t <= MAX_CLIENT_TIMEOUT), "{n:?}");
    }
});
