//! The vocabulary of a network boot that more than one crate speaks: the client system
//! architectures of DHCP option 93 (RFC 4578 and IANA's registry), which the DHCP server, the
//! boot decision and the boot script each read; and the URLs under `/boot/` that DHCP, the TFTP
//! chain script, the iPXE script and the deploy manifest hand out.
//!
//! Why here: each of those used to carry its own list of codes and its own `format!`, and they
//! had drifted (the `/boot/ipxe` URL was built twice with different query strings; the lists
//! of UEFI codes differed).

use crate::api::Arch;

/// The first-stage loader plinth hands a PXE client (`[dhcp]` `bios_binary`, `efi_binary`,
/// `arm64_binary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    Bios,
    Efi,
    Arm64,
}

/// One client system architecture type.
#[derive(Debug, Clone, Copy)]
pub struct PxeArch {
    pub code: u16,
    /// IANA's name.
    pub name: &'static str,
    /// UEFI firmware (else BIOS or other): decides the local-boot command of a script.
    pub uefi: bool,
    /// An HTTP boot client (UEFI HTTP boot and its kin): it gets a URL, not a TFTP file.
    pub http: bool,
    /// The CPU a discovered machine is recorded with, until its inspection says.
    pub cpu: Option<Arch>,
    /// What plinth boots it with; `None`: nothing (the firmware moves on).
    pub loader: Option<Loader>,
}

/// BIOS PXE; also what a client that sends no option 93 is taken for.
pub const BIOS: u16 = 0;
/// x64 UEFI PXE: what an iPXE script request with `platform=efi` stands for.
pub const UEFI_X64: u16 = 7;
/// x64 UEFI HTTP boot.
pub const UEFI_X64_HTTP: u16 = 16;

const fn row(
    code: u16,
    name: &'static str,
    uefi: bool,
    http: bool,
    cpu: Option<Arch>,
    loader: Option<Loader>,
) -> PxeArch {
    PxeArch {
        code,
        name,
        uefi,
        http,
        cpu,
        loader,
    }
}

const X86: Option<Arch> = Some(Arch::X86_64);
const ARM: Option<Arch> = Some(Arch::Aarch64);

/// The registry, as far as plinth cares (codes not listed: not UEFI, not HTTP, no loader).
/// 6 and 15 are 32-bit UEFI, found on 64-bit machines; 9 (EBC) is what some x64 firmware sends.
#[rustfmt::skip]
pub const PXE_ARCHES: &[PxeArch] = &[
    row(0x00, "x86 BIOS", false, false, X86, Some(Loader::Bios)),
    row(0x02, "Itanium", false, false, None, None),
    row(0x06, "x86 UEFI", true, false, X86, None),
    row(0x07, "x64 UEFI", true, false, X86, Some(Loader::Efi)),
    row(0x09, "EBC", true, false, X86, Some(Loader::Efi)),
    row(0x0a, "ARM 32-bit UEFI", true, false, None, None),
    row(0x0b, "ARM 64-bit UEFI", true, false, ARM, Some(Loader::Arm64)),
    row(0x0c, "PowerPC Open Firmware", false, false, None, None),
    row(0x0d, "PowerPC ePAPR", false, false, None, None),
    row(0x0e, "POWER OPAL v3", false, false, None, None),
    row(0x0f, "x86 UEFI boot from HTTP", true, true, X86, None),
    row(0x10, "x64 UEFI boot from HTTP", true, true, X86, Some(Loader::Efi)),
    row(0x11, "EBC boot from HTTP", true, true, None, None),
    row(0x12, "ARM 32-bit UEFI boot from HTTP", true, true, None, None),
    row(0x13, "ARM 64-bit UEFI boot from HTTP", true, true, ARM, Some(Loader::Arm64)),
    row(0x14, "PC/AT BIOS boot from HTTP", false, true, None, None),
    row(0x15, "ARM 32-bit U-Boot", false, false, None, None),
    row(0x16, "ARM 64-bit U-Boot", false, false, None, None),
    row(0x17, "ARM 32-bit U-Boot boot from HTTP", false, true, None, None),
    row(0x18, "ARM 64-bit U-Boot boot from HTTP", false, true, None, None),
    row(0x19, "RISC-V 32-bit UEFI", true, false, None, None),
    row(0x1a, "RISC-V 32-bit UEFI boot from HTTP", true, true, None, None),
    row(0x1b, "RISC-V 64-bit UEFI", true, false, None, None),
    row(0x1c, "RISC-V 64-bit UEFI boot from HTTP", true, true, None, None),
    row(0x1d, "RISC-V 128-bit UEFI", true, false, None, None),
    row(0x1e, "RISC-V 128-bit UEFI boot from HTTP", true, true, None, None),
    row(0x1f, "s390 Basic", false, false, None, None),
    row(0x20, "s390 Extended", false, false, None, None),
    row(0x21, "MIPS 32-bit UEFI", true, false, None, None),
    row(0x22, "MIPS 64-bit UEFI", true, false, None, None),
    row(0x23, "Sunway 32-bit UEFI", true, false, None, None),
    row(0x24, "Sunway 64-bit UEFI", true, false, None, None),
    row(0x25, "LoongArch 32-bit UEFI", true, false, None, None),
    row(0x26, "LoongArch 32-bit UEFI boot from HTTP", true, true, None, None),
    row(0x27, "LoongArch 64-bit UEFI", true, false, None, None),
    row(0x28, "LoongArch 64-bit UEFI boot from HTTP", true, true, None, None),
    row(0x29, "arm rpiboot", false, false, None, None),
];

impl PxeArch {
    /// The row for `code`, if the registry has one.
    pub fn of(code: u16) -> Option<&'static PxeArch> {
        PXE_ARCHES.iter().find(|a| a.code == code)
    }

    /// Whether `code` is UEFI firmware.
    pub fn is_uefi(code: u16) -> bool {
        PxeArch::of(code).is_some_and(|a| a.uefi)
    }

    /// Whether `code` is an HTTP boot client.
    pub fn is_http(code: u16) -> bool {
        PxeArch::of(code).is_some_and(|a| a.http)
    }

    /// The CPU `code` implies, if plinth knows it.
    pub fn cpu(code: u16) -> Option<Arch> {
        PxeArch::of(code).and_then(|a| a.cpu)
    }

    /// The loader for a client with option 93 `code` (`None`: it sent none, so BIOS).
    pub fn loader(code: Option<u16>) -> Option<Loader> {
        PxeArch::of(code.unwrap_or(BIOS)).and_then(|a| a.loader)
    }
}

/// Where plinth's HTTP server serves boot files: `{base}/boot/{path}`.
pub const BOOT_PREFIX: &str = "/boot/";
/// The iPXE script endpoint, under [`BOOT_PREFIX`].
pub const SCRIPT_NAME: &str = "ipxe";
/// `/boot/ipxe`.
pub const SCRIPT_PATH: &str = "/boot/ipxe";
/// The virtual-media ISOs, under [`BOOT_PREFIX`]: `{base}/boot/vmedia/{id}.iso` (made per
/// boot, not files of the images root).
pub const VMEDIA_DIR: &str = "vmedia/";

/// The query of a script URL: the parameter and the iPXE setting it is filled from. The
/// script endpoint reads each (`mac` is required; `platform` picks BIOS or UEFI commands).
pub const SCRIPT_QUERY: &[(&str, &str)] = &[
    ("mac", "${net0/mac}"),
    ("platform", "${platform}"),
    ("buildarch", "${buildarch}"),
    ("uuid", "${uuid}"),
    ("serial", "${serial:uristring}"),
];

/// How much of [`SCRIPT_QUERY`] a script URL carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptQuery {
    /// `mac` and `platform`: what the decision needs. The DHCP server hands this one out (a
    /// boot file name stays short).
    Decision,
    /// All of it: the TFTP chain script (`boot.ipxe`), whose requests are recorded with the
    /// machine's identity too.
    Full,
}

/// The URL of the iPXE script, as iPXE is told to fetch it (the `${...}` are expanded by iPXE).
pub fn script_url(base: &str, query: ScriptQuery) -> String {
    let n = match query {
        ScriptQuery::Decision => 2,
        ScriptQuery::Full => SCRIPT_QUERY.len(),
    };
    let q: Vec<String> = SCRIPT_QUERY[..n]
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{}{SCRIPT_PATH}?{}",
        base.trim_end_matches('/'),
        q.join("&")
    )
}

/// The URL of a file under the images root; with an empty `base`, its path.
pub fn file_url(base: &str, path: &str) -> String {
    format!(
        "{}{BOOT_PREFIX}{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(SCRIPT_PATH, format!("{BOOT_PREFIX}{SCRIPT_NAME}"));
        assert_eq!(
            script_url("http://10.0.0.2:8080/", ScriptQuery::Decision),
            "http://10.0.0.2:8080/boot/ipxe?mac=${net0/mac}&platform=${platform}"
        );
        assert_eq!(
            script_url("http://p", ScriptQuery::Full),
            "http://p/boot/ipxe?mac=${net0/mac}&platform=${platform}&buildarch=${buildarch}&uuid=${uuid}&serial=${serial:uristring}"
        );
        assert_eq!(
            file_url("http://p/", "/plinth/vmlinuz"),
            "http://p/boot/plinth/vmlinuz"
        );
        assert_eq!(file_url("", "img/x.raw"), "/boot/img/x.raw");
    }

    /// Written by hand from RFC 4578 section 2.1 and the IANA registry, independently of
    /// [`PXE_ARCHES`]: the UEFI codes, the HTTP boot codes, and plinth's loaders.
    #[test]
    fn the_codes() {
        let uefi = [6, 7, 9, 10, 11, 15, 16, 17, 18, 19, 25, 26, 27, 28, 29, 30];
        let http = [15, 16, 17, 18, 19, 20, 23, 24, 26, 28, 30, 38, 40];
        for code in 0..=0x30 {
            assert_eq!(
                PxeArch::is_uefi(code),
                uefi.contains(&code) || (0x21..=0x28).contains(&code),
                "{code}"
            );
            assert_eq!(PxeArch::is_http(code), http.contains(&code), "{code}");
        }
        assert_eq!(PxeArch::loader(None), Some(Loader::Bios));
        assert_eq!(PxeArch::loader(Some(0)), Some(Loader::Bios));
        for c in [7, 9, 16] {
            assert_eq!(PxeArch::loader(Some(c)), Some(Loader::Efi), "{c}");
        }
        for c in [11, 19] {
            assert_eq!(PxeArch::loader(Some(c)), Some(Loader::Arm64), "{c}");
            assert_eq!(PxeArch::cpu(c), Some(Arch::Aarch64), "{c}");
        }
        for c in [6, 10, 15, 18, 20, 99] {
            assert_eq!(PxeArch::loader(Some(c)), None, "{c}");
        }
        assert_eq!(PxeArch::cpu(0), Some(Arch::X86_64));
        assert_eq!(PxeArch::cpu(10), None);
        for (i, a) in PXE_ARCHES.iter().enumerate() {
            assert!(!a.name.is_empty());
            assert!(
                PXE_ARCHES[..i].iter().all(|b| b.code != a.code),
                "{}",
                a.code
            );
            // A loader plinth hands out is one the firmware can run.
            if let Some(l) = a.loader {
                assert_eq!(l == Loader::Bios, !a.uefi, "{}", a.name);
            }
        }
        assert!(PxeArch::is_uefi(UEFI_X64) && PxeArch::is_http(UEFI_X64_HTTP));
        assert!(!PxeArch::is_uefi(BIOS));
    }
}
