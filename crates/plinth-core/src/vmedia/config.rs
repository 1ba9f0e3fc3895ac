//! What a virtual-media boot's ISO says besides its files: the static network the ramdisk
//! configures, and the `grub.cfg` that boots the kernel with the ramdisk's command line.

use std::net::Ipv4Addr;

use plinth_types::{Error, MacAddr};

/// The network the ramdisk configures on the NIC with `mac` instead of asking DHCP: the NIC's
/// reserved address with its subnet's prefix, router and DNS servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNet {
    pub mac: MacAddr,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

impl StaticNet {
    /// The kernel argument the ramdisk's init and the agent read:
    /// `plinth.net=<mac>,<address>/<prefix>,<gateway or empty>[,<dns>...]`.
    pub fn kernel_arg(&self) -> String {
        let mut s = format!(
            "plinth.net={},{}/{},{}",
            self.mac,
            self.address,
            self.prefix,
            self.gateway.map(|g| g.to_string()).unwrap_or_default()
        );
        for d in &self.dns {
            s.push(',');
            s.push_str(&d.to_string());
        }
        s
    }
}

/// The ISO's `/plinth/grub.cfg`: boot the ramdisk at once with `args` (each word quoted for
/// GRUB's parser, which would otherwise read `$`, `;` and quotes). A word GRUB cannot quote
/// (one with a single quote or a control character) is an error, never a changed command line.
pub fn grub_cfg(args: &str) -> Result<String, Error> {
    let mut words = Vec::new();
    for w in args.split_ascii_whitespace() {
        if w.contains('\'') || w.chars().any(|c| c.is_control()) {
            return Err(Error::invalid(
                "bad_kernel_argument",
                "a kernel argument of the ramdisk has a quote or a control character",
            ));
        }
        words.push(format!("'{w}'"));
    }
    Ok(format!(
        "# plinth: the ramdisk of this virtual-media boot\n\
         set timeout=0\n\
         echo 'plinth: loading the ramdisk'\n\
         linux /plinth/vmlinuz {}\n\
         initrd /plinth/initrd\n\
         boot\n",
        words.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_arg() {
        let mut n = StaticNet {
            mac: "52:54:00:00:00:01".parse().unwrap(),
            address: "10.1.2.3".parse().unwrap(),
            prefix: 24,
            gateway: Some("10.1.2.1".parse().unwrap()),
            dns: vec!["10.1.2.53".parse().unwrap(), "9.9.9.9".parse().unwrap()],
        };
        assert_eq!(
            n.kernel_arg(),
            "plinth.net=52:54:00:00:00:01,10.1.2.3/24,10.1.2.1,10.1.2.53,9.9.9.9"
        );
        n.gateway = None;
        n.dns.clear();
        assert_eq!(n.kernel_arg(), "plinth.net=52:54:00:00:00:01,10.1.2.3/24,");
    }

    #[test]
    fn grub_cfg_quotes_every_word() {
        let cfg = grub_cfg("console=ttyS0,115200n8  plinth.token=plinth_a-b$c;d").unwrap();
        assert!(
            cfg.contains(
                "linux /plinth/vmlinuz 'console=ttyS0,115200n8' 'plinth.token=plinth_a-b$c;d'\n"
            ),
            "{cfg}"
        );
        assert!(cfg.contains("initrd /plinth/initrd\n"));
        assert!(grub_cfg("a='b'").is_err());
        assert!(grub_cfg("a=\u{7}").is_err());
    }
}
