//! Secrets: the node's keyring, encryption on the receiving node, and StackStorm's legacy key.
//!
//! A secret is encrypted here, before its command is proposed or forwarded, so only ciphertext
//! ever enters the Raft log, snapshots, the stores and the peer wire; `apply` never encrypts or
//! decrypts. The keyring file is re-read when it changes on disk (checked at most once a second),
//! so a rotated keyring copied onto every node takes effect without a restart.
//!
//! StackStorm's own ciphertexts (keyczar-style AES-CBC + HMAC-SHA1, `../shared/st2-contract.md`
//! §5.2) are accepted on a pre-encrypted write when its `datastore_key.json` is configured as the
//! legacy key: they are verified, decrypted and stored re-encrypted under our keyring.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use st2kv_api::keyring::{aad, CryptoError, Keyring};
use st2kv_raft::KeyId;

use crate::error::ApiError;

/// The node's view of its keyring file.
pub struct Secrets {
    path: Option<PathBuf>,
    state: Mutex<RingState>,
    pub legacy: Option<LegacyKey>,
}

struct RingState {
    ring: Option<Arc<Keyring>>,
    mtime: Option<SystemTime>,
    checked: Instant,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The associated data of a key's ciphertext.
pub fn key_aad(key: &KeyId) -> Vec<u8> {
    aad(key.scope.as_str(), &key.user, &key.name)
}

impl Secrets {
    /// Load the keyring (if a path is given) and the legacy StackStorm key (if given).
    pub fn load(path: Option<PathBuf>, legacy: Option<&Path>) -> anyhow::Result<Secrets> {
        let ring = match &path {
            Some(p) => Some(Arc::new(Keyring::load(p)?)),
            None => None,
        };
        let legacy = legacy.map(LegacyKey::load).transpose()?;
        let m = path.as_deref().and_then(mtime);
        Ok(Secrets { path, state: Mutex::new(RingState { ring, mtime: m, checked: Instant::now() }), legacy })
    }

    /// The current keyring, re-read if its file changed.
    pub fn ring(&self) -> Option<Arc<Keyring>> {
        let path = self.path.as_deref()?;
        let mut st = self.state.lock().expect("keyring lock");
        if st.checked.elapsed() >= Duration::from_secs(1) {
            st.checked = Instant::now();
            let m = mtime(path);
            if m != st.mtime {
                match Keyring::load(path) {
                    Ok(r) => {
                        tracing::info!(active = %r.active, keys = r.keys.len(), "keyring reloaded");
                        st.ring = Some(Arc::new(r));
                        st.mtime = m;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "keyring changed but cannot be loaded; keeping the previous one")
                    }
                }
            }
        }
        st.ring.clone()
    }

    /// Force a re-read now (used before a re-encryption pass).
    pub fn reload_now(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.checked = Instant::now() - Duration::from_secs(2);
            st.mtime = None;
        }
    }

    /// The keyring, or StackStorm's "Crypto key not found" error for `name`.
    pub fn require(&self, name: &str) -> Result<Arc<Keyring>, ApiError> {
        self.ring().ok_or_else(|| {
            let where_ = match &self.path {
                Some(p) => p.display().to_string(),
                None => "(no --crypto-key-path configured on this node)".to_string(),
            };
            ApiError::BadRequest(format!(
                "Crypto key not found in {where_}. Unable to encrypt / decrypt value for key {name}."
            ))
        })
    }

    /// Decrypt a stored secret for a reader who is allowed to see it.
    pub fn decrypt(&self, key: &KeyId, value: &str) -> Result<String, ApiError> {
        let ring = self.require(&key.name)?;
        ring.decrypt(value, &key_aad(key)).map_err(|e| {
            ApiError::Internal(format!(
                "the stored value of key \"{}\" cannot be decrypted: {e}",
                key.key_ref()
            ))
        })
    }
}

/// StackStorm's `datastore_key.json` (keyczar-compatible AES-CBC + HMAC-SHA1).
pub struct LegacyKey {
    aes: Vec<u8>,
    hmac: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct LegacyFile {
    #[serde(rename = "hmacKey")]
    hmac_key: LegacyHmac,
    #[serde(rename = "aesKeyString")]
    aes_key_string: String,
    mode: String,
}

#[derive(serde::Deserialize)]
struct LegacyHmac {
    #[serde(rename = "hmacKeyString")]
    hmac_key_string: String,
}

fn b64_web_safe(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

impl LegacyKey {
    pub fn load(path: &Path) -> anyhow::Result<LegacyKey> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read StackStorm key {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("StackStorm key {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<LegacyKey, String> {
        let f: LegacyFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if f.mode != "CBC" {
            return Err(format!("mode {:?} is not supported (only CBC)", f.mode));
        }
        let aes = b64_web_safe(&f.aes_key_string).ok_or("aesKeyString is not base64")?;
        if ![16, 24, 32].contains(&aes.len()) {
            return Err(format!("the AES key is {} bytes long", aes.len()));
        }
        let hmac = b64_web_safe(&f.hmac_key.hmac_key_string).ok_or("hmacKeyString is not base64")?;
        Ok(LegacyKey { aes, hmac })
    }

    /// Verify and decrypt a StackStorm ciphertext.
    pub fn decrypt(&self, value: &str) -> Result<String, CryptoError> {
        use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
        use hmac::Mac;
        let raw = hex::decode(value).map_err(|_| CryptoError::Malformed)?;
        if raw.len() < 5 + 16 + 16 + 20 {
            return Err(CryptoError::Malformed);
        }
        let (body, tag) = raw.split_at(raw.len() - 20);
        let mut mac =
            hmac::Hmac::<sha1::Sha1>::new_from_slice(&self.hmac).map_err(|_| CryptoError::Integrity)?;
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| CryptoError::Integrity)?;
        let (iv, ct) = body[5..].split_at(16);
        let mut buf = ct.to_vec();
        let pt = match self.aes.len() {
            16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(&self.aes, iv)
                .map_err(|_| CryptoError::Integrity)?
                .decrypt_padded_mut::<Pkcs7>(&mut buf)
                .map(<[u8]>::to_vec),
            24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(&self.aes, iv)
                .map_err(|_| CryptoError::Integrity)?
                .decrypt_padded_mut::<Pkcs7>(&mut buf)
                .map(<[u8]>::to_vec),
            _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(&self.aes, iv)
                .map_err(|_| CryptoError::Integrity)?
                .decrypt_padded_mut::<Pkcs7>(&mut buf)
                .map(<[u8]>::to_vec),
        }
        .map_err(|_| CryptoError::Integrity)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Integrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// StackStorm's test key (`st2tests/conf/st2_kvstore_tests.crypto.key.json`) and the test
    /// vector from its API tests, as recorded in the contract.
    const ST2_TEST_KEY: &str = r#"{"hmacKey":{"hmacKeyString":"685EWJ8U2U_c3Ulv9ibB6aa0Y9aYm-0bCwe2mqjLJuw","size":256},"aesKeyString":"eKGFrfNEUhAgX0uofaU1wQ","mode":"CBC","size":128}"#;
    const ST2_VECTOR: &str = "3030303030298D848B45A24EDCD1A82FAB4E831E3FCE6E60956817A48A180E4C040801EB30170DACF79498F30520236A629912C3584847098D";

    #[test]
    fn the_stackstorm_test_vector_decrypts() {
        let k = LegacyKey::parse(ST2_TEST_KEY).unwrap();
        assert_eq!(k.decrypt(ST2_VECTOR).unwrap(), "S3cret!Value");
    }

    #[test]
    fn a_tampered_stackstorm_value_is_refused() {
        let k = LegacyKey::parse(ST2_TEST_KEY).unwrap();
        let mut raw = hex::decode(ST2_VECTOR).unwrap();
        raw[30] ^= 0x01;
        assert_eq!(k.decrypt(&hex::encode_upper(raw)), Err(CryptoError::Integrity));
        assert_eq!(k.decrypt("3030"), Err(CryptoError::Malformed));
        assert!(LegacyKey::parse(
            r#"{"hmacKey":{"hmacKeyString":"x"},"aesKeyString":"eKGFrfNEUhAgX0uofaU1wQ","mode":"ECB"}"#
        )
        .is_err());
    }
}
