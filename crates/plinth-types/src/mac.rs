//! A NIC's hardware address, always shown as lowercase colon-separated hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IEEE 802 MAC address of a machine's NIC.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacParseError {
    #[error("invalid MAC address {0:?}: expected six hex octets such as 52:54:00:12:34:56")]
    Syntax(String),
    #[error("invalid MAC address {0}: a multicast address cannot belong to a NIC")]
    Multicast(String),
    #[error("invalid MAC address {0}: the all-zero address cannot belong to a NIC")]
    Zero(String),
}

impl MacAddr {
    /// What [`MacAddr::from_str`] accepts, as a JSON Schema pattern: one of the three
    /// notations (one separator throughout), the first octet's low bit clear, not all zero.
    pub const PATTERN: &'static str = r"^(?!(00[:-]){5}00$|0000\.0000\.0000$)([0-9A-Fa-f][02468ACEace]([:-])[0-9A-Fa-f]{2}(\3[0-9A-Fa-f]{2}){4}|[0-9A-Fa-f][02468ACEace][0-9A-Fa-f]{2}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4})$";

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether this can be a NIC's own address (not multicast, not all zero).
    pub fn is_unicast(&self) -> bool {
        self.0 != [0; 6] && self.0[0] & 1 == 0
    }

    /// Parses the syntax only, accepting any address: for values read back from the database
    /// or the wire, where a multicast address is odd but must not be an error.
    pub fn parse_any(s: &str) -> Option<MacAddr> {
        match s.parse::<MacAddr>() {
            Ok(m) => Some(m),
            Err(MacParseError::Multicast(_) | MacParseError::Zero(_)) => {
                let mut o = [0u8; 6];
                let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
                for (i, b) in o.iter_mut().enumerate() {
                    *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
                }
                Some(MacAddr(o))
            }
            Err(MacParseError::Syntax(_)) => None,
        }
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `52:54:00:12:34:56`, `52-54-00-12-34-56` and `5254.0012.3456`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || MacParseError::Syntax(s.to_owned());
        let hex: String = if s.len() == 17 {
            let sep = s.as_bytes()[2];
            if sep != b':' && sep != b'-' {
                return Err(syntax());
            }
            let mut out = String::with_capacity(12);
            for (i, part) in s.split(sep as char).enumerate() {
                if i > 5 || part.len() != 2 {
                    return Err(syntax());
                }
                out.push_str(part);
            }
            out
        } else if s.len() == 14 {
            let parts: Vec<&str> = s.split('.').collect();
            if parts.len() != 3 || parts.iter().any(|p| p.len() != 4) {
                return Err(syntax());
            }
            parts.concat()
        } else {
            return Err(syntax());
        };
        if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax());
        }
        let mut octets = [0u8; 6];
        for (i, octet) in octets.iter_mut().enumerate() {
            *octet = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).map_err(|_| syntax())?;
        }
        let mac = MacAddr(octets);
        if octets == [0; 6] {
            return Err(MacParseError::Zero(mac.to_string()));
        }
        if octets[0] & 1 == 1 {
            return Err(MacParseError::Multicast(mac.to_string()));
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for MacAddr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A NIC's own address (unicast, not all zero): `52:54:00:12:34:56`, \
                 `52-54-00-12-34-56` or `5254.0012.3456`, any case; shown lower-case with colons.",
            ))
            .pattern(Some(MacAddr::PATTERN))
            .examples(["52:54:00:12:34:56"])
            .into()
    }
}

impl utoipa::ToSchema for MacAddr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_notations() {
        let want = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        for s in ["52:54:00:ab:cd:ef", "52-54-00-AB-CD-EF", "5254.00ab.cdef"] {
            assert_eq!(s.parse::<MacAddr>().unwrap(), want, "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:ab:cd:ef");
    }

    #[test]
    fn rejects_bad_addresses() {
        for s in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:eg",
            "52:54-00:ab:cd:ef",
            "525400abcdef",
            "52:54:00:ab:cd:ef:00",
            "+2:54:00:ab:cd:ef",
        ] {
            assert!(
                matches!(s.parse::<MacAddr>(), Err(MacParseError::Syntax(_))),
                "{s}"
            );
        }
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(MacParseError::Multicast(_))
        ));
        assert!(matches!(
            "00:00:00:00:00:00".parse::<MacAddr>(),
            Err(MacParseError::Zero(_))
        ));
    }
}
