//! IPMI over LAN: a datagram from a BMC read as an RMCP/RMCP+ packet, an IPMI response, FRU
//! inventory, the answers of a session's opening (Open Session response, RAKP 2), and an
//! encrypted message opened with a session's keys. A message sealed with those keys opens back
//! to itself; bytes that were not sealed never pass the integrity check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_bmc::ipmi::wire::{self, CipherSuite, SessionKeys};
use plinth_bmc::ipmi::{fru, lan};

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse(data);
    let _ = wire::parse_response(data);
    let _ = fru::parse(data);
    for suite in [CipherSuite::Three, CipherSuite::Seventeen] {
        let _ = lan::open_session_answer(data, 0x0102_0304, 0x05, suite);
        let _ = lan::rakp2_answer(data, suite);
        let keys = SessionKeys {
            suite,
            k1: vec![0x11; if suite == CipherSuite::Three { 20 } else { 32 }],
            aes: [0x22; 16],
        };
        // Almost nothing the fuzzer makes carries a valid integrity code: it must be refused.
        if let Ok(m) = keys.open(data) {
            let resealed = keys.seal(0x0a0b_0c0d, 1, &m, [0; 16]);
            assert_eq!(keys.open(&resealed).as_deref(), Ok(&m[..]));
        }
        let sealed = keys.seal(0x0a0b_0c0d, 7, data, [0x33; 16]);
        assert_eq!(keys.open(&sealed).as_deref(), Ok(data), "seal then open");
    }
});
