//! Input rules, checked before anything is written so that bad input gets a clear error.
//! The database holds the same rules as constraints, as the last line of defence.

use std::net::Ipv4Addr;

use plinth_types::Error;

fn name_like(field: &str, s: &str, max: usize, extra: &[char]) -> Result<(), Error> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' || extra.contains(&c)
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_name",
            format!(
                "invalid {field} {s:?}: use 1-{max} letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ))
    }
}

pub fn rack_name(s: &str) -> Result<(), Error> {
    name_like("rack name", s, 63, &[])
}

pub fn pool(s: &str) -> Result<(), Error> {
    name_like("pool", s, 63, &[])
}

pub fn token_name(s: &str) -> Result<(), Error> {
    name_like("token name", s, 128, &['@'])
}

/// A web UI user's name (the message says '@' is allowed too).
pub fn username(s: &str) -> Result<(), Error> {
    name_like("username", s, 64, &['@'])
}

/// Tags: deduplicated, order kept.
pub fn tags(tags: &[String]) -> Result<Vec<String>, Error> {
    if tags.len() > 64 {
        return Err(Error::invalid(
            "invalid_tags",
            "at most 64 tags per machine",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        name_like("tag", t, 63, &[':', '='])?;
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

/// A DNS hostname (RFC 1123), lower-cased.
pub fn hostname(s: &str) -> Result<String, Error> {
    let h = s.to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if h.is_empty() || h.len() > 253 || !h.split('.').all(label_ok) {
        return Err(Error::invalid(
            "invalid_hostname",
            format!(
                "invalid hostname {s:?}: use DNS labels of letters, digits and '-', separated by '.'"
            ),
        ));
    }
    Ok(h)
}

pub fn size_u(n: i32) -> Result<(), Error> {
    if (1..=100).contains(&n) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_size",
            format!("size_u must be between 1 and 100, not {n}"),
        ))
    }
}

pub fn rack_height(n: i32) -> Result<(), Error> {
    if (1..=100).contains(&n) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_height",
            format!("height_u must be between 1 and 100, not {n}"),
        ))
    }
}

pub fn rack_unit(n: i32) -> Result<(), Error> {
    if n >= 1 {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_rack_unit",
            format!("rack_unit counts from 1 at the bottom, not {n}"),
        ))
    }
}

/// A reserved address must be one a host can use.
pub fn host_ipv4(ip: Ipv4Addr) -> Result<(), Error> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(Error::invalid(
            "invalid_ipv4",
            format!("{ip} cannot be reserved for a NIC"),
        ));
    }
    Ok(())
}

/// A BMC address: `host` or `host:port`, where host is an IPv4 address, `[IPv6]` or a DNS name.
pub fn bmc_address(s: &str) -> Result<(), Error> {
    let bad = || {
        Error::invalid(
            "invalid_bmc_address",
            format!(
                "invalid BMC address {s:?}: expected host or host:port, e.g. 10.1.2.3 or bmc-r12-07:623"
            ),
        )
    };
    if s.is_empty() || s.len() > 255 || s.contains("://") {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(bad()),
        }
    }
    if !s.starts_with('[') && host.parse::<Ipv4Addr>().is_err() {
        hostname(host).map_err(|_| bad())?;
    }
    Ok(())
}

/// A Redfish BMC may also be given as a URL, `https://host[:port]` (or `http://` for an
/// emulator or a BMC behind a proxy on a trusted network).
pub fn redfish_address(s: &str) -> Result<(), Error> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(r) => bmc_address(r.strip_suffix('/').unwrap_or(r)).map_err(|_| {
            Error::invalid(
                "invalid_bmc_address",
                format!(
                    "invalid Redfish address {s:?}: expected host, host:port or https://host[:port]"
                ),
            )
        }),
        None => bmc_address(s),
    }
}

pub fn bmc_credentials(username: &str, password: &str) -> Result<(), Error> {
    if username.is_empty() || username.len() > 64 || username.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "invalid_bmc_username",
            "the BMC username must be 1-64 printable characters",
        ));
    }
    if password.is_empty() || password.len() > 256 {
        return Err(Error::invalid(
            "invalid_bmc_password",
            "the BMC password must be 1-256 bytes",
        ));
    }
    Ok(())
}

/// A boot file override: a TFTP path (no spaces, no `..`) or an http(s):// URL.
pub fn boot_file(s: &str) -> Result<String, Error> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 255
        && !s.contains("..")
        && s.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Error::invalid(
            "invalid_boot_file",
            "boot_file must be a TFTP path or an http:// URL of at most 255 printable characters, without '..'",
        ))
    }
}

pub fn reason(r: Option<&str>) -> Result<(), Error> {
    match r {
        Some(r) if r.len() > 1024 => Err(Error::invalid(
            "invalid_reason",
            "a reason is at most 1024 bytes",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bmc_addresses() {
        for ok in [
            "10.0.0.1",
            "10.0.0.1:623",
            "bmc-r1.example.net",
            "bmc:8000",
            "[fd00::1]",
            "[fd00::1]:443",
        ] {
            assert!(bmc_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "http://10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:99999",
            "[fd00::1",
            "bad host",
            "a:b:c",
        ] {
            assert!(bmc_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redfish_addresses() {
        for ok in [
            "10.0.0.1",
            "https://10.0.0.1",
            "http://127.0.0.1:8000/",
            "https://[fd00::1]:443",
        ] {
            assert!(redfish_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://10.0.0.1",
            "https://",
            "https://a/b",
            "https://bad host",
        ] {
            assert!(redfish_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostnames_and_names() {
        assert_eq!(hostname("Node-01.DC1").unwrap(), "node-01.dc1");
        for bad in ["", "-a", "a-", "a..b", "a_b", &"a".repeat(64)] {
            assert!(hostname(bad).is_err(), "{bad}");
        }
        assert!(rack_name("r12").is_ok());
        assert!(rack_name("r 12").is_err());
        assert_eq!(
            tags(&["a".into(), "b".into(), "a".into()]).unwrap(),
            vec!["a", "b"]
        );
        assert!(tags(&["".into()]).is_err());
    }
}
