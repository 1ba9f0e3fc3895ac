//! Encoding OFFER/ACK/NAK replies and choosing where they go.
//!
//! The header is written by hand (it is fixed offsets and cannot fail); each option is encoded
//! by dhcproto, which also splits values over 255 bytes into several instances (RFC 3396). The
//! options are not handed to dhcproto as a `DhcpOptions` map because that map always encodes in
//! numeric code order, and the order here matters to clients (see [`build_reply`]).

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Encodable, Encoder, MAGIC};
use tracing::warn;

use super::{
    BootParams, Destination, LeaseParams, MIN_REPLY, MessageType, ReplyKind, ReplyPlan, Request,
};

/// Every client must accept a 576-byte IP datagram (RFC 2131 §2, RFC 2132 §9.10).
const MIN_DATAGRAM: usize = 576;
/// Never build a reply that would need IP fragmentation on Ethernet.
const MAX_DATAGRAM: usize = 1500;
/// IPv4 (no options) and UDP headers.
const IP_UDP_HEADERS: usize = 28;
/// Longest `file` value that still leaves room for its terminating NUL in the 128-byte field.
const FILE_FIELD_MAX: usize = 127;
/// PXE vendor options (PXE 2.1 specification, option 43 tag 6, PXE_DISCOVERY_CONTROL) = 0x08:
/// "use the boot file in this reply, do not do boot server discovery", then the end tag.
const PXE_DISCOVERY_CONTROL: [u8; 4] = [0x06, 0x01, 0x08, 0xff];

/// Encode the reply to `req`.
///
/// Header: op BOOTREPLY, htype/hlen Ethernet, hops 0, the request's xid, flags, giaddr and
/// chaddr; ciaddr copied only into an ACK (it is 0 unless the client is renewing, rebinding or
/// sending INFORM); yiaddr from the lease, but 0.0.0.0 for a NAK, a ProxyDHCP reply and an ACK to
/// INFORM; siaddr and `file` from the boot parameters.
///
/// Options: 53 first, then 54, then the lease options (51, 58 = 50 % and 59 = 87.5 % of the lease
/// time, 1, 3, 6, 15, 28), the boot options (60, 43, 66, 67), 56, and end. The options that the
/// client listed in its parameter request list (55) take the same slots but are permuted into the
/// client's order (RFC 2132 §9.8: the server "MUST try to insert the requested options in the
/// order requested by the client"), so 53 and 54 stay first and unrequested options keep their
/// place.
///
/// The reply fits the client's limit: option 57 (at least 576, at most 1500) read as the IP
/// datagram size, which is the stricter of the two readings clients use (udhcpc counts the IP and
/// UDP headers, EDK2 and iPXE do not). If it would not fit, optional options that the client did
/// not request are dropped first, last slot first, then optional requested ones from the end of
/// the client's list. 53, 54, 51, 60, 43, and 67 when the file name is too long for the `file`
/// field, are never dropped. A NAK carries only 53, 54 and 56 (RFC 2131 table 3), whatever the
/// plan says about leases and boot files.
///
/// The result is zero-padded to 300 bytes, the BOOTP minimum that some PXE ROMs enforce.
pub fn build_reply(req: &Request, plan: &ReplyPlan) -> Vec<u8> {
    let nak = plan.kind == ReplyKind::Nak;
    let boot = plan.boot.as_ref().filter(|_| !nak);
    let lease = plan.lease.as_ref().filter(|_| !nak);

    let file_field = boot
        .map(|b| b.file.as_bytes())
        .filter(|f| f.len() <= FILE_FIELD_MAX)
        .unwrap_or_default();

    let mut out = Vec::with_capacity(MIN_DATAGRAM);
    out.push(2); // op: BOOTREPLY
    out.push(1); // htype: Ethernet
    out.push(6); // hlen
    out.push(0); // hops: RFC 2131 table 3, the server sets 0
    out.extend_from_slice(&req.xid.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // secs
    out.extend_from_slice(&(if req.broadcast { 0x8000u16 } else { 0 }).to_be_bytes());
    let ciaddr = if plan.kind == ReplyKind::Ack {
        req.ciaddr
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    out.extend_from_slice(&ciaddr.octets());
    out.extend_from_slice(&reply_yiaddr(req, plan).octets());
    let siaddr = boot.map_or(Ipv4Addr::UNSPECIFIED, |b| b.next_server);
    out.extend_from_slice(&siaddr.octets());
    out.extend_from_slice(&req.giaddr.octets());
    out.extend_from_slice(&req.chaddr.0);
    out.extend_from_slice(&[0; 10]); // rest of chaddr
    out.extend_from_slice(&[0; 64]); // sname
    out.extend_from_slice(file_field);
    out.resize(out.len() + (128 - file_field.len()), 0);
    out.extend_from_slice(&MAGIC);

    out.extend(encode(&DhcpOption::MessageType(plan.kind.code().into())));
    out.extend(encode(&DhcpOption::ServerIdentifier(plan.server_id)));

    let mut body = Vec::new();
    if let Some(lease) = lease {
        lease_options(req, lease, &mut body);
    }
    if let Some(boot) = boot {
        boot_options(boot, file_field.is_empty(), &mut body);
    }
    if let Some(message) = plan.message.as_deref().filter(|m| !m.is_empty()) {
        body.push(Candidate::optional(DhcpOption::Message(message.to_owned())));
    }

    let mut body = order_by_prl(body, &req.param_request_list);
    // The budget leaves room for the end option.
    let budget = size_limit(req).saturating_sub(out.len() + 1);
    fit(&mut body, &req.param_request_list, budget);

    for candidate in &body {
        out.extend_from_slice(&candidate.bytes);
    }
    out.push(255); // end
    if out.len() < MIN_REPLY {
        out.resize(MIN_REPLY, 0);
    }
    if out.len() > size_limit(req) {
        // Only the never-dropped options are left: a client that cannot take them cannot boot
        // from this server anyway, so send it and let the log say why it fails.
        // (per packet: the client names its limit)
        static OVERSIZE: plinth_types::logthrottle::LogThrottle =
            plinth_types::logthrottle::LogThrottle::new(10, std::time::Duration::from_secs(10));
        if let Some(suppressed) = OVERSIZE.check() {
            warn!(
                len = out.len(),
                limit = size_limit(req),
                xid = req.xid,
                suppressed,
                "DHCP reply exceeds the client's maximum message size"
            );
        }
    }
    out
}

/// yiaddr of the reply: the leased address, except where RFC 2131 table 3 says 0.
fn reply_yiaddr(req: &Request, plan: &ReplyPlan) -> Ipv4Addr {
    match (&plan.lease, plan.kind, req.msg_type) {
        (_, ReplyKind::Nak, _) | (_, _, MessageType::Inform) | (None, _, _) => {
            Ipv4Addr::UNSPECIFIED
        }
        (Some(lease), _, _) => lease.yiaddr,
    }
}

/// Largest reply payload, in bytes, that this client accepts.
fn size_limit(req: &Request) -> usize {
    let datagram = req
        .max_message_size
        .map_or(MIN_DATAGRAM, usize::from)
        .clamp(MIN_DATAGRAM, MAX_DATAGRAM);
    datagram - IP_UDP_HEADERS
}

/// One encoded option and whether it may be dropped to fit the client's size limit.
struct Candidate {
    code: u8,
    bytes: Vec<u8>,
    required: bool,
}

impl Candidate {
    fn new(option: DhcpOption, required: bool) -> Self {
        let code = u8::from(dhcproto::v4::OptionCode::from(&option));
        Candidate {
            code,
            bytes: encode(&option),
            required,
        }
    }

    fn optional(option: DhcpOption) -> Self {
        Self::new(option, false)
    }

    fn required(option: DhcpOption) -> Self {
        Self::new(option, true)
    }
}

fn lease_options(req: &Request, lease: &LeaseParams, body: &mut Vec<Candidate>) {
    // An ACK to INFORM must not carry lease times (RFC 2131 §4.3.5) even if the plan has one.
    let lease_secs = lease
        .lease_secs
        .filter(|_| req.msg_type != MessageType::Inform);
    if let Some(secs) = lease_secs {
        body.push(Candidate::required(DhcpOption::AddressLeaseTime(secs)));
        // An infinite lease (0xffffffff, RFC 2131 §3.3) has no renewal times.
        if secs != u32::MAX {
            let t1 = u64::from(secs) / 2;
            let t2 = u64::from(secs) * 7 / 8;
            body.push(Candidate::optional(DhcpOption::Renewal(clamp_u32(t1))));
            body.push(Candidate::optional(DhcpOption::Rebinding(clamp_u32(t2))));
        }
    }
    body.push(Candidate::optional(DhcpOption::SubnetMask(
        lease.subnet_mask,
    )));
    if !lease.routers.is_empty() {
        body.push(Candidate::optional(DhcpOption::Router(
            lease.routers.clone(),
        )));
    }
    if !lease.dns_servers.is_empty() {
        body.push(Candidate::optional(DhcpOption::DomainNameServer(
            lease.dns_servers.clone(),
        )));
    }
    if let Some(domain) = lease.domain.as_deref().filter(|d| !d.is_empty()) {
        body.push(Candidate::optional(DhcpOption::DomainName(
            domain.to_owned(),
        )));
    }
    if let Some(broadcast) = lease.broadcast_addr {
        body.push(Candidate::optional(DhcpOption::BroadcastAddr(broadcast)));
    }
}

fn boot_options(boot: &BootParams, file_not_in_header: bool, body: &mut Vec<Candidate>) {
    // PXE and UEFI HTTP clients discard offers that do not echo their class: never drop it.
    if let Some(class) = boot.vendor_class.as_deref().filter(|c| !c.is_empty()) {
        body.push(Candidate::required(DhcpOption::ClassIdentifier(
            class.as_bytes().to_vec(),
        )));
    }
    if boot.pxe_discovery_control {
        body.push(Candidate::required(DhcpOption::VendorExtensions(
            PXE_DISCOVERY_CONTROL.to_vec(),
        )));
    }
    if !boot.next_server.is_unspecified() {
        body.push(Candidate::optional(DhcpOption::TFTPServerName(
            boot.next_server.to_string().into_bytes(),
        )));
    }
    if !boot.file.is_empty() {
        // When the name is too long for the `file` field, option 67 is its only carrier.
        body.push(Candidate::new(
            DhcpOption::BootfileName(boot.file.as_bytes().to_vec()),
            file_not_in_header,
        ));
    }
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn encode(option: &DhcpOption) -> Vec<u8> {
    let mut buf = Vec::new();
    match option.encode(&mut Encoder::new(&mut buf)) {
        Ok(()) => buf,
        Err(err) => {
            // Only domain-name options can fail to encode, and none is built here; skipping
            // the option keeps the reply well-formed if that ever changes.
            warn!(error = %err, ?option, "could not encode DHCP option, leaving it out");
            Vec::new()
        }
    }
}

/// Position of `code` in the client's parameter request list.
fn prl_rank(prl: &[u8], code: u8) -> Option<usize> {
    prl.iter().position(|&c| c == code)
}

/// Permute the requested options, within the slots they already occupy, into the client's order.
fn order_by_prl(body: Vec<Candidate>, prl: &[u8]) -> Vec<Candidate> {
    let mut requested = Vec::new();
    let mut layout = Vec::with_capacity(body.len());
    for candidate in body {
        if prl_rank(prl, candidate.code).is_some() {
            requested.push(candidate);
            layout.push(None);
        } else {
            layout.push(Some(candidate));
        }
    }
    requested.sort_by_key(|c| prl_rank(prl, c.code));
    let mut requested = requested.into_iter();
    layout
        .into_iter()
        .filter_map(|slot| slot.or_else(|| requested.next()))
        .collect()
}

/// Drop optional options until the body fits in `budget` bytes.
fn fit(body: &mut Vec<Candidate>, prl: &[u8], budget: usize) {
    let size = |body: &[Candidate]| body.iter().map(|c| c.bytes.len()).sum::<usize>();
    while size(body) > budget {
        let unrequested = body
            .iter()
            .rposition(|c| !c.required && prl_rank(prl, c.code).is_none());
        // Requested options sit in the client's order, so the last one is the one it cares
        // least about.
        let victim = unrequested.or_else(|| body.iter().rposition(|c| !c.required));
        match victim {
            Some(i) => {
                body.remove(i);
            }
            None => return,
        }
    }
}

/// Where the reply to `req` must be sent (RFC 2131 §4.1).
///
/// giaddr set: to the relay on port 67. Otherwise a NAK is broadcast; a client with an address
/// (ciaddr) gets unicast; a client that asked for broadcast gets broadcast; a client being given
/// an address gets a unicast to that address at its MAC, without ARP, because it cannot answer
/// ARP yet; anything else is broadcast.
pub fn destination(req: &Request, plan: &ReplyPlan) -> Destination {
    if !req.giaddr.is_unspecified() {
        return Destination::Relay(req.giaddr);
    }
    if plan.kind == ReplyKind::Nak {
        return Destination::Broadcast;
    }
    if !req.ciaddr.is_unspecified() {
        return Destination::Unicast(req.ciaddr);
    }
    if req.broadcast {
        return Destination::Broadcast;
    }
    let yiaddr = reply_yiaddr(req, plan);
    if !yiaddr.is_unspecified() {
        return Destination::Hardware {
            ip: yiaddr,
            mac: req.chaddr,
        };
    }
    Destination::Broadcast
}
