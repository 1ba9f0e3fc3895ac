//! Passwords plinth sets on BMCs (issue 21, rotation): what a BMC accepts ([`PasswordPolicy`])
//! and a fresh password within it ([`generate`]), from the operating system's CSPRNG.
//!
//! The alphabet is letters and digits only: every BMC plinth has met accepts them, where
//! punctuation trips some (IPMI tools that split on `:`; shells in vendors' scripts). A
//! password always holds an upper-case letter, a lower-case letter and a digit, which is what
//! the BMCs with a complexity rule ask. 20 of 62 symbols are 119 bits.

use rand::Rng;
use rand::seq::SliceRandom;

/// The lengths a BMC accepts for the password of plinth's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    pub min_len: usize,
    pub max_len: usize,
}

/// The length plinth prefers, when the BMC allows it.
pub const PREFERRED_LEN: usize = 20;

impl PasswordPolicy {
    /// The length of plinth's passwords under this policy: [`PREFERRED_LEN`] within
    /// `min_len..=max_len`; `None` when the policy cannot hold a 12-character password (a BMC
    /// that says so is refused rather than given a weak password).
    pub fn length(&self) -> Option<usize> {
        if self.min_len > self.max_len {
            return None;
        }
        let len = PREFERRED_LEN.clamp(self.min_len, self.max_len);
        (len >= 12).then_some(len)
    }
}

const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const DIGIT: &[u8] = b"0123456789";

/// A random password of `len` (at least 3) letters and digits, with at least one of each kind.
pub fn generate(len: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    let all: Vec<u8> = [UPPER, LOWER, DIGIT].concat();
    let len = len.max(3);
    let mut out: Vec<u8> = vec![
        UPPER[rng.gen_range(0..UPPER.len())],
        LOWER[rng.gen_range(0..LOWER.len())],
        DIGIT[rng.gen_range(0..DIGIT.len())],
    ];
    while out.len() < len {
        out.push(all[rng.gen_range(0..all.len())]);
    }
    out.shuffle(&mut rng);
    String::from_utf8(out).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_within_the_policy() {
        let p = |min, max| PasswordPolicy {
            min_len: min,
            max_len: max,
        };
        assert_eq!(p(8, 20).length(), Some(20));
        assert_eq!(p(8, 16).length(), Some(16), "IPMI's 16-byte form");
        assert_eq!(p(24, 64).length(), Some(24));
        assert_eq!(p(1, 8).length(), None, "too short to be worth rotating to");
        assert_eq!(p(30, 20).length(), None, "an impossible policy");
    }

    #[test]
    fn passwords_are_random_and_mixed() {
        let a = generate(20);
        let b = generate(20);
        assert_ne!(a, b);
        for p in [&a, &b] {
            assert_eq!(p.len(), 20);
            assert!(p.bytes().any(|c| c.is_ascii_uppercase()));
            assert!(p.bytes().any(|c| c.is_ascii_lowercase()));
            assert!(p.bytes().any(|c| c.is_ascii_digit()));
            assert!(p.bytes().all(|c| c.is_ascii_alphanumeric()));
        }
        assert_eq!(generate(16).len(), 16);
    }
}
