//! The DHCPv4 wire layer, sans-IO: bytes in, a validated [`Request`] out; a [`Request`] plus a
//! [`ReplyPlan`] in, reply bytes and a [`Destination`] out.
//!
//! Nothing here opens a socket, reads a clock or decides who gets which address or boot file: the
//! caller (the server loop, with plinth-core's decisions) does that. What this module owns is the
//! part that has to be exactly right on the wire and that real firmware is picky about:
//!
//! * [`parse`] accepts only what the server can answer: a BOOTREQUEST from an Ethernet NIC carrying
//!   DHCP option 53 with a client message type. Every other input, however mangled, is a
//!   [`ParseError`], never a panic.
//! * [`build_reply`] writes OFFER/ACK/NAK bytes: options in a stable order (53 then 54 first,
//!   requested options in the client's parameter request list order), the client's maximum message
//!   size honoured, and the message padded to the 300-byte BOOTP minimum that old PXE ROMs insist on.
//! * [`destination`] applies RFC 2131 §4.1 to say where the reply must go.
//!
//! dhcproto is used for option encoding and its vocabulary (message types, option codes). The
//! request side walks the options itself: dhcproto 0.15's decoder panics on some inputs in debug
//! builds (`debug_assert!` on the lengths of options 80 and 94, slicing `chaddr` with an
//! unchecked `hlen`) and silently stops at the first option it cannot decode, which would turn a
//! mangled option into a missing one instead of an error.

mod reply;
mod request;

use std::net::Ipv4Addr;

use plinth_types::MacAddr;
use plinth_types::netboot::PxeArch;

pub use reply::{build_reply, destination};
pub use request::parse;

/// Largest UDP payload `parse` looks at. Ethernet-framed DHCP never exceeds 1500 bytes; the cap
/// leaves room for jumbo frames while bounding the work done on a hostile datagram.
pub const MAX_PACKET: usize = 4096;

/// The BOOTP minimum message size (RFC 951). Replies are zero-padded to it: some PXE ROMs drop
/// anything shorter.
pub const MIN_REPLY: usize = 300;

/// The fixed BOOTP header plus the magic cookie: where options start.
pub const HEADER_LEN: usize = 240;

/// The DHCP message types a client sends to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover,
    Request,
    Decline,
    Release,
    Inform,
}

impl MessageType {
    /// The option 53 value (RFC 2132 §9.6).
    pub fn code(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Request => 3,
            MessageType::Decline => 4,
            MessageType::Release => 7,
            MessageType::Inform => 8,
        }
    }
}

/// A parsed, validated client request (op = BOOTREQUEST, htype 1 Ethernet, hlen 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub msg_type: MessageType,
    pub xid: u32,
    pub secs: u16,
    /// Flags bit 15: the client cannot receive unicast before it has an address.
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: MacAddr,
    pub hops: u8,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 55, in the client's order.
    pub param_request_list: Vec<u8>,
    /// Option 57, as sent (values under 576 are raised to 576 when building the reply).
    pub max_message_size: Option<u16>,
    /// Option 60 (lossy UTF-8, trailing NULs removed).
    pub vendor_class: Option<String>,
    /// Option 93, first value (RFC 4578).
    pub client_arch: Option<u16>,
    /// Option 97: the 16 bytes after the type byte 0, as sent (SMBIOS byte order).
    pub client_uuid: Option<[u8; 16]>,
    /// Option 77: raw text, or the RFC 3004 classes joined with ','.
    pub user_class: Option<String>,
    /// Option 175 present: the client is iPXE announcing its features.
    pub ipxe_encap: bool,
    /// Option 12 (lossy UTF-8, trailing NULs removed).
    pub hostname: Option<String>,
    /// Option 61.
    pub client_id: Option<Vec<u8>>,
}

impl Request {
    /// A PXE client (firmware PXE or iPXE) per the PXE 2.1 spec's vendor class.
    pub fn is_pxe(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("PXEClient"))
    }

    /// A UEFI HTTP boot client: its vendor class, or an architecture type that IANA assigns to
    /// HTTP boot (16 is x64 UEFI HTTP; the others are the same for other CPUs).
    pub fn is_http_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("HTTPClient"))
            || self.client_arch.is_some_and(PxeArch::is_http)
    }

    /// iPXE identifies itself with user class "iPXE" (RFC 3004 encoded or raw, depending on the
    /// build) and with its encapsulated option 175.
    pub fn is_ipxe(&self) -> bool {
        self.ipxe_encap
            || self
                .user_class
                .as_deref()
                .is_some_and(|u| u.split(',').any(|class| class == "iPXE"))
    }
}

/// Why a datagram is not a request the server can answer. The server logs these at debug level
/// and drops the datagram: a DHCP server never answers what it cannot parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("datagram shorter than the 240-byte DHCP header")]
    Truncated,
    #[error("not a BOOTREQUEST (op is not 1)")]
    NotARequest,
    /// Only Ethernet (htype 1, hlen 6) is served. An hlen over 16 does not fit `chaddr` at all
    /// and is rejected here whatever the htype.
    #[error("unsupported hardware type {htype} with address length {hlen}")]
    UnsupportedHardware { htype: u8, hlen: u8 },
    #[error("BOOTP request without a DHCP message type (option 53)")]
    NoMessageType,
    #[error("DHCP message type {0} is not one a client sends to a server")]
    UnsupportedMessageType(u8),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("datagram larger than 4096 bytes")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

impl ReplyKind {
    /// The option 53 value (RFC 2132 §9.6).
    pub fn code(self) -> u8 {
        match self {
            ReplyKind::Offer => 2,
            ReplyKind::Ack => 5,
            ReplyKind::Nak => 6,
        }
    }
}

/// The address part of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseParams {
    pub yiaddr: Ipv4Addr,
    /// None for INFORM replies (no options 51/58/59).
    pub lease_secs: Option<u32>,
    pub subnet_mask: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    /// Option 28.
    pub broadcast_addr: Option<Ipv4Addr>,
}

/// The network-boot part of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// siaddr, and option 66 as dotted-quad text.
    pub next_server: Ipv4Addr,
    /// The BOOTP `file` field (when it fits in 128 bytes with its NUL) and option 67.
    pub file: String,
    /// Option 60 echo: "PXEClient" or "HTTPClient". PXE and UEFI HTTP clients ignore boot
    /// information in replies that do not carry it.
    pub vendor_class: Option<String>,
    /// Option 43 with PXE sub-option 6 (discovery control) = 0x08: boot the file given here,
    /// do not look for boot servers.
    pub pxe_discovery_control: bool,
}

/// What to answer, decided by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyPlan {
    pub kind: ReplyKind,
    /// Option 54, always sent.
    pub server_id: Ipv4Addr,
    /// None: a NAK, or a ProxyDHCP reply (yiaddr 0.0.0.0, boot information only).
    pub lease: Option<LeaseParams>,
    pub boot: Option<BootParams>,
    /// Option 56 (used with NAK).
    pub message: Option<String>,
}

/// Where a reply must be sent (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// giaddr, UDP port 67.
    Relay(Ipv4Addr),
    /// ciaddr, UDP port 68.
    Unicast(Ipv4Addr),
    /// 255.255.255.255, UDP port 68.
    Broadcast,
    /// Unicast to yiaddr at chaddr without ARP (the client has no address yet to answer ARP
    /// with), UDP port 68.
    Hardware { ip: Ipv4Addr, mac: MacAddr },
}
