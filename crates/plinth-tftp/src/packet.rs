//! TFTP packets, parsed from and written to bytes, with no I/O.

use std::fmt;

/// The largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;
/// The smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// The block size without negotiation (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// File names longer than this are refused (no firmware asks for anything near it).
pub const MAX_FILENAME: usize = 255;

/// RFC 1350 and RFC 2347 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTid = 5,
    FileExists = 6,
    NoSuchUser = 7,
    /// RFC 2347: the client refuses the server's options (or the reverse).
    OptionsRefused = 8,
}

impl ErrorCode {
    fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionsRefused,
            _ => ErrorCode::NotDefined,
        }
    }
}

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
    Mail,
}

/// The options of RFC 2347 that plinth understands, as the client asked for them. Unknown
/// options are ignored (RFC 2347: the server simply leaves them out of its OACK).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub blksize: Option<u16>,
    /// Seconds.
    pub timeout: Option<u8>,
    pub tsize: Option<u64>,
    pub windowsize: Option<u16>,
}

impl Options {
    pub fn is_empty(&self) -> bool {
        *self == Options::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Read request.
    Rrq {
        filename: String,
        mode: Mode,
        options: Options,
    },
    /// Write request (always refused by plinth, but parsed so that it is refused properly).
    Wrq {
        filename: String,
        mode: Mode,
    },
    Data {
        block: u16,
        data: Vec<u8>,
    },
    Ack {
        block: u16,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Option acknowledgement (RFC 2347).
    Oack {
        options: Options,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet shorter than 4 bytes")]
    TooShort,
    #[error("unknown opcode {0}")]
    Opcode(u16),
    #[error("a string is not NUL-terminated")]
    Unterminated,
    #[error("a string is not UTF-8")]
    NotUtf8,
    #[error("empty file name")]
    EmptyFilename,
    #[error("file name longer than {MAX_FILENAME} bytes")]
    FilenameTooLong,
    #[error("unknown transfer mode {0:?}")]
    Mode(String),
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
    #[error("option {name} has a bad value {value:?}")]
    OptionValue { name: &'static str, value: String },
    #[error("option {0} given twice")]
    DuplicateOption(&'static str),
}

/// Splits NUL-terminated strings off the front of `b`.
fn strings(mut b: &[u8]) -> Result<Vec<&str>, ParseError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let end = b
            .iter()
            .position(|&c| c == 0)
            .ok_or(ParseError::Unterminated)?;
        out.push(std::str::from_utf8(&b[..end]).map_err(|_| ParseError::NotUtf8)?);
        b = &b[end + 1..];
    }
    Ok(out)
}

fn parse_options(pairs: &[&str]) -> Result<Options, ParseError> {
    let mut o = Options::default();
    let mut it = pairs.iter();
    while let Some(name) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| ParseError::OptionWithoutValue((*name).to_owned()))?;
        let bad = |name: &'static str| ParseError::OptionValue {
            name,
            value: (*value).to_owned(),
        };
        fn set<T>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), ParseError> {
            if slot.is_some() {
                return Err(ParseError::DuplicateOption(name));
            }
            *slot = Some(v);
            Ok(())
        }
        match name.to_ascii_lowercase().as_str() {
            "blksize" => {
                let v: u16 = value.parse().map_err(|_| bad("blksize"))?;
                if !(MIN_BLKSIZE..=MAX_BLKSIZE).contains(&v) {
                    return Err(bad("blksize"));
                }
                set(&mut o.blksize, v, "blksize")?;
            }
            "timeout" => {
                let v: u8 = value.parse().map_err(|_| bad("timeout"))?;
                if v == 0 {
                    return Err(bad("timeout"));
                }
                set(&mut o.timeout, v, "timeout")?;
            }
            "tsize" => {
                let v: u64 = value.parse().map_err(|_| bad("tsize"))?;
                set(&mut o.tsize, v, "tsize")?;
            }
            "windowsize" => {
                let v: u16 = value.parse().map_err(|_| bad("windowsize"))?;
                if v == 0 {
                    return Err(bad("windowsize"));
                }
                set(&mut o.windowsize, v, "windowsize")?;
            }
            _ => {}
        }
    }
    Ok(o)
}

fn request(body: &[u8]) -> Result<(String, Mode, Options), ParseError> {
    let parts = strings(body)?;
    let (filename, mode, rest) = match parts.as_slice() {
        [f, m, rest @ ..] => (*f, *m, rest),
        _ => return Err(ParseError::Unterminated),
    };
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    if filename.len() > MAX_FILENAME {
        return Err(ParseError::FilenameTooLong);
    }
    let mode = match mode.to_ascii_lowercase().as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        "mail" => Mode::Mail,
        _ => return Err(ParseError::Mode(mode.to_owned())),
    };
    Ok((filename.to_owned(), mode, parse_options(rest)?))
}

/// Parses one datagram.
pub fn parse(b: &[u8]) -> Result<Packet, ParseError> {
    if b.len() < 4 {
        return Err(ParseError::TooShort);
    }
    let opcode = u16::from_be_bytes([b[0], b[1]]);
    let word = u16::from_be_bytes([b[2], b[3]]);
    Ok(match opcode {
        1 => {
            let (filename, mode, options) = request(&b[2..])?;
            Packet::Rrq {
                filename,
                mode,
                options,
            }
        }
        2 => {
            let (filename, mode, _) = request(&b[2..])?;
            Packet::Wrq { filename, mode }
        }
        3 => Packet::Data {
            block: word,
            data: b[4..].to_vec(),
        },
        4 => Packet::Ack { block: word },
        5 => {
            let message = match strings(&b[4..]) {
                Ok(s) => s.first().copied().unwrap_or("").to_owned(),
                // Some clients forget the NUL or send another encoding; the message is only
                // for the log. It ends at its first NUL, as an encoded one does.
                Err(_) => {
                    let m = &b[4..];
                    let end = m.iter().position(|&c| c == 0).unwrap_or(m.len());
                    String::from_utf8_lossy(&m[..end]).into_owned()
                }
            };
            Packet::Error {
                code: ErrorCode::from_u16(word),
                message,
            }
        }
        6 => Packet::Oack {
            options: parse_options(&strings(&b[2..])?)?,
        },
        op => return Err(ParseError::Opcode(op)),
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn put_options(out: &mut Vec<u8>, o: &Options) {
    let options = [
        ("blksize", o.blksize.map(u64::from)),
        ("timeout", o.timeout.map(u64::from)),
        ("tsize", o.tsize),
        ("windowsize", o.windowsize.map(u64::from)),
    ];
    for (name, value) in options {
        if let Some(v) = value {
            put_str(out, name);
            put_str(out, &v.to_string());
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
            Mode::Mail => "mail",
        })
    }
}

impl Packet {
    /// The datagram for this packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        match self {
            Packet::Rrq {
                filename,
                mode,
                options,
            } => {
                out.extend_from_slice(&1u16.to_be_bytes());
                put_str(&mut out, filename);
                put_str(&mut out, &mode.to_string());
                put_options(&mut out, options);
            }
            Packet::Wrq { filename, mode } => {
                out.extend_from_slice(&2u16.to_be_bytes());
                put_str(&mut out, filename);
                put_str(&mut out, &mode.to_string());
            }
            Packet::Data { block, data } => {
                out.reserve(data.len());
                out.extend_from_slice(&3u16.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&5u16.to_be_bytes());
                out.extend_from_slice(&(*code as u16).to_be_bytes());
                // The message ends at its first NUL.
                let m: String = message.chars().take_while(|&c| c != '\0').collect();
                put_str(&mut out, &m);
            }
            Packet::Oack { options } => {
                out.extend_from_slice(&6u16.to_be_bytes());
                put_options(&mut out, options);
            }
        }
        out
    }
}

/// What the server grants, within its limits (RFC 2347: the server may lower a value, never
/// raise it; options it does not grant are left out of the OACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_blksize: u16,
    pub max_windowsize: u16,
    /// The longest timeout (RFC 2349, seconds) a client may set; a longer one is not granted
    /// (left out of the OACK: RFC 2349 lets the server only accept or ignore it).
    pub max_timeout: u8,
}

/// The default for [`Limits::max_timeout`].
pub const MAX_CLIENT_TIMEOUT: u8 = 10;

/// The negotiated transfer parameters, and the OACK to send (None: no options, start with DATA 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    /// Seconds, if the client set one.
    pub timeout: Option<u8>,
    pub windowsize: u16,
    pub oack: Option<Options>,
}

pub fn negotiate(asked: &Options, limits: Limits, file_size: u64) -> Negotiated {
    let blksize = asked
        .blksize
        .map(|b| b.min(limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE)));
    let windowsize = asked
        .windowsize
        .map(|w| w.min(limits.max_windowsize.max(1)));
    let timeout = asked.timeout.filter(|t| *t <= limits.max_timeout);
    let granted = Options {
        blksize,
        timeout,
        // RFC 2349: in a read request the client sends 0 and the server answers the size.
        tsize: asked.tsize.map(|_| file_size),
        windowsize,
    };
    Negotiated {
        blksize: blksize.unwrap_or(DEFAULT_BLKSIZE),
        timeout,
        windowsize: windowsize.unwrap_or(1),
        oack: (!granted.is_empty()).then_some(granted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_request_with_options() {
        // As iPXE's UEFI build sends it (mixed-case option names happen too).
        let b = b"\x00\x01undionly.kpxe\x00octet\x00tsize\x000\x00BLKSIZE\x001468\x00windowsize\x004\x00foo\x00bar\x00";
        let p = parse(b).unwrap();
        assert_eq!(
            p,
            Packet::Rrq {
                filename: "undionly.kpxe".into(),
                mode: Mode::Octet,
                options: Options {
                    blksize: Some(1468),
                    timeout: None,
                    tsize: Some(0),
                    windowsize: Some(4),
                },
            }
        );
        // Encoding keeps what plinth understands, in a fixed order.
        assert_eq!(
            p.encode(),
            b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x004\x00"
        );
    }

    #[test]
    fn other_packets_round_trip() {
        for p in [
            Packet::Wrq {
                filename: "x".into(),
                mode: Mode::Netascii,
            },
            Packet::Data {
                block: 65535,
                data: vec![1, 2, 3],
            },
            Packet::Data {
                block: 7,
                data: vec![],
            },
            Packet::Ack { block: 0 },
            Packet::Error {
                code: ErrorCode::FileNotFound,
                message: "no such file".into(),
            },
            Packet::Oack {
                options: Options {
                    blksize: Some(1428),
                    timeout: Some(3),
                    tsize: Some(1 << 33),
                    windowsize: Some(16),
                },
            },
        ] {
            assert_eq!(parse(&p.encode()).unwrap(), p);
        }
        assert_eq!(
            Packet::Ack { block: 0x0102 }.encode(),
            [0, 4, 1, 2],
            "ACK is opcode 4 and the block, big-endian"
        );
    }

    #[test]
    fn bad_packets_are_refused() {
        let cases: Vec<(&[u8], ParseError)> = vec![
            (b"\x00\x01", ParseError::TooShort),
            (b"\x00\x09\x00\x00", ParseError::Opcode(9)),
            (b"\x00\x01file\x00octet", ParseError::Unterminated),
            (b"\x00\x01\x00octet\x00", ParseError::EmptyFilename),
            (
                b"\x00\x01f\x00binary\x00",
                ParseError::Mode("binary".into()),
            ),
            (
                b"\x00\x01f\x00octet\x00blksize\x00",
                ParseError::OptionWithoutValue("blksize".into()),
            ),
            (
                b"\x00\x01f\x00octet\x00blksize\x007\x00",
                ParseError::OptionValue {
                    name: "blksize",
                    value: "7".into(),
                },
            ),
            (
                b"\x00\x01f\x00octet\x00blksize\x0065465\x00",
                ParseError::OptionValue {
                    name: "blksize",
                    value: "65465".into(),
                },
            ),
            (
                b"\x00\x01f\x00octet\x00windowsize\x000\x00",
                ParseError::OptionValue {
                    name: "windowsize",
                    value: "0".into(),
                },
            ),
            (
                b"\x00\x01f\x00octet\x00tsize\x000\x00tsize\x000\x00",
                ParseError::DuplicateOption("tsize"),
            ),
            (b"\x00\x01f\xff\x00octet\x00", ParseError::NotUtf8),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(bytes), Err(want), "{bytes:?}");
        }
        // An ERROR whose message is not UTF-8 still parses, up to its NUL like any other.
        assert_eq!(
            parse(b"\x00\x05\x00\x01no\xff\x00\xfe"),
            Ok(Packet::Error {
                code: ErrorCode::FileNotFound,
                message: "no\u{fffd}".into()
            })
        );
        let long = [b"\x00\x01".as_slice(), &[b'a'; 256], b"\x00octet\x00"].concat();
        assert_eq!(parse(&long), Err(ParseError::FilenameTooLong));
    }

    #[test]
    fn negotiation_lowers_never_raises() {
        let limits = Limits {
            max_blksize: 1468,
            max_windowsize: 8,
            max_timeout: MAX_CLIENT_TIMEOUT,
        };
        let n = negotiate(
            &Options {
                blksize: Some(65464),
                timeout: Some(2),
                tsize: Some(0),
                windowsize: Some(64),
            },
            limits,
            123_456,
        );
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 8);
        assert_eq!(n.timeout, Some(2));
        assert_eq!(
            n.oack,
            Some(Options {
                blksize: Some(1468),
                timeout: Some(2),
                tsize: Some(123_456),
                windowsize: Some(8),
            })
        );
        let small = negotiate(
            &Options {
                blksize: Some(512),
                ..Default::default()
            },
            limits,
            1,
        );
        assert_eq!(small.blksize, 512);
        // A timeout longer than the server allows is not granted (RFC 2349: accept or ignore).
        let slow = negotiate(
            &Options {
                timeout: Some(200),
                tsize: Some(0),
                ..Default::default()
            },
            limits,
            7,
        );
        assert_eq!(slow.timeout, None);
        assert_eq!(
            slow.oack,
            Some(Options {
                tsize: Some(7),
                ..Default::default()
            })
        );
        // No options: RFC 1350 defaults and no OACK.
        let plain = negotiate(&Options::default(), limits, 9);
        assert_eq!(
            plain,
            Negotiated {
                blksize: 512,
                timeout: None,
                windowsize: 1,
                oack: None
            }
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Ok(p) = parse(&bytes) {
                // Whatever parses re-encodes to something that parses the same.
                proptest::prop_assert_eq!(parse(&p.encode()).ok(), Some(p));
            }
        }
    }
}
