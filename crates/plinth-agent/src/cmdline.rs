//! The kernel command line the boot script gave the ramdisk: `plinth.mode=`, `plinth.api=`,
//! `plinth.machine=`, `plinth.token=` (see crates/plinth-core/templates/boot/ramdisk.ipxe),
//! `plinth.net=` (the static network of a virtual-media boot, which /init configures before
//! the agent starts; parsed here so that a malformed one is named), and the agent's own options `plinth.wipe=<method>` (a floor under the method plinth's clean
//! plan asks for: `quick`, `discard`, `secure` or `full`) and `plinth.api_timeout=<seconds>`.

use std::fmt;
use std::net::Ipv4Addr;

use plinth_types::MacAddr;

/// `plinth.net=<mac>,<address>/<prefix>,<gateway or empty>[,<dns>...]`: the network a
/// virtual-media boot configures statically on the NIC with that MAC (no DHCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNet {
    pub mac: MacAddr,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

impl std::str::FromStr for StaticNet {
    type Err = String;

    fn from_str(v: &str) -> Result<Self, String> {
        let bad = |what: &str| {
            format!("plinth.net={v}: {what} (want MAC,ADDRESS/PREFIX,GATEWAY[,DNS...])")
        };
        let mut parts = v.split(',');
        let mac = parts
            .next()
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| bad("no MAC address"))?;
        let (addr, prefix) = parts
            .next()
            .and_then(|a| a.split_once('/'))
            .ok_or_else(|| bad("no ADDRESS/PREFIX"))?;
        let address = addr.parse().map_err(|_| bad("bad address"))?;
        let prefix = prefix
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| bad("bad prefix"))?;
        let gateway = match parts.next() {
            None | Some("") => None,
            Some(g) => Some(g.parse().map_err(|_| bad("bad gateway"))?),
        };
        let dns = parts
            .map(|d| d.parse().map_err(|_| bad("bad DNS server")))
            .collect::<Result<_, _>>()?;
        Ok(StaticNet {
            mac,
            address,
            prefix,
            gateway,
            dns,
        })
    }
}

/// The agent's mode is plinth's: the same enum the boot script writes and the API checks
/// tokens against.
pub use plinth_types::AgentMode as Mode;

#[derive(Clone, PartialEq, Eq)]
pub struct Params {
    pub mode: Mode,
    /// The API's base URL, without a trailing slash.
    pub api: String,
    pub machine: String,
    pub token: String,
    /// The least a clean may do, whatever plinth's plan says (`plinth.wipe=`).
    pub wipe_floor: Option<plinth_types::api::WipeMethod>,
    /// How long to keep trying to reach the API before giving up.
    pub api_timeout_secs: u64,
    /// The static network of a virtual-media boot (`plinth.net=`); `None`: DHCP.
    pub net: Option<StaticNet>,
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Params")
            .field("mode", &self.mode)
            .field("api", &self.api)
            .field("machine", &self.machine)
            .field("token", &"<redacted>")
            .field("wipe_floor", &self.wipe_floor)
            .field("net", &self.net)
            .finish()
    }
}

/// Parses `/proc/cmdline`. Errors name what is missing or wrong, for the console.
pub fn parse(cmdline: &str) -> Result<Params, String> {
    let (mut mode, mut api, mut machine, mut token) = (None, None, None, None);
    let (mut wipe_floor, mut api_timeout_secs, mut net) = (None, 600, None);
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "plinth.mode" => {
                mode = Some(
                    value
                        .parse::<Mode>()
                        .map_err(|e| format!("plinth.mode={value}: {e}"))?,
                )
            }
            "plinth.api" => {
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return Err(format!("plinth.api={value} is not an http(s) URL"));
                }
                api = Some(value.trim_end_matches('/').to_owned());
            }
            "plinth.machine" => machine = Some(value.to_owned()),
            "plinth.token" => token = Some(value.to_owned()),
            "plinth.wipe" => wipe_floor = Some(value.parse()?),
            "plinth.net" => net = Some(value.parse()?),
            "plinth.api_timeout" => {
                api_timeout_secs = value
                    .parse()
                    .map_err(|_| format!("plinth.api_timeout={value} is not a number of seconds"))?
            }
            _ => {}
        }
    }
    let need = |v: Option<String>, what: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| format!("no {what} on the kernel command line"))
    };
    Ok(Params {
        mode: mode.ok_or("no plinth.mode= on the kernel command line")?,
        api: need(api, "plinth.api=")?,
        machine: need(machine, "plinth.machine=")?,
        token: need(token, "plinth.token=")?,
        wipe_floor,
        api_timeout_secs,
        net,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_boot_script_writes() {
        let p = parse(
            "BOOT_IMAGE=vmlinuz initrd=initrd.img console=tty0 console=ttyS0,115200n8 \
             plinth.mode=clean plinth.api=http://10.0.0.1:8080/ plinth.machine=0b7c \
             plinth.token=plinth_abc plinth.wipe=full quiet",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Clean);
        assert_eq!(p.api, "http://10.0.0.1:8080");
        assert_eq!(p.machine, "0b7c");
        assert_eq!(p.token, "plinth_abc");
        assert_eq!(p.wipe_floor, Some(plinth_types::api::WipeMethod::Full));
        assert_eq!(p.api_timeout_secs, 600);
        assert!(
            !format!("{p:?}").contains("plinth_abc"),
            "the token stays out of logs"
        );
    }

    #[test]
    fn the_static_network_of_a_virtual_media_boot() {
        let base = "plinth.mode=inspect plinth.api=http://10.0.0.1 plinth.machine=m plinth.token=t";
        assert_eq!(parse(base).unwrap().net, None);
        let p = parse(&format!(
            "{base} plinth.net=52:54:00:00:00:01,10.1.2.3/24,10.1.2.1,10.1.2.53,9.9.9.9"
        ))
        .unwrap();
        assert_eq!(
            p.net,
            Some(StaticNet {
                mac: "52:54:00:00:00:01".parse().unwrap(),
                address: "10.1.2.3".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.1.2.1".parse().unwrap()),
                dns: vec!["10.1.2.53".parse().unwrap(), "9.9.9.9".parse().unwrap()],
            })
        );
        let p = parse(&format!("{base} plinth.net=52:54:00:00:00:01,10.1.2.3/30,")).unwrap();
        assert_eq!(p.net.unwrap().gateway, None);
        for bad in [
            "x,10.1.2.3/24,",
            "52:54:00:00:00:01,10.1.2.3,",
            "52:54:00:00:00:01,10.1.2.3/33,",
            "52:54:00:00:00:01,10.1.2.300/24,",
            "52:54:00:00:00:01,10.1.2.3/24,gw",
            "52:54:00:00:00:01,10.1.2.3/24,,dns",
        ] {
            let e = parse(&format!("{base} plinth.net={bad}")).unwrap_err();
            assert!(e.contains("plinth.net="), "{bad}: {e}");
        }
    }

    #[test]
    fn what_is_missing_is_named() {
        assert!(
            parse("plinth.api=http://x plinth.machine=m plinth.token=t")
                .unwrap_err()
                .contains("plinth.mode")
        );
        assert!(parse("plinth.mode=fly").unwrap_err().contains("fly"));
        assert!(
            parse("plinth.mode=inspect plinth.api=ftp://x")
                .unwrap_err()
                .contains("not an http")
        );
        assert!(
            parse("plinth.mode=inspect plinth.api=http://x plinth.machine=m")
                .unwrap_err()
                .contains("plinth.token")
        );
    }
}
