//! Byte-level tests of the wire layer: what `parse` accepts and refuses, what `build_reply`
//! writes, and where `destination` sends it. Replies are checked through `common::Reply`, which
//! reads raw offsets, so a bug in the encoder cannot hide behind the same bug in a decoder.

use crate::common::{Packet, Reply, ip, lease, mac, nak, offer, pxe_boot};
use plinth_dhcp::wire::{
    BootParams, Destination, LeaseParams, MessageType, ParseError, ReplyKind, ReplyPlan,
    build_reply, destination, parse,
};

// ---------------------------------------------------------------------------------------------
// parse: accepted requests
// ---------------------------------------------------------------------------------------------

#[test]
fn parses_every_field_of_a_full_discover() {
    let mut uuid = vec![0u8];
    uuid.extend(1..=16u8);
    let mut p = Packet::discover()
        .opt(50, &[10, 99, 0, 77])
        .opt(54, &[10, 99, 0, 1])
        .opt(55, &[1, 3, 6, 66, 67])
        .opt(57, &[0x05, 0xc0])
        .opt(60, b"PXEClient:Arch:00007:UNDI:003000")
        .opt(93, &[0, 7])
        .opt(97, &uuid)
        .opt(77, b"iPXE")
        .opt(175, &[0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e])
        .opt(12, b"node-7\0")
        .opt(61, &[1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    p.flags = 0x8000;
    p.hops = 2;
    p.giaddr = [10, 98, 0, 1];
    p.ciaddr = [0, 0, 0, 0];
    let req = p.parse();

    assert_eq!(req.msg_type, MessageType::Discover);
    assert_eq!(req.xid, 0xdead_beef);
    assert_eq!(req.secs, 3);
    assert!(req.broadcast);
    assert_eq!(req.hops, 2);
    assert_eq!(req.giaddr, ip("10.98.0.1"));
    assert_eq!(req.ciaddr, ip("0.0.0.0"));
    assert_eq!(req.chaddr, mac("52:54:00:12:34:56"));
    assert_eq!(req.requested_ip, Some(ip("10.99.0.77")));
    assert_eq!(req.server_id, Some(ip("10.99.0.1")));
    assert_eq!(req.param_request_list, vec![1, 3, 6, 66, 67]);
    assert_eq!(req.max_message_size, Some(1472));
    assert_eq!(
        req.vendor_class.as_deref(),
        Some("PXEClient:Arch:00007:UNDI:003000")
    );
    assert_eq!(req.client_arch, Some(7));
    let expected_uuid: Vec<u8> = (1..=16u8).collect();
    assert_eq!(req.client_uuid.map(|u| u.to_vec()), Some(expected_uuid));
    assert_eq!(req.user_class.as_deref(), Some("iPXE"));
    assert!(req.ipxe_encap);
    assert_eq!(
        req.hostname.as_deref(),
        Some("node-7"),
        "trailing NUL dropped"
    );
    assert_eq!(
        req.client_id,
        Some(vec![1, 0x52, 0x54, 0, 0x12, 0x34, 0x56])
    );
    assert!(req.is_pxe());
    assert!(req.is_ipxe());
    assert!(!req.is_http_client());
}

#[test]
fn parses_a_minimal_discover() {
    let req = Packet::discover().parse();
    assert_eq!(req.msg_type, MessageType::Discover);
    assert!(!req.broadcast);
    assert_eq!(req.requested_ip, None);
    assert!(req.param_request_list.is_empty());
    assert_eq!(req.vendor_class, None);
    assert_eq!(req.client_arch, None);
    assert_eq!(req.client_uuid, None);
    assert_eq!(req.user_class, None);
    assert!(!req.ipxe_encap);
    assert!(!req.is_pxe() && !req.is_ipxe() && !req.is_http_client());
}

#[test]
fn parses_every_client_message_type() {
    for (code, expected) in [
        (1, MessageType::Discover),
        (3, MessageType::Request),
        (4, MessageType::Decline),
        (7, MessageType::Release),
        (8, MessageType::Inform),
    ] {
        assert_eq!(Packet::new(code).parse().msg_type, expected, "type {code}");
        assert_eq!(expected.code(), code);
    }
}

#[test]
fn classifies_clients() {
    let http = Packet::discover()
        .opt(60, b"HTTPClient:Arch:00016:UNDI:003000")
        .parse();
    assert!(http.is_http_client() && !http.is_pxe());

    // The architecture alone marks an HTTP boot client.
    let arch_only = Packet::discover().opt(93, &[0, 16]).parse();
    assert!(arch_only.is_http_client());
    let efi_pxe = Packet::discover().opt(93, &[0, 7]).parse();
    assert!(!efi_pxe.is_http_client());

    // iPXE by option 175 alone, and by an RFC 3004-encoded user class alone.
    assert!(Packet::discover().opt(175, &[]).parse().is_ipxe());
    let rfc3004 = Packet::discover().opt(77, b"\x04iPXE").parse();
    assert_eq!(rfc3004.user_class.as_deref(), Some("iPXE"));
    assert!(rfc3004.is_ipxe());
    let two = Packet::discover().opt(77, b"\x03foo\x04iPXE").parse();
    assert_eq!(two.user_class.as_deref(), Some("foo,iPXE"));
    assert!(two.is_ipxe());
    let other = Packet::discover().opt(77, b"gPXE").parse();
    assert!(!other.is_ipxe());
}

#[test]
fn concatenates_split_options() {
    // RFC 3396: the pieces of one option need not be adjacent.
    let req = Packet::discover()
        .opt(60, b"PXEClient:")
        .opt(55, &[1, 3])
        .opt(60, b"Arch:00000")
        .opt(55, &[67])
        .parse();
    assert_eq!(req.vendor_class.as_deref(), Some("PXEClient:Arch:00000"));
    assert_eq!(req.param_request_list, vec![1, 3, 67]);
}

#[test]
fn reads_options_overloaded_into_file_and_sname() {
    // Option 52 = 3: options continue in `file`, then in `sname` (RFC 2131 §4.1).
    let mut p = Packet::discover().opt(52, &[3]);
    p.options = vec![52, 1, 3, 255];
    p.file[..4].copy_from_slice(&[53, 1, 3, 255]);
    p.sname[..6].copy_from_slice(&[12, 3, b'a', b'b', b'c', 255]);
    let req = p.parse();
    assert_eq!(req.msg_type, MessageType::Request);
    assert_eq!(req.hostname.as_deref(), Some("abc"));

    // Without option 52, the same file field is just a file name.
    let mut plain = Packet::discover();
    plain.file[..4].copy_from_slice(&[53, 1, 3, 255]);
    assert_eq!(plain.parse().msg_type, MessageType::Discover);
}

#[test]
fn tolerates_a_missing_end_option_and_trailing_padding() {
    let mut p = Packet::discover();
    p.options = vec![53, 1, 1];
    assert_eq!(p.parse().msg_type, MessageType::Discover);
    p.options = vec![0, 0, 53, 1, 1, 0, 0, 255, 0xde, 0xad];
    assert_eq!(p.parse().msg_type, MessageType::Discover);
}

#[test]
fn ignores_a_uuid_option_of_the_wrong_shape() {
    let mut wrong_type = vec![1u8];
    wrong_type.extend([0xaa; 16]);
    assert_eq!(
        Packet::discover().opt(97, &wrong_type).parse().client_uuid,
        None
    );
    assert_eq!(
        Packet::discover().opt(97, &[0; 5]).parse().client_uuid,
        None
    );
}

#[test]
fn accepts_packets_up_to_the_hard_cap() {
    let mut bytes = Packet::discover().bytes();
    bytes.resize(4096, 0);
    assert!(parse(&bytes).is_ok());
}

// ---------------------------------------------------------------------------------------------
// parse: refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn refuses_truncated_packets() {
    let bytes = Packet::discover().bytes();
    assert_eq!(parse(&[]), Err(ParseError::Truncated));
    assert_eq!(parse(&bytes[..239]), Err(ParseError::Truncated));
    assert_eq!(parse(&bytes[..100]), Err(ParseError::Truncated));
}

#[test]
fn refuses_replies() {
    let mut p = Packet::discover();
    p.op = 2;
    assert_eq!(parse(&p.bytes()), Err(ParseError::NotARequest));
    p.op = 0;
    assert_eq!(parse(&p.bytes()), Err(ParseError::NotARequest));
}

#[test]
fn refuses_hardware_addresses_longer_than_chaddr() {
    let mut p = Packet::discover();
    p.hlen = 17;
    assert_eq!(
        parse(&p.bytes()),
        Err(ParseError::UnsupportedHardware { htype: 1, hlen: 17 })
    );
    p.hlen = 255;
    assert_eq!(
        parse(&p.bytes()),
        Err(ParseError::UnsupportedHardware {
            htype: 1,
            hlen: 255
        })
    );
}

#[test]
fn refuses_non_ethernet_hardware() {
    // htype 6 (IEEE 802) with a 6-byte address is still not Ethernet.
    let mut p = Packet::discover();
    p.htype = 6;
    assert_eq!(
        parse(&p.bytes()),
        Err(ParseError::UnsupportedHardware { htype: 6, hlen: 6 })
    );
    // InfiniBand-style: htype 32, no chaddr.
    p.htype = 32;
    p.hlen = 0;
    assert_eq!(
        parse(&p.bytes()),
        Err(ParseError::UnsupportedHardware { htype: 32, hlen: 0 })
    );
    // Ethernet with the wrong length.
    p.htype = 1;
    p.hlen = 16;
    assert_eq!(
        parse(&p.bytes()),
        Err(ParseError::UnsupportedHardware { htype: 1, hlen: 16 })
    );
}

#[test]
fn refuses_bootp_without_a_message_type() {
    let mut p = Packet::discover();
    p.options = vec![12, 2, b'h', b'i', 255];
    assert_eq!(parse(&p.bytes()), Err(ParseError::NoMessageType));
    // No magic cookie: a plain BOOTP vendor area, no DHCP options at all.
    let mut p = Packet::discover();
    p.magic = [0; 4];
    assert_eq!(parse(&p.bytes()), Err(ParseError::NoMessageType));
}

#[test]
fn refuses_server_message_types() {
    for code in [2u8, 5, 6, 9, 0, 200] {
        assert_eq!(
            parse(&Packet::new(code).bytes()),
            Err(ParseError::UnsupportedMessageType(code)),
            "type {code}"
        );
    }
}

#[test]
fn refuses_an_option_running_past_the_end() {
    let mut p = Packet::discover();
    p.options = vec![53, 1, 1, 12, 200, b'a', b'b'];
    let err = parse(&p.bytes()).unwrap_err();
    assert!(
        matches!(err, ParseError::Malformed(ref m) if m.contains("option 12")),
        "{err}"
    );

    // The message type itself cut off.
    p.options = vec![53, 1];
    assert!(matches!(parse(&p.bytes()), Err(ParseError::Malformed(_))));

    // A code with no length byte.
    p.options = vec![53, 1, 1, 60];
    assert!(matches!(parse(&p.bytes()), Err(ParseError::Malformed(_))));

    // Inside an overloaded file field.
    let mut p = Packet::discover().opt(52, &[1]);
    p.file[126..128].copy_from_slice(&[12, 9]);
    assert!(matches!(parse(&p.bytes()), Err(ParseError::Malformed(_))));
}

#[test]
fn refuses_fixed_length_options_of_the_wrong_length() {
    let cases: &[(u8, &[u8])] = &[
        (50, &[10, 0, 0]),
        (54, &[10, 0, 0, 1, 0]),
        (57, &[2]),
        (93, &[0]),
        (93, &[0, 7, 0]),
        (52, &[4]),
    ];
    for (code, value) in cases {
        let bytes = Packet::discover().opt(*code, value).bytes();
        assert!(
            matches!(parse(&bytes), Err(ParseError::Malformed(_))),
            "option {code} {value:?}"
        );
    }
    let mut p = Packet::discover();
    p.options = vec![53, 2, 1, 1, 255];
    assert!(matches!(parse(&p.bytes()), Err(ParseError::Malformed(_))));
}

#[test]
fn refuses_oversized_packets() {
    let mut bytes = Packet::discover().bytes();
    bytes.resize(4097, 0);
    assert_eq!(parse(&bytes), Err(ParseError::TooLarge));
    assert_eq!(parse(&vec![0u8; 65_535]), Err(ParseError::TooLarge));
}

#[test]
fn refuses_a_dhcproto_debug_assert_trap_without_panicking() {
    // dhcproto 0.15's own decoder hits `debug_assert!(len == 0)` on option 80 with a value and
    // `debug_assert!(len == 3)` on option 94: `parse` does not go near it.
    let req = Packet::discover().opt(80, &[1]).opt(94, &[1]).parse();
    assert_eq!(req.msg_type, MessageType::Discover);
}

// ---------------------------------------------------------------------------------------------
// build_reply
// ---------------------------------------------------------------------------------------------

fn pxe_discover() -> Packet {
    let mut p = Packet::discover()
        .opt(60, b"PXEClient:Arch:00000:UNDI:002001")
        .opt(93, &[0, 0]);
    p.flags = 0x8000;
    p.giaddr = [10, 98, 0, 1];
    p
}

#[test]
fn offer_header_fields() {
    let req = pxe_discover().parse();
    let bytes = build_reply(
        &req,
        &offer(Some(lease(Some(3600))), Some(pxe_boot("undionly.kpxe"))),
    );
    let r = Reply(&bytes);
    assert_eq!(r.op(), 2, "BOOTREPLY");
    assert_eq!((r.htype(), r.hlen(), r.hops()), (1, 6, 0));
    assert_eq!(r.xid(), 0xdead_beef);
    assert_eq!(r.secs(), 0);
    assert_eq!(r.flags(), 0x8000, "broadcast flag copied");
    assert_eq!(r.ciaddr(), ip("0.0.0.0"));
    assert_eq!(r.yiaddr(), ip("10.99.0.50"));
    assert_eq!(r.siaddr(), ip("10.99.0.1"));
    assert_eq!(r.giaddr(), ip("10.98.0.1"));
    assert_eq!(&r.chaddr()[..6], &[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    assert_eq!(&r.chaddr()[6..], &[0; 10]);
    assert_eq!(r.sname(), &[0; 64]);
    assert_eq!(&r.file_field()[..13], b"undionly.kpxe");
    assert!(r.file_field()[13..].iter().all(|&b| b == 0));
    assert_eq!(r.magic(), &crate::common::MAGIC);
}

#[test]
fn offer_options_in_default_order_with_values() {
    let req = pxe_discover().parse();
    let bytes = build_reply(
        &req,
        &offer(Some(lease(Some(3600))), Some(pxe_boot("undionly.kpxe"))),
    );
    let r = Reply(&bytes);
    assert_eq!(
        r.codes(),
        vec![53, 54, 51, 58, 59, 1, 3, 6, 15, 28, 60, 43, 66, 67]
    );
    assert_eq!(r.opt(53), Some(vec![2]));
    assert_eq!(r.opt_addrs(54), Some(vec![ip("10.99.0.1")]));
    assert_eq!(r.opt_u32(51), Some(3600));
    assert_eq!(r.opt_u32(58), Some(1800));
    assert_eq!(r.opt_u32(59), Some(3150));
    assert_eq!(r.opt_addrs(1), Some(vec![ip("255.255.255.0")]));
    assert_eq!(r.opt_addrs(3), Some(vec![ip("10.99.0.1")]));
    assert_eq!(r.opt_addrs(6), Some(vec![ip("10.99.0.1"), ip("10.99.0.2")]));
    assert_eq!(r.opt_str(15).as_deref(), Some("lab.example"));
    assert_eq!(r.opt_addrs(28), Some(vec![ip("10.99.0.255")]));
    assert_eq!(r.opt_str(60).as_deref(), Some("PXEClient"));
    assert_eq!(r.opt(43), Some(vec![0x06, 0x01, 0x08, 0xff]));
    assert_eq!(r.opt_str(66).as_deref(), Some("10.99.0.1"));
    assert_eq!(r.opt_str(67).as_deref(), Some("undionly.kpxe"));
}

#[test]
fn renewal_and_rebinding_times() {
    let req = Packet::discover().parse();
    for (lease_secs, t1, t2) in [
        (3600, 1800, 3150),
        (1001, 500, 875),
        (1, 0, 0),
        (86_400, 43_200, 75_600),
        (u32::MAX - 1, (u32::MAX - 1) / 2, 3_758_096_382),
    ] {
        let bytes = build_reply(&req, &offer(Some(lease(Some(lease_secs))), None));
        let r = Reply(&bytes);
        assert_eq!(r.opt_u32(51), Some(lease_secs));
        assert_eq!(r.opt_u32(58), Some(t1), "T1 for {lease_secs}");
        assert_eq!(r.opt_u32(59), Some(t2), "T2 for {lease_secs}");
    }
    // An infinite lease is never renewed.
    let bytes = build_reply(&req, &offer(Some(lease(Some(u32::MAX))), None));
    let r = Reply(&bytes);
    assert_eq!(r.opt_u32(51), Some(u32::MAX));
    assert_eq!((r.opt(58), r.opt(59)), (None, None));
}

#[test]
fn requested_options_follow_the_parameter_request_list() {
    let req = pxe_discover().opt(55, &[67, 6, 3, 66, 1, 200]).parse();
    let bytes = build_reply(
        &req,
        &offer(Some(lease(Some(3600))), Some(pxe_boot("undionly.kpxe"))),
    );
    let codes = Reply(&bytes).codes();
    assert_eq!(&codes[..2], &[53, 54], "53 and 54 always lead");
    let requested: Vec<u8> = codes
        .iter()
        .copied()
        .filter(|c| [67, 6, 3, 66, 1].contains(c))
        .collect();
    assert_eq!(requested, vec![67, 6, 3, 66, 1], "client's order");
    // Unrequested options keep their default slots.
    assert_eq!(
        codes,
        vec![53, 54, 51, 58, 59, 67, 6, 3, 15, 28, 60, 43, 66, 1]
    );
}

#[test]
fn replies_are_padded_to_300_bytes() {
    let req = Packet::discover().parse();
    let bytes = build_reply(&req, &nak("no"));
    assert_eq!(bytes.len(), 300);
    let (_, end) = Reply(&bytes).walk();
    assert!(end < 300);
    assert!(bytes[end..].iter().all(|&b| b == 0), "padding is zeros");

    // A reply already longer than 300 bytes is not padded.
    let bytes = build_reply(
        &req,
        &offer(Some(lease(Some(60))), Some(pxe_boot("undionly.kpxe"))),
    );
    let (_, end) = Reply(&bytes).walk();
    assert_eq!(bytes.len(), end.max(300));
}

/// A lease whose options add up to more than a 576-byte datagram can hold.
fn big_lease() -> LeaseParams {
    let mut l = lease(Some(3600));
    l.dns_servers = (1..=30).map(|i| ip(&format!("10.99.1.{i}"))).collect();
    l.domain = Some("d".repeat(200));
    l
}

#[test]
fn max_message_size_drops_unrequested_options_first() {
    // 57 = 576 (udhcpc's value): at most 548 bytes of UDP payload.
    let req = Packet::discover()
        .opt(57, &576u16.to_be_bytes())
        .opt(55, &[1, 3, 6, 15])
        .parse();
    let full = build_reply(&req, &offer(Some(big_lease()), None));
    let r = Reply(&full);
    assert!(full.len() <= 548, "reply is {} bytes", full.len());
    let codes = r.codes();
    // 58, 59 and 28 were not requested: gone first. Still too big, so the last requested
    // option (15) went too. 51 is never dropped.
    assert_eq!(codes, vec![53, 54, 51, 1, 3, 6]);
    assert_eq!(r.opt_addrs(6).map(|v| v.len()), Some(30));

    // Without a size limit from the client the same lease is still capped at 576 - 28.
    let req = Packet::discover().opt(55, &[1, 3, 6, 15]).parse();
    let bytes = build_reply(&req, &offer(Some(big_lease()), None));
    assert!(bytes.len() <= 548);

    // A generous limit keeps everything.
    let req = Packet::discover()
        .opt(57, &1472u16.to_be_bytes())
        .opt(55, &[1, 3, 6, 15])
        .parse();
    let bytes = build_reply(&req, &offer(Some(big_lease()), None));
    assert_eq!(
        Reply(&bytes).codes(),
        vec![53, 54, 51, 58, 59, 1, 3, 6, 15, 28]
    );
    assert!(bytes.len() <= 1472 - 28);
}

#[test]
fn max_message_size_keeps_requested_over_unrequested() {
    // The client asks for 15 but not 6: the DNS list goes, the domain stays.
    let req = Packet::discover()
        .opt(57, &576u16.to_be_bytes())
        .opt(55, &[15])
        .parse();
    let bytes = build_reply(&req, &offer(Some(big_lease()), None));
    let r = Reply(&bytes);
    assert!(bytes.len() <= 548);
    assert!(r.opt(6).is_none());
    assert_eq!(r.opt_str(15).map(|d| d.len()), Some(200));
    assert_eq!(r.opt_u32(51), Some(3600));
}

#[test]
fn max_message_size_below_576_counts_as_576() {
    let req = Packet::discover()
        .opt(57, &300u16.to_be_bytes())
        .opt(55, &[1, 3, 6, 15])
        .parse();
    let bytes = build_reply(&req, &offer(Some(big_lease()), None));
    assert_eq!(Reply(&bytes).codes(), vec![53, 54, 51, 1, 3, 6]);
}

#[test]
fn max_message_size_never_drops_boot_essentials() {
    let req = Packet::discover()
        .opt(57, &576u16.to_be_bytes())
        .opt(55, &[1, 3, 6, 15])
        .parse();
    let url = format!("http://10.99.0.1:8080/boot/{}", "x".repeat(150));
    let boot = BootParams {
        next_server: ip("10.99.0.1"),
        file: url.clone(),
        vendor_class: Some("HTTPClient".into()),
        pxe_discovery_control: false,
    };
    let bytes = build_reply(&req, &offer(Some(big_lease()), Some(boot)));
    let r = Reply(&bytes);
    assert!(bytes.len() <= 548, "{} bytes", bytes.len());
    assert_eq!(r.opt_str(60).as_deref(), Some("HTTPClient"));
    assert_eq!(
        r.opt_str(67),
        Some(url),
        "too long for `file`: 67 must stay"
    );
    assert_eq!(r.file(), "");
    assert_eq!(r.opt_u32(51), Some(3600));
}

#[test]
fn nak_carries_a_message_and_no_lease() {
    let mut p = Packet::new(3).opt(50, &[10, 99, 0, 77]);
    p.ciaddr = [10, 99, 0, 77];
    let req = p.parse();
    // Lease and boot in a NAK plan are ignored (RFC 2131 table 3).
    let plan = ReplyPlan {
        lease: Some(lease(Some(3600))),
        boot: Some(pxe_boot("undionly.kpxe")),
        ..nak("address not available")
    };
    let bytes = build_reply(&req, &plan);
    let r = Reply(&bytes);
    assert_eq!(r.codes(), vec![53, 54, 56]);
    assert_eq!(r.opt(53), Some(vec![6]));
    assert_eq!(r.opt_str(56).as_deref(), Some("address not available"));
    assert_eq!(r.yiaddr(), ip("0.0.0.0"));
    assert_eq!(r.ciaddr(), ip("0.0.0.0"));
    assert_eq!(r.siaddr(), ip("0.0.0.0"));
    assert_eq!(r.file(), "");
    assert_eq!(bytes.len(), 300);
}

#[test]
fn inform_ack_has_no_lease_time_and_copies_ciaddr() {
    let mut p = Packet::new(8).opt(55, &[1, 3, 6, 51]);
    p.ciaddr = [10, 99, 0, 42];
    let req = p.parse();
    for lease_secs in [None, Some(3600)] {
        let plan = ReplyPlan {
            kind: ReplyKind::Ack,
            ..offer(Some(lease(lease_secs)), None)
        };
        let bytes = build_reply(&req, &plan);
        let r = Reply(&bytes);
        assert_eq!(r.opt(53), Some(vec![5]));
        assert_eq!(r.ciaddr(), ip("10.99.0.42"));
        assert_eq!(r.yiaddr(), ip("0.0.0.0"));
        let codes = r.codes();
        for code in [51, 58, 59] {
            assert!(
                !codes.contains(&code),
                "{code} in an INFORM ACK ({lease_secs:?})"
            );
        }
        assert_eq!(codes, vec![53, 54, 1, 3, 6, 15, 28]);
    }
}

#[test]
fn renewal_ack_copies_ciaddr_and_offer_does_not() {
    let mut p = Packet::new(3);
    p.ciaddr = [10, 99, 0, 50];
    let req = p.parse();
    let ack = ReplyPlan {
        kind: ReplyKind::Ack,
        ..offer(Some(lease(Some(3600))), None)
    };
    let bytes = build_reply(&req, &ack);
    let r = Reply(&bytes);
    assert_eq!(r.ciaddr(), ip("10.99.0.50"));
    assert_eq!(r.yiaddr(), ip("10.99.0.50"));
    assert_eq!(r.opt(53), Some(vec![5]));

    let bytes = build_reply(&req, &offer(Some(lease(Some(3600))), None));
    assert_eq!(Reply(&bytes).ciaddr(), ip("0.0.0.0"));
}

#[test]
fn proxy_reply_has_no_address_and_pxe_vendor_options() {
    let req = pxe_discover().parse();
    let bytes = build_reply(&req, &offer(None, Some(pxe_boot("undionly.kpxe"))));
    let r = Reply(&bytes);
    assert_eq!(r.yiaddr(), ip("0.0.0.0"));
    assert_eq!(r.siaddr(), ip("10.99.0.1"));
    assert_eq!(r.codes(), vec![53, 54, 60, 43, 66, 67]);
    assert_eq!(r.opt_str(60).as_deref(), Some("PXEClient"));
    assert_eq!(r.opt(43), Some(vec![0x06, 0x01, 0x08, 0xff]));
    assert_eq!(r.file(), "undionly.kpxe");
    assert_eq!(bytes.len(), 300);
}

#[test]
fn file_field_holds_names_up_to_127_bytes() {
    let req = Packet::discover().parse();
    let fits = "f".repeat(127);
    let bytes = build_reply(&req, &offer(None, Some(pxe_boot(&fits))));
    let r = Reply(&bytes);
    assert_eq!(r.file(), fits);
    assert_eq!(r.file_field()[127], 0, "NUL-terminated");
    assert_eq!(r.opt_str(67), Some(fits));

    let too_long = "f".repeat(128);
    let bytes = build_reply(&req, &offer(None, Some(pxe_boot(&too_long))));
    let r = Reply(&bytes);
    assert_eq!(r.file_field(), &[0; 128]);
    assert_eq!(r.opt_str(67), Some(too_long));
}

#[test]
fn long_boot_urls_are_split_per_rfc_3396() {
    let req = Packet::discover().opt(57, &1472u16.to_be_bytes()).parse();
    let url = format!("http://10.99.0.1/{}", "u".repeat(300));
    let bytes = build_reply(&req, &offer(None, Some(pxe_boot(&url))));
    let r = Reply(&bytes);
    let pieces: Vec<usize> = r
        .walk()
        .0
        .iter()
        .filter(|(c, _)| *c == 67)
        .map(|(_, v)| v.len())
        .collect();
    assert_eq!(pieces, vec![255, url.len() - 255]);
    assert_eq!(r.opt_str(67), Some(url));
}

#[test]
fn reply_decodes_with_dhcproto() {
    use dhcproto::v4::{Decodable, Decoder, Message, MessageType as M, Opcode};
    let req = pxe_discover().opt(55, &[1, 3, 6, 67]).parse();
    let bytes = build_reply(
        &req,
        &offer(Some(lease(Some(3600))), Some(pxe_boot("ipxe.efi"))),
    );
    let msg = Message::decode(&mut Decoder::new(&bytes)).unwrap();
    assert_eq!(msg.opcode(), Opcode::BootReply);
    assert_eq!(msg.xid(), req.xid);
    assert_eq!(msg.opts().msg_type(), Some(M::Offer));
    assert_eq!(msg.yiaddr(), ip("10.99.0.50"));
}

// ---------------------------------------------------------------------------------------------
// destination (RFC 2131 §4.1)
// ---------------------------------------------------------------------------------------------

#[test]
fn destination_relay_wins_over_everything() {
    let mut p = Packet::new(3);
    p.giaddr = [10, 98, 0, 1];
    p.ciaddr = [10, 99, 0, 50];
    p.flags = 0x8000;
    let req = p.parse();
    assert_eq!(
        destination(&req, &offer(Some(lease(Some(60))), None)),
        Destination::Relay(ip("10.98.0.1"))
    );
    assert_eq!(
        destination(&req, &nak("no")),
        Destination::Relay(ip("10.98.0.1"))
    );
}

#[test]
fn destination_nak_is_broadcast() {
    let mut p = Packet::new(3);
    p.ciaddr = [10, 99, 0, 50];
    assert_eq!(destination(&p.parse(), &nak("no")), Destination::Broadcast);
}

#[test]
fn destination_client_with_an_address_gets_unicast() {
    let mut p = Packet::new(8);
    p.ciaddr = [10, 99, 0, 42];
    p.flags = 0x8000; // ciaddr wins over the broadcast flag
    let plan = ReplyPlan {
        kind: ReplyKind::Ack,
        ..offer(Some(lease(None)), None)
    };
    assert_eq!(
        destination(&p.parse(), &plan),
        Destination::Unicast(ip("10.99.0.42"))
    );
}

#[test]
fn destination_broadcast_flag() {
    let mut p = Packet::discover();
    p.flags = 0x8000;
    assert_eq!(
        destination(&p.parse(), &offer(Some(lease(Some(60))), None)),
        Destination::Broadcast
    );
}

#[test]
fn destination_new_address_goes_to_the_mac_without_arp() {
    let req = Packet::discover().parse();
    assert_eq!(
        destination(&req, &offer(Some(lease(Some(60))), None)),
        Destination::Hardware {
            ip: ip("10.99.0.50"),
            mac: mac("52:54:00:12:34:56")
        }
    );
}

#[test]
fn destination_no_address_at_all_is_broadcast() {
    // A ProxyDHCP reply to a client without the broadcast flag (iPXE) has no yiaddr to use.
    let req = Packet::discover().parse();
    assert_eq!(
        destination(&req, &offer(None, Some(pxe_boot("undionly.kpxe")))),
        Destination::Broadcast
    );
}
