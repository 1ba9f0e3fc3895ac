//! ATA Security Erase through SCSI/ATA Translation (SAT), sans-IO: the ATA PASS-THROUGH (16)
//! command blocks, the IDENTIFY DEVICE words that say whether a drive can erase itself, and
//! the 512-byte password blocks of the SECURITY commands (ATA8-ACS 7.39 to 7.44). sys.rs sends
//! them with SG_IO; wipe.rs runs the sequence:
//!
//! 1. IDENTIFY DEVICE: word 128 bit 0 (the security feature set) must be supported, and the
//!    drive neither already has a password (bit 1), nor is locked (bit 2) or frozen (bit 3).
//!    Most firmware freezes the feature set at boot; such a drive falls back.
//! 2. SECURITY SET PASSWORD (user, high) with a random password;
//! 3. SECURITY ERASE PREPARE, then SECURITY ERASE UNIT (normal erase: the drive writes zeros,
//!    which the read-back checks; enhanced erase writes a vendor pattern). The erase clears the
//!    password. Its timeout is the drive's own estimate (words 89), at least an hour.
//! 4. When a step after the password fails, SECURITY DISABLE PASSWORD with the same password,
//!    so that the drive is not left locked at its next power cycle; the password is in the
//!    error for the rare case where that fails too.

/// An ATA command for ATA PASS-THROUGH (16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Identify,
    SetPassword,
    ErasePrepare,
    EraseUnit,
    DisablePassword,
}

/// Which way data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    None,
    /// 512 bytes from the drive.
    In,
    /// 512 bytes to the drive.
    Out,
}

impl Command {
    pub fn opcode(self) -> u8 {
        match self {
            Command::Identify => 0xec,
            Command::SetPassword => 0xf1,
            Command::ErasePrepare => 0xf3,
            Command::EraseUnit => 0xf4,
            Command::DisablePassword => 0xf6,
        }
    }

    pub fn direction(self) -> Direction {
        match self {
            Command::Identify => Direction::In,
            Command::ErasePrepare => Direction::None,
            Command::SetPassword | Command::EraseUnit | Command::DisablePassword => Direction::Out,
        }
    }

    /// The ATA PASS-THROUGH (16) command block (SAT-3 12.2.2): protocol PIO data-in (4),
    /// PIO data-out (5) or non-data (3); for data, one 512-byte block whose count is in the
    /// sector count field.
    pub fn cdb(self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x85;
        let (protocol, flags) = match self.direction() {
            // T_DIR from the device, BYT_BLOK blocks, T_LENGTH in the sector count
            Direction::In => (4, 0x0e),
            Direction::Out => (5, 0x06),
            Direction::None => (3, 0x00),
        };
        c[1] = protocol << 1;
        c[2] = flags;
        if self.direction() != Direction::None {
            c[6] = 1;
        }
        c[14] = self.opcode();
        c
    }
}

/// What IDENTIFY DEVICE says about the security feature set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    pub supported: bool,
    pub enabled: bool,
    pub locked: bool,
    pub frozen: bool,
    /// Minutes a normal erase takes by the drive's estimate (`None`: not given).
    pub erase_minutes: Option<u32>,
}

/// Reads words 82, 128 and 89 of IDENTIFY DEVICE data (256 little-endian words).
pub fn security(identify: &[u8]) -> Option<Security> {
    let word = |n: usize| {
        identify
            .get(2 * n..2 * n + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let w82 = word(82)?;
    let w128 = word(128)?;
    let w89 = word(89)?;
    // Words that read 0x0000 or 0xffff are not implemented.
    let valid = |w: u16| w != 0 && w != 0xffff;
    let supported = valid(w82) && w82 & 0x0002 != 0 && w128 & 0x0001 != 0;
    // Bit 15 of word 89: the extended format (bits 14:0 in units of 2 minutes); else bits 7:0
    // in units of 2 minutes, 255 meaning more than 508.
    let erase_minutes = match w89 {
        0 | 0xffff => None,
        w if w & 0x8000 != 0 => Some(u32::from(w & 0x7fff) * 2),
        w => Some(u32::from(w & 0x00ff) * 2),
    };
    Some(Security {
        supported,
        enabled: supported && w128 & 0x0002 != 0,
        locked: supported && w128 & 0x0004 != 0,
        frozen: supported && w128 & 0x0008 != 0,
        erase_minutes,
    })
}

/// The data block of SET PASSWORD, ERASE UNIT and DISABLE PASSWORD: word 0 control (bit 0:
/// the user password; bit 1 of ERASE UNIT: enhanced, clear for a normal erase), words 1-16 the
/// password, padded with zeros.
pub fn password_block(password: &[u8]) -> [u8; 512] {
    let mut b = [0u8; 512];
    let n = password.len().min(32);
    b[2..2 + n].copy_from_slice(&password[..n]);
    b
}

/// Why a drive cannot erase itself now, for the fallback's reason; `None`: it can.
pub fn refusal(s: &Security) -> Option<&'static str> {
    if !s.supported {
        Some("the drive does not have the ATA security feature set")
    } else if s.frozen {
        Some("the drive's security feature set is frozen (firmware freezes it at boot)")
    } else if s.locked {
        Some("the drive is locked with a password plinth does not know")
    } else if s.enabled {
        Some("the drive already has a password set")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command blocks hdparm sends through SG_IO for the same commands.
    #[test]
    fn command_blocks_match_hdparm() {
        assert_eq!(
            Command::Identify.cdb(),
            [0x85, 0x08, 0x0e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xec, 0]
        );
        assert_eq!(
            Command::SetPassword.cdb(),
            [0x85, 0x0a, 0x06, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xf1, 0]
        );
        assert_eq!(
            Command::ErasePrepare.cdb(),
            [0x85, 0x06, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xf3, 0]
        );
        assert_eq!(Command::EraseUnit.cdb()[14], 0xf4);
        assert_eq!(Command::DisablePassword.cdb()[1], 0x0a);
    }

    fn identify(w82: u16, w128: u16, w89: u16) -> Vec<u8> {
        let mut d = vec![0u8; 512];
        for (n, w) in [(82, w82), (128, w128), (89, w89)] {
            d[2 * n..2 * n + 2].copy_from_slice(&w.to_le_bytes());
        }
        d
    }

    #[test]
    fn the_security_words() {
        // QEMU's IDE disk: no security feature set.
        let qemu = security(&identify(0x4021, 0, 0)).unwrap();
        assert!(!qemu.supported);
        assert_eq!(
            refusal(&qemu),
            Some("the drive does not have the ATA security feature set")
        );
        // A drive the firmware froze (the usual case after boot): supported, frozen.
        let frozen = security(&identify(0x746b, 0x0029, 0x0004)).unwrap();
        assert!(frozen.supported && frozen.frozen && !frozen.enabled);
        assert_eq!(frozen.erase_minutes, Some(8));
        assert!(refusal(&frozen).unwrap().contains("frozen"));
        // Not frozen, no password: it may erase; the extended time format.
        let ready = security(&identify(0x746b, 0x0021, 0x8000 | 150)).unwrap();
        assert_eq!(refusal(&ready), None);
        assert_eq!(ready.erase_minutes, Some(300));
        // A password set, or locked.
        assert!(
            refusal(&security(&identify(0x746b, 0x0023, 0)).unwrap())
                .unwrap()
                .contains("already")
        );
        assert!(
            refusal(&security(&identify(0x746b, 0x0027, 0)).unwrap())
                .unwrap()
                .contains("locked")
        );
        // Too short to be IDENTIFY data.
        assert_eq!(security(&[0u8; 100]), None);
    }

    #[test]
    fn password_blocks() {
        let b = password_block(b"plinth-1234");
        assert_eq!(
            &b[0..2],
            &[0, 0],
            "user password, high security, normal erase"
        );
        assert_eq!(&b[2..13], b"plinth-1234");
        assert!(b[13..].iter().all(|x| *x == 0));
        let long = password_block(&[b'x'; 40]);
        assert_eq!(&long[2..34], &[b'x'; 32]);
        assert_eq!(long[34], 0);
    }
}
