//! Helpers shared by the wire tests: a request-packet builder, a reply reader that looks at raw
//! bytes (not through the code under test), and the captured packets.

use std::net::Ipv4Addr;

use plinth_dhcp::wire::{BootParams, LeaseParams, ReplyKind, ReplyPlan, Request, parse};
use plinth_types::MacAddr;

pub const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// A BOOTREQUEST built field by field, so tests can break any one of them.
#[derive(Debug, Clone)]
pub struct Packet {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: [u8; 4],
    pub giaddr: [u8; 4],
    pub chaddr: [u8; 16],
    pub sname: [u8; 64],
    pub file: [u8; 128],
    pub magic: [u8; 4],
    /// Raw option bytes after the cookie, end option included when wanted.
    pub options: Vec<u8>,
}

impl Packet {
    /// A DISCOVER from 52:54:00:12:34:56 with only option 53 and the end option.
    pub fn discover() -> Self {
        Packet::new(1)
    }

    /// A request of message type `msg_type` (option 53) and nothing else.
    pub fn new(msg_type: u8) -> Self {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        Packet {
            op: 1,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: 0xdead_beef,
            secs: 3,
            flags: 0,
            ciaddr: [0; 4],
            giaddr: [0; 4],
            chaddr,
            sname: [0; 64],
            file: [0; 128],
            magic: MAGIC,
            options: vec![53, 1, msg_type, 255],
        }
    }

    /// Insert a TLV option before the end option.
    pub fn opt(mut self, code: u8, value: &[u8]) -> Self {
        let at = self
            .options
            .iter()
            .rposition(|&b| b == 255)
            .unwrap_or(self.options.len());
        let mut tlv = vec![
            code,
            u8::try_from(value.len()).expect("option value over 255 bytes"),
        ];
        tlv.extend_from_slice(value);
        self.options.splice(at..at, tlv);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = vec![self.op, self.htype, self.hlen, self.hops];
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        b.extend_from_slice(&self.ciaddr);
        b.extend_from_slice(&[0; 4]); // yiaddr
        b.extend_from_slice(&[0; 4]); // siaddr
        b.extend_from_slice(&self.giaddr);
        b.extend_from_slice(&self.chaddr);
        b.extend_from_slice(&self.sname);
        b.extend_from_slice(&self.file);
        b.extend_from_slice(&self.magic);
        b.extend_from_slice(&self.options);
        b
    }

    pub fn parse(&self) -> Request {
        parse(&self.bytes()).expect("test packet should parse")
    }
}

/// A reply read straight off the bytes, with the offsets of RFC 2131 §2.
pub struct Reply<'a>(pub &'a [u8]);

impl Reply<'_> {
    pub fn op(&self) -> u8 {
        self.0[0]
    }
    pub fn htype(&self) -> u8 {
        self.0[1]
    }
    pub fn hlen(&self) -> u8 {
        self.0[2]
    }
    pub fn hops(&self) -> u8 {
        self.0[3]
    }
    pub fn xid(&self) -> u32 {
        u32::from_be_bytes(self.0[4..8].try_into().unwrap())
    }
    pub fn secs(&self) -> u16 {
        u16::from_be_bytes(self.0[8..10].try_into().unwrap())
    }
    pub fn flags(&self) -> u16 {
        u16::from_be_bytes(self.0[10..12].try_into().unwrap())
    }
    fn addr(&self, at: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3])
    }
    pub fn ciaddr(&self) -> Ipv4Addr {
        self.addr(12)
    }
    pub fn yiaddr(&self) -> Ipv4Addr {
        self.addr(16)
    }
    pub fn siaddr(&self) -> Ipv4Addr {
        self.addr(20)
    }
    pub fn giaddr(&self) -> Ipv4Addr {
        self.addr(24)
    }
    pub fn chaddr(&self) -> &[u8] {
        &self.0[28..44]
    }
    pub fn sname(&self) -> &[u8] {
        &self.0[44..108]
    }
    pub fn file_field(&self) -> &[u8] {
        &self.0[108..236]
    }
    /// The `file` field up to its first NUL.
    pub fn file(&self) -> &str {
        let f = self.file_field();
        let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        std::str::from_utf8(&f[..end]).unwrap()
    }
    pub fn magic(&self) -> &[u8] {
        &self.0[236..240]
    }

    /// Every option instance in wire order (pads skipped), and the offset just past the end
    /// option. Panics if the options are malformed or there is no end option.
    pub fn walk(&self) -> (Vec<(u8, Vec<u8>)>, usize) {
        let mut out = Vec::new();
        let mut i = 240;
        loop {
            match self.0[i] {
                0 => i += 1,
                255 => return (out, i + 1),
                code => {
                    let len = usize::from(self.0[i + 1]);
                    out.push((code, self.0[i + 2..i + 2 + len].to_vec()));
                    i += 2 + len;
                }
            }
        }
    }

    /// Option codes in wire order.
    pub fn codes(&self) -> Vec<u8> {
        self.walk().0.into_iter().map(|(c, _)| c).collect()
    }

    /// The value of `code`, its instances concatenated (RFC 3396).
    pub fn opt(&self, code: u8) -> Option<Vec<u8>> {
        let parts: Vec<Vec<u8>> = self
            .walk()
            .0
            .into_iter()
            .filter(|(c, _)| *c == code)
            .map(|(_, v)| v)
            .collect();
        (!parts.is_empty()).then(|| parts.concat())
    }

    pub fn opt_u32(&self, code: u8) -> Option<u32> {
        self.opt(code)
            .map(|v| u32::from_be_bytes(v.as_slice().try_into().unwrap()))
    }

    pub fn opt_str(&self, code: u8) -> Option<String> {
        self.opt(code).map(|v| String::from_utf8(v).unwrap())
    }

    pub fn opt_addrs(&self, code: u8) -> Option<Vec<Ipv4Addr>> {
        self.opt(code).map(|v| {
            v.chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect()
        })
    }
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

/// A typical lease on 10.99.0.0/24.
pub fn lease(secs: Option<u32>) -> LeaseParams {
    LeaseParams {
        yiaddr: ip("10.99.0.50"),
        lease_secs: secs,
        subnet_mask: ip("255.255.255.0"),
        routers: vec![ip("10.99.0.1")],
        dns_servers: vec![ip("10.99.0.1"), ip("10.99.0.2")],
        domain: Some("lab.example".into()),
        broadcast_addr: Some(ip("10.99.0.255")),
    }
}

pub fn pxe_boot(file: &str) -> BootParams {
    BootParams {
        next_server: ip("10.99.0.1"),
        file: file.into(),
        vendor_class: Some("PXEClient".into()),
        pxe_discovery_control: true,
    }
}

pub fn offer(lease: Option<LeaseParams>, boot: Option<BootParams>) -> ReplyPlan {
    ReplyPlan {
        kind: ReplyKind::Offer,
        server_id: ip("10.99.0.1"),
        lease,
        boot,
        message: None,
    }
}

pub fn nak(message: &str) -> ReplyPlan {
    ReplyPlan {
        kind: ReplyKind::Nak,
        server_id: ip("10.99.0.1"),
        lease: None,
        boot: None,
        message: Some(message.into()),
    }
}

/// A packet stored as hex under tests/captures/, `#` lines being comments.
pub fn capture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/captures/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let hex: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .collect();
    hex::decode(hex).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// All captures, by name.
pub const CAPTURES: &[&str] = &[
    "seabios_ipxe_discover",
    "ovmf_edk2_pxe_discover",
    "ovmf_edk2_http_discover",
    "ovmf_ipxe_efi_discover",
    "dhclient_discover",
    "udhcpc_discover",
    "dhcpcd_discover",
];
