//! Property tests run with the normal suite: whatever arrives on port 67, `parse` returns
//! instead of panicking, and every request it accepts can be answered with a well-formed reply.

use std::net::Ipv4Addr;

use crate::common::{CAPTURES, capture, ip, lease, nak, offer, pxe_boot};
use dhcproto::v4::{Decodable, Decoder, Message, MessageType as DhcprotoType, Opcode};
use plinth_dhcp::wire::{
    BootParams, Destination, LeaseParams, ParseError, ReplyKind, ReplyPlan, Request, build_reply,
    destination, parse,
};
use proptest::prelude::*;

/// The plans every accepted request is answered with: a full OFFER with PXE boot, a ProxyDHCP
/// ACK, an ACK without a lease time (as to INFORM), a NAK, and one with random values.
fn plans(random: &ReplyPlan) -> Vec<ReplyPlan> {
    vec![
        offer(Some(lease(Some(3600))), Some(pxe_boot("undionly.kpxe"))),
        ReplyPlan {
            kind: ReplyKind::Ack,
            ..offer(None, Some(pxe_boot("ipxe.efi")))
        },
        ReplyPlan {
            kind: ReplyKind::Ack,
            ..offer(Some(lease(None)), None)
        },
        nak("no such lease"),
        random.clone(),
    ]
}

/// Everything a reply to `req` must be, whatever the plan.
fn check_reply(req: &Request, plan: &ReplyPlan) -> Result<(), TestCaseError> {
    let bytes = build_reply(req, plan);
    prop_assert!(bytes.len() >= 300, "reply of {} bytes", bytes.len());
    let msg = Message::decode(&mut Decoder::new(&bytes))
        .map_err(|e| TestCaseError::fail(format!("dhcproto rejects the reply: {e}")))?;
    prop_assert_eq!(msg.opcode(), Opcode::BootReply);
    prop_assert_eq!(msg.xid(), req.xid);
    let expected = match plan.kind {
        ReplyKind::Offer => DhcprotoType::Offer,
        ReplyKind::Ack => DhcprotoType::Ack,
        ReplyKind::Nak => DhcprotoType::Nak,
    };
    prop_assert_eq!(msg.opts().msg_type(), Some(expected));
    // Our own parser must refuse our own reply as a request.
    prop_assert_eq!(parse(&bytes), Err(ParseError::NotARequest));

    // The plans here keep their never-dropped options (53, 54, 51, 60, 43, a boot file name
    // of at most 150 bytes) well under the smallest limit, so every reply must fit.
    let limit = usize::from(req.max_message_size.unwrap_or(576)).clamp(576, 1500) - 28;
    prop_assert!(bytes.len() <= limit, "{} > {}", bytes.len(), limit);

    let dest = destination(req, plan);
    if !req.giaddr.is_unspecified() {
        prop_assert_eq!(dest, Destination::Relay(req.giaddr));
    } else if let Destination::Hardware { ip, mac } = dest {
        prop_assert_eq!(mac, req.chaddr);
        prop_assert_eq!(msg.yiaddr(), ip);
    }
    Ok(())
}

fn check_bytes(bytes: &[u8], random: &ReplyPlan) -> Result<(), TestCaseError> {
    if let Ok(req) = parse(bytes) {
        // Anything accepted passed the validation the server relies on.
        prop_assert_eq!(bytes.first(), Some(&1));
        prop_assert_eq!(bytes.get(1..3), Some(&[1u8, 6][..]));
        for plan in plans(random) {
            check_reply(&req, &plan)?;
        }
    }
    Ok(())
}

fn addr() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn random_plan() -> impl Strategy<Value = ReplyPlan> {
    let lease = (
        addr(),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(addr(), 0..4),
        proptest::collection::vec(addr(), 0..40),
        proptest::option::of("[a-z.]{0,120}"),
        proptest::option::of(addr()),
    )
        .prop_map(
            |(yiaddr, lease_secs, routers, dns_servers, domain, broadcast_addr)| LeaseParams {
                yiaddr,
                lease_secs,
                subnet_mask: ip("255.255.255.0"),
                routers,
                dns_servers,
                domain,
                broadcast_addr,
            },
        );
    let boot = (
        addr(),
        "[ -~]{0,150}",
        proptest::option::of("[A-Za-z]{0,12}"),
        any::<bool>(),
    )
        .prop_map(
            |(next_server, file, vendor_class, pxe_discovery_control)| BootParams {
                next_server,
                file,
                vendor_class,
                pxe_discovery_control,
            },
        );
    (
        prop_oneof![
            Just(ReplyKind::Offer),
            Just(ReplyKind::Ack),
            Just(ReplyKind::Nak)
        ],
        addr(),
        proptest::option::of(lease),
        proptest::option::of(boot),
        proptest::option::of("[ -~]{0,80}"),
    )
        .prop_map(|(kind, server_id, lease, boot, message)| ReplyPlan {
            kind,
            server_id,
            lease,
            boot,
            message,
        })
}

/// A valid header followed by option soup whose length bytes may lie.
fn header_and_random_options() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 8]>(), // hops, xid, secs, flags (and op/htype/hlen are fixed below)
        any::<[u8; 8]>(), // ciaddr, giaddr
        prop_oneof![Just(1u8), Just(3), Just(8), any::<u8>()],
        proptest::collection::vec(
            (
                any::<u8>(),
                proptest::option::weighted(0.1, any::<u8>()),
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            0..12,
        ),
        any::<bool>(),
    )
        .prop_map(|(misc, addrs, msg_type, options, end)| {
            let mut b = vec![1, 1, 6];
            b.extend_from_slice(&misc[..7]); // hops, xid, secs, first flags byte
            b.push(misc[7] & 0x80);
            b.extend_from_slice(&addrs[..4]); // ciaddr
            b.extend_from_slice(&[0; 8]); // yiaddr, siaddr
            b.extend_from_slice(&addrs[4..]); // giaddr
            b.extend_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
            b.resize(236, 0);
            b.extend_from_slice(&[99, 130, 83, 99]);
            b.extend_from_slice(&[53, 1, msg_type]);
            for (code, lying_len, data) in options {
                b.push(code);
                // Mostly honest lengths, sometimes not.
                let len = lying_len.unwrap_or(u8::try_from(data.len()).unwrap_or(u8::MAX));
                b.push(len);
                b.extend_from_slice(&data);
            }
            if end {
                b.push(255);
            }
            b
        })
}

/// A real capture with bytes flipped, maybe an option length rewritten, maybe cut short.
fn mutated_capture() -> impl Strategy<Value = Vec<u8>> {
    (
        0..CAPTURES.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        proptest::option::weighted(0.2, (any::<prop::sample::Index>(), any::<u8>())),
        proptest::option::weighted(0.2, any::<prop::sample::Index>()),
    )
        .prop_map(|(which, flips, new_len, cut)| {
            let mut b = capture(CAPTURES[which]);
            // Flips in the options area mostly, where the parsing logic is.
            for (at, xor) in flips {
                let i = 240 + at.index(b.len() - 240);
                b[i] ^= xor;
            }
            if let Some((at, len)) = new_len {
                // Find the option boundaries and rewrite one option's length byte.
                let mut starts = Vec::new();
                let mut i = 240;
                while i + 1 < b.len() && b[i] != 255 {
                    if b[i] == 0 {
                        i += 1;
                        continue;
                    }
                    starts.push(i);
                    i += 2 + usize::from(b[i + 1]);
                }
                if !starts.is_empty() {
                    let s = starts[at.index(starts.len())];
                    b[s + 1] = len;
                }
            }
            if let Some(cut) = cut {
                b.truncate(cut.index(b.len() + 1));
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1600),
        random in random_plan(),
    ) {
        check_bytes(&bytes, &random)?;
    }

    #[test]
    fn random_bytes_behind_a_valid_header(
        mut bytes in proptest::collection::vec(any::<u8>(), 240..800),
        random in random_plan(),
    ) {
        bytes[..3].copy_from_slice(&[1, 1, 6]);
        bytes[236..240].copy_from_slice(&[99, 130, 83, 99]);
        check_bytes(&bytes, &random)?;
    }

    #[test]
    fn random_options_never_panic(bytes in header_and_random_options(), random in random_plan()) {
        check_bytes(&bytes, &random)?;
    }

    #[test]
    fn mutated_captures_never_panic(bytes in mutated_capture(), random in random_plan()) {
        check_bytes(&bytes, &random)?;
    }

    #[test]
    fn unmutated_captures_answer_every_plan(which in 0..CAPTURES.len(), random in random_plan()) {
        let bytes = capture(CAPTURES[which]);
        let req = parse(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for plan in plans(&random) {
            check_reply(&req, &plan)?;
        }
    }
}

/// How often the structured strategies get past `parse`: a fuzz run that never reaches
/// `build_reply` would prove nothing about it.
#[test]
fn structured_strategies_reach_build_reply() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut accepted = 0;
    for _ in 0..300 {
        let bytes = mutated_capture().new_tree(&mut runner).unwrap().current();
        accepted += usize::from(parse(&bytes).is_ok());
    }
    eprintln!("mutated captures accepted: {accepted}/300");
    assert!(accepted > 30, "only {accepted}/300 mutated captures parsed");

    let mut accepted = 0;
    for _ in 0..300 {
        let bytes = header_and_random_options()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        accepted += usize::from(parse(&bytes).is_ok());
    }
    eprintln!("random-option packets accepted: {accepted}/300");
    assert!(
        accepted > 30,
        "only {accepted}/300 random-option packets parsed"
    );
}
