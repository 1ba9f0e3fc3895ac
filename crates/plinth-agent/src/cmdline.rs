//! The kernel command line the boot script gave the ramdisk: `plinth.mode=`, `plinth.api=`,
//! `plinth.machine=`, `plinth.token=` (see crates/plinth-core/templates/boot/ramdisk.ipxe),
//! and the agent's own options `plinth.wipe=<method>` (a floor under the method plinth's clean
//! plan asks for: `quick`, `discard`, `secure` or `full`) and `plinth.api_timeout=<seconds>`.

use std::fmt;

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
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Params")
            .field("mode", &self.mode)
            .field("api", &self.api)
            .field("machine", &self.machine)
            .field("token", &"<redacted>")
            .field("wipe_floor", &self.wipe_floor)
            .finish()
    }
}

/// Parses `/proc/cmdline`. Errors name what is missing or wrong, for the console.
pub fn parse(cmdline: &str) -> Result<Params, String> {
    let (mut mode, mut api, mut machine, mut token) = (None, None, None, None);
    let (mut wipe_floor, mut api_timeout_secs) = (None, 600);
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
