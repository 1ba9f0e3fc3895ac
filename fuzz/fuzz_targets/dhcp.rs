//! DHCP: a datagram from the network parsed as a request; every request that parses gets a
//! reply built for each kind (offer, ACK, NAK, ProxyDHCP) and a destination, without a panic;
//! a reply is a BOOTREPLY of at least 300 bytes that echoes the transaction.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use plinth_dhcp::wire::{self, BootParams, LeaseParams, ReplyKind, ReplyPlan};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = wire::parse(data) else {
        return;
    };
    let lease = LeaseParams {
        yiaddr: Ipv4Addr::new(10, 0, 0, 50),
        lease_secs: Some(3600),
        subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
        routers: vec![Ipv4Addr::new(10, 0, 0, 1)],
        dns_servers: vec![Ipv4Addr::new(10, 0, 0, 1)],
        domain: Some("lab.example".into()),
        broadcast_addr: None,
    };
    let boot = BootParams {
        next_server: Ipv4Addr::new(10, 0, 0, 2),
        file: "http://10.0.0.2:8080/boot/ipxe.efi".into(),
        vendor_class: req.vendor_class.clone(),
        pxe_discovery_control: req.is_pxe(),
    };
    for (kind, lease, boot) in [
        (ReplyKind::Offer, Some(lease.clone()), Some(boot.clone())),
        (ReplyKind::Ack, Some(lease.clone()), None),
        (ReplyKind::Nak, None, None),
        (ReplyKind::Ack, None, Some(boot.clone())),
    ] {
        let plan = ReplyPlan {
            kind,
            server_id: Ipv4Addr::new(10, 0, 0, 2),
            lease,
            boot,
            message: (kind == ReplyKind::Nak).then(|| "no".into()),
        };
        let out = wire::build_reply(&req, &plan);
        assert!(out.len() >= 300, "a reply is padded to 300 bytes");
        assert_eq!(out[0], 2, "BOOTREPLY");
        assert_eq!(
            out[4..8],
            req.xid.to_be_bytes(),
            "the transaction is echoed"
        );
        let _ = wire::destination(&req, &plan);
    }
});
