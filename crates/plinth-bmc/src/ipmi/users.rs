//! plinth's own user on an IPMI BMC (issue 21, rotation): found by name with Get User Name
//! (App 0x46) over the user ids Get User Access (0x44) says there are, its password set with
//! Set User Password (0x47, operation "set password"). The 20-byte form (bit 7 of the first
//! byte, IPMI 2.0) is used for passwords longer than 16 bytes, when the BMC proves it
//! understands it: [`Ipmi::password_policy`](crate::Bmc::password_policy) asks with the "test
//! password" operation in the 20-byte form, once with a wrong password (which must fail with
//! "test failed", 0x80 or 0x81) and once with the current one (which must pass, or fail only
//! for its size). A BMC that passes any test cannot be trusted with the 20-byte form: OpenIPMI's
//! `ipmi_sim` accepts every test and keeps only 16 bytes of a 20-byte password, which would
//! lock plinth out. Its policy is then 16 bytes (95 bits of letters and digits).
//!
//! IPMI BMCs keep a session open across a password change (the session key is already made):
//! the new password is proved by a driver of its own, as for Redfish.

use super::{Ipmi, NETFN_APP, completion_of};
use crate::{BmcError, PasswordPolicy, Result};

/// User ids looked at, at most (the field is 6 bits).
const MAX_USER_IDS: u8 = 63;
/// User ids tried when the BMC does not say how many it has.
const DEFAULT_USER_IDS: u8 = 15;

const GET_USER_ACCESS: u8 = 0x44;
const GET_USER_NAME: u8 = 0x46;
const SET_USER_PASSWORD: u8 = 0x47;
const OP_SET: u8 = 0x02;
const OP_TEST: u8 = 0x03;
/// "Test failed": the password differs (0x80) or was stored in the other size (0x81); either
/// way the BMC read the form it was given.
const TEST_FAILED: [u8; 2] = [0x80, 0x81];

/// `password` null-padded to `size` bytes.
fn padded(password: &str, size: usize) -> Result<Vec<u8>> {
    let b = password.as_bytes();
    if b.len() > size || b.contains(&0) {
        return Err(BmcError::Rejected(format!(
            "an IPMI password is at most {size} bytes without NUL"
        )));
    }
    let mut v = b.to_vec();
    v.resize(size, 0);
    Ok(v)
}

/// A user name as Get User Name answers it: 16 bytes, null padded.
fn name_of(d: &[u8]) -> &[u8] {
    let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
    &d[..end]
}

impl Ipmi {
    /// The id of the user this driver logs in as.
    async fn own_user_id(&self) -> Result<u8> {
        let want = self.cfg.username.as_bytes();
        if want.is_empty() {
            return Err(BmcError::Rejected(
                "the anonymous user's password is not plinth's to change".into(),
            ));
        }
        // Channel 0x0e: the one this session came in on.
        let max = match self
            .command(NETFN_APP, GET_USER_ACCESS, &[0x0e, 0x01])
            .await
        {
            Ok(d) => d.first().map_or(DEFAULT_USER_IDS, |m| m & 0x3f),
            Err(e) if completion_of(&e).is_some() => DEFAULT_USER_IDS,
            Err(e) => return Err(e),
        };
        for id in 1..=max.clamp(1, MAX_USER_IDS) {
            match self.command(NETFN_APP, GET_USER_NAME, &[id]).await {
                Ok(d) if name_of(&d) == want => return Ok(id),
                Ok(_) => {}
                // An id past the BMC's last, or an empty slot some BMCs refuse to name.
                Err(e) if completion_of(&e).is_some() => {}
                Err(e) => return Err(e),
            }
        }
        Err(BmcError::Rejected(format!(
            "no IPMI user named {:?} among the BMC's first {max} user ids",
            self.cfg.username
        )))
    }

    /// The completion code of "test password" in the 20-byte form.
    async fn test_20(&self, id: u8, password: &str) -> Result<u8> {
        let mut data = vec![0x80 | id, OP_TEST];
        data.extend(padded(password, 20)?);
        match self.command(NETFN_APP, SET_USER_PASSWORD, &data).await {
            Ok(_) => Ok(0),
            Err(e) => completion_of(&e).ok_or(e),
        }
    }

    /// Whether the BMC proves it takes passwords in the 20-byte form: a wrong password fails
    /// the test, the current one passes it (or fails only for the size it was stored in).
    async fn takes_20_bytes(&self, id: u8) -> Result<bool> {
        let wrong: String = self
            .cfg
            .password
            .chars()
            .rev()
            .chain("~wrong~".chars())
            .take(20)
            .collect();
        if !TEST_FAILED.contains(&self.test_20(id, &wrong).await?) {
            return Ok(false);
        }
        Ok(matches!(
            self.test_20(id, &self.cfg.password).await?,
            0x00 | 0x81
        ))
    }

    pub(super) async fn do_password_policy(&self) -> Result<PasswordPolicy> {
        let id = self.own_user_id().await?;
        let max_len = if self.takes_20_bytes(id).await? {
            20
        } else {
            16
        };
        Ok(PasswordPolicy {
            min_len: 8,
            max_len,
        })
    }

    pub(super) async fn do_set_password(&self, new: &str) -> Result<()> {
        let id = self.own_user_id().await?;
        let long = new.len() > 16;
        let mut data = vec![if long { 0x80 | id } else { id }, OP_SET];
        data.extend(padded(new, if long { 20 } else { 16 })?);
        self.command(NETFN_APP, SET_USER_PASSWORD, &data)
            .await
            .map(drop)
            .map_err(|e| match completion_of(&e) {
                // The refusal's message never holds the password; the code is enough.
                Some(c) => BmcError::Rejected(format!(
                    "the BMC refused the new password (completion code {c:#04x})"
                )),
                None => e,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_names_on_the_wire() {
        assert_eq!(padded("abc", 16).unwrap(), b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(padded("a".repeat(20).as_str(), 20).unwrap().len(), 20);
        assert!(padded(&"a".repeat(17), 16).is_err());
        assert!(padded("a\0b", 16).is_err());
        assert_eq!(name_of(b"admin\0\0\0\0\0\0\0\0\0\0\0"), b"admin");
        assert_eq!(name_of(&[0u8; 16]), b"");
        assert_eq!(name_of(b"sixteen-chars-ab"), b"sixteen-chars-ab");
    }
}
