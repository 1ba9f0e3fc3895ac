//! BMC passwords at rest: ChaCha20-Poly1305 with the configured 32-byte key. The machine id
//! is the associated data, so a ciphertext copied to another machine's row does not decrypt.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use uuid::Uuid;

#[derive(Clone)]
pub struct BmcKey(Key);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the BMC secret key must be 32 bytes, base64-encoded (got {0} bytes)")]
    Length(usize),
    #[error("the BMC secret key is not valid base64")]
    Base64,
}

#[derive(Debug, thiserror::Error)]
#[error("the stored BMC password does not decrypt with the configured key")]
pub struct DecryptError;

impl BmcKey {
    /// Parses a base64 (standard alphabet) encoding of 32 bytes.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| KeyError::Base64)?;
        if bytes.len() != 32 {
            return Err(KeyError::Length(bytes.len()));
        }
        Ok(BmcKey(*Key::from_slice(&bytes)))
    }

    /// A fresh random key, base64-encoded, for a new installation.
    pub fn generate_base64() -> String {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        base64::engine::general_purpose::STANDARD.encode(k)
    }

    /// Encrypts `password` for machine `machine_id`: (nonce, ciphertext).
    pub fn encrypt(&self, machine_id: Uuid, password: &str) -> (Vec<u8>, Vec<u8>) {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = ChaCha20Poly1305::new(&self.0)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: password.as_bytes(),
                    aad: machine_id.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption of a short message cannot fail");
        (nonce.to_vec(), ct)
    }

    pub fn decrypt(
        &self,
        machine_id: Uuid,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<String, DecryptError> {
        if nonce.len() != 12 {
            return Err(DecryptError);
        }
        let pt = ChaCha20Poly1305::new(&self.0)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: machine_id.as_bytes(),
                },
            )
            .map_err(|_| DecryptError)?;
        String::from_utf8(pt).map_err(|_| DecryptError)
    }
}

impl std::fmt::Debug for BmcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BmcKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding_to_machine() {
        let key = BmcKey::from_base64(&BmcKey::generate_base64()).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (nonce, ct) = key.encrypt(a, "s3cret");
        assert!(!ct.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(key.decrypt(a, &nonce, &ct).unwrap(), "s3cret");
        assert!(
            key.decrypt(b, &nonce, &ct).is_err(),
            "ciphertext must not move between machines"
        );
        let other = BmcKey::from_base64(&BmcKey::generate_base64()).unwrap();
        assert!(other.decrypt(a, &nonce, &ct).is_err());
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(matches!(
            BmcKey::from_base64("AAAA"),
            Err(KeyError::Length(3))
        ));
        assert!(matches!(
            BmcKey::from_base64("not base64!"),
            Err(KeyError::Base64)
        ));
        assert!(
            !format!(
                "{:?}",
                BmcKey::from_base64(&BmcKey::generate_base64()).unwrap()
            )
            .contains('=')
        );
    }
}
