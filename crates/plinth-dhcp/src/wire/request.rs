//! Parsing and validating a client's UDP payload into a [`Request`].
//!
//! The fixed header is read with dhcproto's bounds-checked [`Decoder`]; the options are walked
//! here rather than by `dhcproto::v4::Message::decode`, because that decoder can panic on hostile
//! input in debug builds and drops every option after the first one it cannot decode (see the
//! module doc of `wire`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{Decoder, MAGIC};
use plinth_types::MacAddr;
use tracing::debug;

use super::{HEADER_LEN, MAX_PACKET, MessageType, ParseError, Request};

// Option codes read from requests (RFC 2132 unless noted).
const OPT_HOSTNAME: u8 = 12;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_OVERLOAD: u8 = 52;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PRL: u8 = 55;
const OPT_MAX_MESSAGE_SIZE: u8 = 57;
const OPT_VENDOR_CLASS: u8 = 60;
const OPT_CLIENT_ID: u8 = 61;
const OPT_USER_CLASS: u8 = 77; // RFC 3004
const OPT_CLIENT_ARCH: u8 = 93; // RFC 4578
const OPT_CLIENT_UUID: u8 = 97; // RFC 4578
const OPT_IPXE_ENCAP: u8 = 175; // iPXE's encapsulated options (site-specific range)

// Where the overloadable fields sit in the header (RFC 2131 §2).
const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;

/// Parse a UDP payload sent to the server port.
///
/// Checks, in order: size (over [`MAX_PACKET`] → `TooLarge`, under the 240-byte header →
/// `Truncated`), op, hardware type and length, the magic cookie, the option encoding (a length
/// byte that runs past the end of its field is `Malformed`), option 53, and the options whose
/// length their RFC fixes (50, 52, 53, 54, 57, 93: any other length is `Malformed`). Options
/// that only describe the client (60, 77, 97, 12, 61) are taken as they come.
pub fn parse(bytes: &[u8]) -> Result<Request, ParseError> {
    if bytes.len() > MAX_PACKET {
        return Err(ParseError::TooLarge);
    }
    if bytes.len() < HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    let header = Header::read(bytes)?;

    if header.op != 1 {
        return Err(ParseError::NotARequest);
    }
    // An hlen over 16 claims more address than chaddr holds; reject it before anything can
    // slice chaddr with it, and whatever the htype says.
    if header.hlen > 16 || header.htype != 1 || header.hlen != 6 {
        return Err(ParseError::UnsupportedHardware {
            htype: header.htype,
            hlen: header.hlen,
        });
    }
    // Without the RFC 1048 cookie the vendor area holds no options, so there can be no
    // option 53: this is plain BOOTP, which plinth does not serve.
    if header.magic != MAGIC {
        return Err(ParseError::NoMessageType);
    }

    let opts = Options::read(bytes)?;

    let msg_type = match opts.fixed::<1>(OPT_MESSAGE_TYPE, "message type")? {
        None => return Err(ParseError::NoMessageType),
        Some([code]) => match code {
            1 => MessageType::Discover,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            other => return Err(ParseError::UnsupportedMessageType(other)),
        },
    };

    let client_arch = match opts.get(OPT_CLIENT_ARCH) {
        None => None,
        // A list of 16-bit types (RFC 4578 §2.1); clients send one, the first is the one used.
        Some([hi, lo, rest @ ..]) if rest.len().is_multiple_of(2) => {
            Some(u16::from_be_bytes([*hi, *lo]))
        }
        Some(other) => {
            return Err(ParseError::Malformed(format!(
                "option 93 (client architecture) has length {}, expected a non-zero multiple of 2",
                other.len()
            )));
        }
    };

    Ok(Request {
        msg_type,
        xid: header.xid,
        secs: header.secs,
        broadcast: header.flags & 0x8000 != 0,
        ciaddr: header.ciaddr,
        giaddr: header.giaddr,
        chaddr: header.chaddr,
        hops: header.hops,
        requested_ip: opts
            .fixed::<4>(OPT_REQUESTED_IP, "requested IP address")?
            .map(Ipv4Addr::from),
        server_id: opts
            .fixed::<4>(OPT_SERVER_ID, "server identifier")?
            .map(Ipv4Addr::from),
        param_request_list: opts.get(OPT_PRL).map(<[u8]>::to_vec).unwrap_or_default(),
        max_message_size: opts
            .fixed::<2>(OPT_MAX_MESSAGE_SIZE, "maximum message size")?
            .map(u16::from_be_bytes),
        vendor_class: opts.get(OPT_VENDOR_CLASS).and_then(text),
        client_arch,
        client_uuid: opts.get(OPT_CLIENT_UUID).and_then(client_uuid),
        user_class: opts.get(OPT_USER_CLASS).and_then(user_class),
        ipxe_encap: opts.get(OPT_IPXE_ENCAP).is_some(),
        hostname: opts.get(OPT_HOSTNAME).and_then(text),
        client_id: opts.get(OPT_CLIENT_ID).map(<[u8]>::to_vec),
    })
}

/// The fixed BOOTP header fields a request is judged by.
struct Header {
    op: u8,
    htype: u8,
    hlen: u8,
    hops: u8,
    xid: u32,
    secs: u16,
    flags: u16,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    chaddr: MacAddr,
    magic: [u8; 4],
}

impl Header {
    fn read(bytes: &[u8]) -> Result<Self, ParseError> {
        // The caller checked the length; mapping the decoder's error keeps this total anyway.
        Self::decode(&mut Decoder::new(bytes)).map_err(|_| ParseError::Truncated)
    }

    fn decode(d: &mut Decoder<'_>) -> dhcproto::error::DecodeResult<Self> {
        let op = d.read_u8()?;
        let htype = d.read_u8()?;
        let hlen = d.read_u8()?;
        let hops = d.read_u8()?;
        let xid = d.read_u32()?;
        let secs = d.read_u16()?;
        let flags = d.read_u16()?;
        let ciaddr = Ipv4Addr::from(d.read_u32()?);
        let _yiaddr = d.read_u32()?;
        let _siaddr = d.read_u32()?;
        let giaddr = Ipv4Addr::from(d.read_u32()?);
        let chaddr = d.read::<16>()?;
        let _sname = d.read::<64>()?;
        let _file = d.read::<128>()?;
        let magic = d.read::<4>()?;
        // Only the first six bytes are an Ethernet address; the rest of chaddr is padding.
        let [a, b, c, e, f, g, ..] = chaddr;
        Ok(Header {
            op,
            htype,
            hlen,
            hops,
            xid,
            secs,
            flags,
            ciaddr,
            giaddr,
            chaddr: MacAddr([a, b, c, e, f, g]),
            magic,
        })
    }
}

/// A request's options by code, with every instance of a code concatenated in order
/// (RFC 3396: a client may split a long option, and the pieces need not be adjacent).
struct Options(BTreeMap<u8, Vec<u8>>);

impl Options {
    /// Walk the options field and, if option 52 says so, the `file` and `sname` fields too, in
    /// the order RFC 2131 §4.1 gives (options, file, sname).
    fn read(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut opts = Options(BTreeMap::new());
        opts.walk(bytes.get(HEADER_LEN..).unwrap_or_default(), "options")?;

        let overload = opts.fixed::<1>(OPT_OVERLOAD, "option overload")?;
        if let Some([mode]) = overload {
            if !(1..=3).contains(&mode) {
                return Err(ParseError::Malformed(format!(
                    "option 52 (option overload) has value {mode}, expected 1, 2 or 3"
                )));
            }
            if mode & 1 != 0 {
                opts.walk(bytes.get(FILE).unwrap_or_default(), "file field")?;
            }
            if mode & 2 != 0 {
                opts.walk(bytes.get(SNAME).unwrap_or_default(), "sname field")?;
            }
        }
        Ok(opts)
    }

    fn walk(&mut self, area: &[u8], field: &str) -> Result<(), ParseError> {
        let mut rest = area;
        loop {
            match rest {
                // A missing End option is tolerated: the length checks below already
                // guarantee nothing was cut off mid-option.
                [] | [255, ..] => return Ok(()),
                [0, tail @ ..] => rest = tail,
                [code] => {
                    return Err(ParseError::Malformed(format!(
                        "option {code} in the {field} has no length byte"
                    )));
                }
                [code, len, tail @ ..] => {
                    let len = usize::from(*len);
                    let Some((value, tail)) = tail.split_at_checked(len) else {
                        return Err(ParseError::Malformed(format!(
                            "option {code} in the {field} has length {len} but only {} bytes follow",
                            tail.len()
                        )));
                    };
                    self.0.entry(*code).or_default().extend_from_slice(value);
                    rest = tail;
                }
            }
        }
    }

    fn get(&self, code: u8) -> Option<&[u8]> {
        self.0.get(&code).map(Vec::as_slice)
    }

    /// An option whose length its RFC fixes: absent is fine, any other length is malformed.
    fn fixed<const N: usize>(&self, code: u8, name: &str) -> Result<Option<[u8; N]>, ParseError> {
        match self.get(code) {
            None => Ok(None),
            Some(value) => value.try_into().map(Some).map_err(|_| {
                ParseError::Malformed(format!(
                    "option {code} ({name}) has length {}, expected {N}",
                    value.len()
                ))
            }),
        }
    }
}

/// A free-text option. Some clients NUL-terminate these; an empty value says nothing.
fn text(value: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(value);
    let s = s.trim_end_matches('\0');
    (!s.is_empty()).then(|| s.to_owned())
}

/// Option 97 is a type byte (0 = UUID/GUID) and 16 bytes (RFC 4578 §2.3). Anything else is
/// ignored rather than refused: the UUID only helps identify a machine, and refusing to answer
/// would stop it booting over a cosmetic fault.
fn client_uuid(value: &[u8]) -> Option<[u8; 16]> {
    let uuid = match value {
        [0, uuid @ ..] => <[u8; 16]>::try_from(uuid).ok(),
        _ => None,
    };
    if uuid.is_none() {
        debug!(
            len = value.len(),
            "ignoring option 97 that is not type 0 + 16 bytes"
        );
    }
    uuid
}

/// Option 77 as RFC 3004 defines it is a list of length-prefixed classes, but iPXE (and others)
/// send the bare text. A value is read as RFC 3004 only when the length prefixes tile it exactly;
/// bare text of up to 32 bytes can never be mistaken for that, since its first byte is printable
/// (>= 0x20) and so claims more bytes than follow.
fn user_class(value: &[u8]) -> Option<String> {
    let mut classes = Vec::new();
    let mut rest = value;
    while let [len, tail @ ..] = rest {
        match tail.split_at_checked(usize::from(*len)) {
            Some((class, tail)) if !class.is_empty() => {
                classes.push(String::from_utf8_lossy(class).into_owned());
                rest = tail;
            }
            _ => return text(value),
        }
    }
    if classes.is_empty() {
        return text(value);
    }
    Some(classes.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_class_forms() {
        assert_eq!(user_class(b"iPXE").as_deref(), Some("iPXE"));
        assert_eq!(user_class(b"\x04iPXE").as_deref(), Some("iPXE"));
        assert_eq!(user_class(b"\x04iPXE\x03foo").as_deref(), Some("iPXE,foo"));
        // A prefix that does not tile the value: bare text.
        assert_eq!(user_class(b"\x05iPXE").as_deref(), Some("\u{5}iPXE"));
        assert_eq!(user_class(b""), None);
    }

    #[test]
    fn uuid_needs_type_zero_and_sixteen_bytes() {
        let mut v = vec![0u8];
        v.extend(1..=16u8);
        assert_eq!(client_uuid(&v).map(|u| u[0]), Some(1));
        assert_eq!(client_uuid(&v[1..]), None);
        v[0] = 1;
        assert_eq!(client_uuid(&v), None);
    }
}
