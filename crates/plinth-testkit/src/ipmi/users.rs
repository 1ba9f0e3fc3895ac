//! The emulated BMC's user table (issue 21, rotation): user 1 is the anonymous (null) user,
//! user 2 the configured one, 3 to 4 empty slots; Get User Access (App 0x44), Get User Name
//! (0x46) and Set User Password (0x47: set and test, in the 16- or 20-byte form, the 20-byte
//! form refused with 0xcc when [`IpmiEmulator::set_password_16_only`] says so). Only an
//! administrator session may set or test a password, as on real BMCs.

use super::{After, Bmc, IpmiEmulator, PRIV_ADMIN, cc, lock};

/// The configured user's id.
pub const USER_ID: u8 = 2;
const MAX_USERS: u8 = 4;

#[derive(Debug, Default)]
pub(super) struct Users {
    /// Refuse the 20-byte form (an IPMI 1.5-era BMC).
    only_16: bool,
    /// Passwords set, in order: (user id, the 20-byte form).
    pub(super) changes: Vec<(u8, bool)>,
}

impl IpmiEmulator {
    /// The configured user's password now.
    pub fn password(&self) -> String {
        String::from_utf8_lossy(&lock(&self.state).password).into_owned()
    }

    /// Whether the BMC refuses 20-byte passwords.
    pub fn set_password_16_only(&self, yes: bool) {
        lock(&self.state).users.only_16 = yes;
    }

    /// Set User Password commands that changed a password: (user id, 20-byte form).
    pub fn password_changes(&self) -> Vec<(u8, bool)> {
        lock(&self.state).users.changes.clone()
    }
}

/// The user commands, or `None` for another command.
pub(super) fn command(
    b: &mut Bmc,
    netfn: u8,
    cmd: u8,
    d: &[u8],
    privilege: u8,
) -> Option<(u8, Vec<u8>, After)> {
    let fail = |code: u8| Some((code, vec![], After::Nothing));
    let ok = |data: Vec<u8>| Some((cc::OK, data, After::Nothing));
    match (netfn, cmd) {
        // Get User Access: max ids, enabled count (enabled by Set User Password), fixed names
        // (user 1), channel access (IPMI messaging, administrator).
        (0x06, 0x44) => match d {
            [_, id, ..] if (1..=MAX_USERS).contains(&(id & 0x3f)) => {
                ok(vec![MAX_USERS, 0x41, 0x01, 0x14])
            }
            [_, _, ..] => fail(cc::INVALID_DATA),
            _ => fail(cc::LENGTH),
        },
        // Get User Name: 16 bytes, null padded.
        (0x06, 0x46) => match d {
            [id] => {
                let id = id & 0x3f;
                if !(1..=MAX_USERS).contains(&id) {
                    return fail(cc::INVALID_DATA);
                }
                let mut name = vec![0u8; 16];
                if id == USER_ID {
                    name[..b.username.len()].copy_from_slice(&b.username);
                }
                ok(name)
            }
            _ => fail(cc::LENGTH),
        },
        (0x06, 0x47) => {
            if privilege < PRIV_ADMIN {
                return fail(cc::PRIVILEGE);
            }
            let [first, op, rest @ ..] = d else {
                return fail(cc::LENGTH);
            };
            let id = first & 0x3f;
            let long = first & 0x80 != 0;
            if !(1..=MAX_USERS).contains(&id) {
                return fail(cc::INVALID_DATA);
            }
            match op & 0x03 {
                // enable, disable: accepted, nothing to keep
                0 | 1 => ok(vec![]),
                op => {
                    if long && b.users.only_16 {
                        return fail(cc::INVALID_DATA);
                    }
                    let size = if long { 20 } else { 16 };
                    if rest.len() != size {
                        return fail(cc::LENGTH);
                    }
                    let end = rest.iter().position(|&c| c == 0).unwrap_or(size);
                    let pw = &rest[..end];
                    if id != USER_ID {
                        // the other slots hold no password plinth may learn or change
                        return fail(cc::INVALID_DATA);
                    }
                    if op == 2 {
                        b.password = pw.to_vec();
                        b.users.changes.push((id, long));
                        ok(vec![])
                    } else if pw == b.password.as_slice() {
                        ok(vec![])
                    } else {
                        // Test Password: failed
                        fail(0x80)
                    }
                }
            }
        }
        _ => None,
    }
}
