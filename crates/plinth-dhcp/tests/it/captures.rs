//! Real DHCPDISCOVERs captured from real clients (see the first line of each file under
//! tests/captures/ for what sent it and how), parsed, and answered with the OFFER plinth would
//! send that client.

use std::net::Ipv4Addr;

use crate::common::{CAPTURES, Reply, capture, ip, lease, mac, offer};
use plinth_dhcp::wire::{
    BootParams, Destination, MessageType, ReplyPlan, Request, build_reply, destination, parse,
};

/// The SMBIOS UUID given to every VM (`-uuid 8a1c4f5e-2b3d-4e6f-9a0b-1c2d3e4f5a6b`) as firmware
/// sends it in option 97: the first three fields little-endian (SMBIOS 2.6+ / EFI GUID order),
/// the rest as written. Both EDK2 and iPXE do this, so a UUID matched against a BMC's Redfish
/// `UUID` string needs the swap.
const VM_UUID_ON_THE_WIRE: [u8; 16] = [
    0x5e, 0x4f, 0x1c, 0x8a, 0x3d, 0x2b, 0x6f, 0x4e, 0x9a, 0x0b, 0x1c, 0x2d, 0x3e, 0x4f, 0x5a, 0x6b,
];

/// What every capture must parse to.
struct Expect {
    xid: u32,
    mac: &'static str,
    broadcast: bool,
    arch: Option<u16>,
    vendor_class: Option<&'static str>,
    user_class: Option<&'static str>,
    pxe: bool,
    ipxe: bool,
    http: bool,
    uuid: bool,
    prl: &'static [u8],
    max_message_size: Option<u16>,
}

fn check_parse(name: &str, e: &Expect) -> Request {
    let bytes = capture(name);
    let req = parse(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
    assert_eq!(req.msg_type, MessageType::Discover, "{name}");
    assert_eq!(req.xid, e.xid, "{name}");
    assert_eq!(req.chaddr, mac(e.mac), "{name}");
    assert_eq!(req.broadcast, e.broadcast, "{name}");
    assert_eq!(req.ciaddr, Ipv4Addr::UNSPECIFIED, "{name}");
    assert_eq!(req.giaddr, Ipv4Addr::UNSPECIFIED, "{name}");
    assert_eq!(req.client_arch, e.arch, "{name}");
    assert_eq!(req.vendor_class.as_deref(), e.vendor_class, "{name}");
    assert_eq!(req.user_class.as_deref(), e.user_class, "{name}");
    assert_eq!(req.is_pxe(), e.pxe, "{name} is_pxe");
    assert_eq!(req.is_ipxe(), e.ipxe, "{name} is_ipxe");
    assert_eq!(req.is_http_client(), e.http, "{name} is_http_client");
    if e.uuid {
        assert_eq!(req.client_uuid, Some(VM_UUID_ON_THE_WIRE), "{name}");
    } else {
        assert_eq!(req.client_uuid, None, "{name}");
    }
    assert_eq!(req.param_request_list, e.prl, "{name}");
    assert_eq!(req.max_message_size, e.max_message_size, "{name}");
    assert_eq!(req.requested_ip, None, "{name}");
    assert_eq!(req.server_id, None, "{name}");
    req
}

/// Build the OFFER and check what every reply to a capture must satisfy; return the bytes.
fn check_offer(name: &str, req: &Request, plan: &ReplyPlan) -> Vec<u8> {
    let bytes = build_reply(req, plan);
    let r = Reply(&bytes);
    assert_eq!(r.op(), 2, "{name}");
    assert_eq!((r.htype(), r.hlen()), (1, 6), "{name}");
    assert_eq!(r.xid(), req.xid, "{name}");
    assert_eq!(r.flags(), if req.broadcast { 0x8000 } else { 0 }, "{name}");
    assert_eq!(&r.chaddr()[..6], &req.chaddr.0, "{name}");
    assert_eq!(r.opt(53), Some(vec![2]), "{name}");
    assert_eq!(&r.codes()[..2], &[53, 54], "{name}");
    assert_eq!(r.opt_addrs(54), Some(vec![ip("10.99.0.1")]), "{name}");
    assert!(bytes.len() >= 300, "{name}");
    let limit = usize::from(req.max_message_size.unwrap_or(576).max(576)) - 28;
    assert!(bytes.len() <= limit, "{name}: {} > {limit}", bytes.len());
    if let Some(boot) = &plan.boot {
        assert_eq!(r.siaddr(), boot.next_server, "{name}");
        assert_eq!(r.file(), boot.file, "{name}");
        assert_eq!(r.opt_str(67).as_deref(), Some(boot.file.as_str()), "{name}");
    }
    bytes
}

fn ipxe_script(req: &Request) -> BootParams {
    BootParams {
        next_server: ip("10.99.0.1"),
        file: format!("http://10.99.0.1:8080/boot/ipxe?mac={}", req.chaddr),
        vendor_class: None,
        pxe_discovery_control: false,
    }
}

#[test]
fn every_capture_is_listed_and_parses() {
    let dir = format!("{}/tests/captures", env!("CARGO_MANIFEST_DIR"));
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".hex").map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CAPTURES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    for name in CAPTURES {
        let bytes = capture(name);
        assert!(
            bytes.len() >= 300,
            "{name}: real clients pad to the BOOTP minimum"
        );
        assert!(parse(&bytes).is_ok(), "{name}");
    }
}

#[test]
fn seabios_ipxe() {
    let req = check_parse(
        "seabios_ipxe_discover",
        &Expect {
            xid: 0xa5a2_7216,
            mac: "52:54:00:99:00:10",
            broadcast: false,
            arch: Some(0),
            vendor_class: Some("PXEClient:Arch:00000:UNDI:002001"),
            user_class: Some("iPXE"),
            pxe: true,
            ipxe: true,
            http: false,
            uuid: true,
            prl: &[
                1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134,
                135, 175, 203,
            ],
            max_message_size: Some(1472),
        },
    );
    assert!(req.ipxe_encap);
    assert_eq!(req.secs, 4);
    assert_eq!(req.client_id, Some(vec![1, 0x52, 0x54, 0, 0x99, 0, 0x10]));

    // Already iPXE: hand it the boot script over HTTP, no PXE vendor options.
    let plan = offer(Some(lease(Some(3600))), Some(ipxe_script(&req)));
    let bytes = check_offer("seabios_ipxe_discover", &req, &plan);
    let r = Reply(&bytes);
    assert_eq!(
        r.file(),
        "http://10.99.0.1:8080/boot/ipxe?mac=52:54:00:99:00:10"
    );
    assert_eq!(r.yiaddr(), ip("10.99.0.50"));
    assert_eq!(r.codes(), vec![53, 54, 51, 58, 59, 1, 3, 6, 15, 28, 66, 67]);
    // iPXE does not set the broadcast flag: it must get the OFFER at its MAC, without ARP.
    assert_eq!(
        destination(&req, &plan),
        Destination::Hardware {
            ip: ip("10.99.0.50"),
            mac: mac("52:54:00:99:00:10")
        }
    );
}

#[test]
fn ovmf_edk2_pxe() {
    let req = check_parse(
        "ovmf_edk2_pxe_discover",
        &Expect {
            xid: 0x8c91_f204,
            mac: "52:54:00:99:00:11",
            broadcast: true,
            arch: Some(7),
            vendor_class: Some("PXEClient:Arch:00007:UNDI:003000"),
            user_class: None,
            pxe: true,
            ipxe: false,
            http: false,
            uuid: true,
            prl: &[
                1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58,
                59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
            ],
            max_message_size: Some(1472),
        },
    );
    assert!(!req.ipxe_encap);
    assert_eq!(req.client_id, None);

    // Firmware PXE on x64 UEFI: chain-load iPXE over TFTP.
    let boot = BootParams {
        next_server: ip("10.99.0.1"),
        file: "ipxe.efi".into(),
        vendor_class: Some("PXEClient".into()),
        pxe_discovery_control: true,
    };
    let plan = offer(Some(lease(Some(3600))), Some(boot));
    let bytes = check_offer("ovmf_edk2_pxe_discover", &req, &plan);
    let r = Reply(&bytes);
    assert_eq!(r.flags(), 0x8000);
    assert_eq!(r.file(), "ipxe.efi");
    assert_eq!(r.siaddr(), ip("10.99.0.1"));
    assert_eq!(r.opt_str(60).as_deref(), Some("PXEClient"));
    assert_eq!(r.opt(43), Some(vec![0x06, 0x01, 0x08, 0xff]));
    assert_eq!(r.opt_str(66).as_deref(), Some("10.99.0.1"));
    // EDK2 asked for every option sent, so the whole body follows its list (43 before 51).
    assert_eq!(
        r.codes(),
        vec![53, 54, 1, 3, 6, 15, 28, 43, 51, 58, 59, 60, 66, 67]
    );
    assert_eq!(destination(&req, &plan), Destination::Broadcast);

    // The same client answered by a ProxyDHCP server: no address, boot information only.
    let proxy = offer(None, plan.boot.clone());
    let bytes = check_offer("ovmf_edk2_pxe_discover", &req, &proxy);
    let r = Reply(&bytes);
    assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.codes(), vec![53, 54, 43, 60, 66, 67]);
    assert_eq!(bytes.len(), 300);
}

#[test]
fn ovmf_edk2_http() {
    let req = check_parse(
        "ovmf_edk2_http_discover",
        &Expect {
            xid: 0x8c91_f207,
            mac: "52:54:00:99:00:11",
            broadcast: true,
            arch: Some(16),
            vendor_class: Some("HTTPClient:Arch:00016:UNDI:003000"),
            user_class: None,
            pxe: false,
            ipxe: false,
            http: true,
            uuid: true,
            // EDK2's HTTP boot asks for 235 where its PXE asks for 66, and stops at 97.
            prl: &[
                1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58,
                59, 60, 235, 67, 97,
            ],
            max_message_size: Some(1472),
        },
    );

    // UEFI HTTP boot: the boot file is a URL, and the reply must echo "HTTPClient".
    let boot = BootParams {
        next_server: ip("10.99.0.1"),
        file: "http://10.99.0.1:8080/boot/ipxe.efi".into(),
        vendor_class: Some("HTTPClient".into()),
        pxe_discovery_control: false,
    };
    let plan = offer(Some(lease(Some(3600))), Some(boot));
    let bytes = check_offer("ovmf_edk2_http_discover", &req, &plan);
    let r = Reply(&bytes);
    assert_eq!(r.opt_str(60).as_deref(), Some("HTTPClient"));
    assert_eq!(r.opt(43), None);
    assert_eq!(r.file(), "http://10.99.0.1:8080/boot/ipxe.efi");
    // 66 was not requested: it keeps its default slot among the requested options.
    assert_eq!(
        r.codes(),
        vec![53, 54, 1, 3, 6, 15, 28, 51, 58, 59, 60, 66, 67]
    );
    assert_eq!(destination(&req, &plan), Destination::Broadcast);
}

#[test]
fn ovmf_ipxe_efi() {
    let req = check_parse(
        "ovmf_ipxe_efi_discover",
        &Expect {
            xid: 0xcba3_4441,
            mac: "52:54:00:99:00:12",
            broadcast: false,
            arch: Some(7),
            vendor_class: Some("PXEClient:Arch:00007:UNDI:003010"),
            user_class: Some("iPXE"),
            pxe: true,
            ipxe: true,
            http: false,
            uuid: true,
            prl: &[
                1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134,
                135, 175, 203,
            ],
            max_message_size: Some(1472),
        },
    );
    assert!(req.ipxe_encap);

    let plan = offer(Some(lease(Some(3600))), Some(ipxe_script(&req)));
    let bytes = check_offer("ovmf_ipxe_efi_discover", &req, &plan);
    let r = Reply(&bytes);
    assert_eq!(
        r.file(),
        "http://10.99.0.1:8080/boot/ipxe?mac=52:54:00:99:00:12"
    );
    assert_eq!(r.opt(60), None);
    assert_eq!(
        destination(&req, &plan),
        Destination::Hardware {
            ip: ip("10.99.0.50"),
            mac: mac("52:54:00:99:00:12")
        }
    );
}

#[test]
fn dhclient() {
    let req = check_parse(
        "dhclient_discover",
        &Expect {
            xid: 0x16f3_ac28,
            mac: "52:54:00:99:00:20",
            broadcast: false,
            arch: None,
            vendor_class: None,
            user_class: None,
            pxe: false,
            ipxe: false,
            http: false,
            uuid: false,
            prl: &[1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42],
            max_message_size: None,
        },
    );
    assert_eq!(req.hostname.as_deref(), Some("vm"));

    let plan = offer(Some(lease(Some(3600))), None);
    let bytes = check_offer("dhclient_discover", &req, &plan);
    let r = Reply(&bytes);
    assert_eq!(r.yiaddr(), ip("10.99.0.50"));
    assert_eq!(r.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.file_field(), &[0; 128]);
    assert_eq!(r.codes(), vec![53, 54, 51, 58, 59, 1, 28, 3, 15, 6]);
}

#[test]
fn udhcpc() {
    let req = check_parse(
        "udhcpc_discover",
        &Expect {
            xid: 0xfba6_b32a,
            mac: "52:54:00:99:00:20",
            broadcast: false,
            arch: None,
            vendor_class: Some("udhcp 1.35.0"),
            user_class: None,
            pxe: false,
            ipxe: false,
            http: false,
            uuid: false,
            prl: &[1, 3, 6, 12, 15, 28, 42],
            max_message_size: Some(576),
        },
    );
    assert_eq!(req.client_id, Some(vec![1, 0x52, 0x54, 0, 0x99, 0, 0x20]));

    // The agent's ramdisk: 576 bytes (udhcpc counts the IP and UDP headers in that).
    let plan = offer(Some(lease(Some(3600))), None);
    let bytes = check_offer("udhcpc_discover", &req, &plan);
    assert!(bytes.len() <= 548);
    assert_eq!(
        Reply(&bytes).codes(),
        vec![53, 54, 51, 58, 59, 1, 3, 6, 15, 28]
    );
}

#[test]
fn dhcpcd() {
    let req = check_parse(
        "dhcpcd_discover",
        &Expect {
            xid: 0x693c_e17f,
            mac: "52:54:00:99:00:20",
            broadcast: false,
            arch: None,
            vendor_class: Some("dhcpcd-9.4.1:Linux-6.18.44-fc-v595:x86_64:AuthenticAMD"),
            user_class: None,
            pxe: false,
            ipxe: false,
            http: false,
            uuid: false,
            prl: &[1, 3, 28, 33, 51, 58, 59],
            max_message_size: Some(1472),
        },
    );
    // dhcpcd identifies itself with a DUID-based client id only when configured to.
    assert_eq!(req.client_id, None);

    let plan = offer(Some(lease(Some(3600))), None);
    let bytes = check_offer("dhcpcd_discover", &req, &plan);
    // Requested options (1, 3, 28, 51, 58, 59) in dhcpcd's order, in the slots the requested
    // options occupy by default; 6 and 15 stay where they were.
    assert_eq!(
        Reply(&bytes).codes(),
        vec![53, 54, 1, 3, 28, 51, 58, 6, 15, 59]
    );
}
