//! The cluster's symmetric keyring and the AES-256-GCM format of stored secrets.
//!
//! A keyring file (`st2kv keygen --key-path FILE`) is JSON:
//! `{"active": "1a2b3c4d", "keys": [{"id": "1a2b3c4d", "key": "<base64, 32 bytes>", "created": "..."}]}`.
//! Rotation adds a new active key and keeps the old ones, so older ciphertexts stay readable by
//! their key id; retiring removes a key once nothing needs it.
//!
//! A secret is stored and shown as uppercase hex of
//! `version (0x01) ‖ key id (4 bytes) ‖ nonce (12 bytes) ‖ AES-256-GCM ciphertext ‖ tag (16 bytes)`,
//! with a fresh random nonce per encryption and, as associated data, the key's identity
//! (`scope`, `user`, `name`): a ciphertext moved to another key, scope or owner fails to decrypt.
//!
//! This module lives in the API crate because the file format is shared by `st2kv keygen` (the
//! CLI) and the node; it does no I/O besides reading and writing the keyring file.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use serde::{Deserialize, Serialize};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 12;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("cannot read keyring {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write keyring {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("keyring {0} already exists; pass --force to overwrite it")]
    Exists(String),
    #[error("keyring {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
    #[error("key {0} is not in the keyring")]
    UnknownKey(String),
    #[error("key {0} is the active key; rotate first, then retire it")]
    RetireActive(String),
}

/// Why a ciphertext could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the value is not an st2kv ciphertext")]
    Malformed,
    #[error("the value was encrypted with key {0}, which this keyring does not hold")]
    MissingKey(String),
    #[error("the value failed its integrity check (tampered, corrupted, or encrypted for another key)")]
    Integrity,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyEntry {
    pub id: String,
    /// 32 bytes, standard base64.
    pub key: String,
    #[serde(default)]
    pub created: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keyring {
    pub active: String,
    pub keys: Vec<KeyEntry>,
}

fn new_entry() -> KeyEntry {
    KeyEntry {
        id: hex::encode(rand::random::<[u8; 4]>()),
        key: base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>()),
        created: chrono_like_now(),
    }
}

fn chrono_like_now() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("unix:{secs}")
}

/// The associated data binding a ciphertext to one key.
pub fn aad(scope: &str, user: &str, name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + scope.len() + user.len() + name.len());
    a.extend_from_slice(b"st2kv-secret-v1\0");
    a.extend_from_slice(scope.as_bytes());
    a.push(0);
    a.extend_from_slice(user.as_bytes());
    a.push(0);
    a.extend_from_slice(name.as_bytes());
    a
}

impl Keyring {
    /// A new keyring with one fresh, active key.
    pub fn generate() -> Keyring {
        let e = new_entry();
        Keyring { active: e.id.clone(), keys: vec![e] }
    }

    /// Add a new key and make it active; returns its id.
    pub fn rotate(&mut self) -> String {
        let mut e = new_entry();
        while self.keys.iter().any(|k| k.id == e.id) {
            e = new_entry();
        }
        self.active = e.id.clone();
        self.keys.push(e);
        self.active.clone()
    }

    /// Remove a key that is not active.
    pub fn retire(&mut self, id: &str) -> Result<(), KeyringError> {
        if id == self.active {
            return Err(KeyringError::RetireActive(id.to_string()));
        }
        let before = self.keys.len();
        self.keys.retain(|k| k.id != id);
        if self.keys.len() == before {
            return Err(KeyringError::UnknownKey(id.to_string()));
        }
        Ok(())
    }

    pub fn has_key(&self, id: &str) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }

    fn validate(&self, path: &str) -> Result<(), KeyringError> {
        let invalid = |reason: String| KeyringError::Invalid { path: path.to_string(), reason };
        if self.keys.is_empty() {
            return Err(invalid("it holds no key".into()));
        }
        for k in &self.keys {
            if k.id.len() != 8 || hex::decode(&k.id).is_err() {
                return Err(invalid(format!("key id {:?} is not 8 hex characters", k.id)));
            }
            match base64::engine::general_purpose::STANDARD.decode(&k.key) {
                Ok(b) if b.len() == 32 => {}
                _ => return Err(invalid(format!("key {} is not 32 bytes of base64", k.id))),
            }
        }
        if !self.has_key(&self.active) {
            return Err(invalid(format!("the active key {} is not in the keyring", self.active)));
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| KeyringError::Read { path: p.clone(), source })?;
        let ring: Keyring = serde_json::from_str(&text)
            .map_err(|e| KeyringError::Invalid { path: p.clone(), reason: e.to_string() })?;
        ring.validate(&p)?;
        Ok(ring)
    }

    /// Write the keyring with mode 0600; an existing file is replaced only with `overwrite`.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), KeyringError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = path.display().to_string();
        if path.exists() && !overwrite {
            return Err(KeyringError::Exists(p));
        }
        // A fresh temp file beside the target (created new, so it is 0600 whatever was there).
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file_name}.{:08x}.tmp", rand::random::<u32>()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(serde_json::to_string_pretty(self).expect("keyring JSON").as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| KeyringError::Write { path: p, source })
    }

    fn cipher(&self, id: &str) -> Option<Aes256Gcm> {
        let k = self.keys.iter().find(|k| k.id == id)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(&k.key).ok()?;
        Aes256Gcm::new_from_slice(&bytes).ok()
    }

    /// Encrypt under the active key with a fresh random nonce; uppercase hex.
    pub fn encrypt(&self, plaintext: &str, aad: &[u8]) -> String {
        let cipher = self.cipher(&self.active).expect("a validated keyring holds its active key");
        let nonce: [u8; 12] = rand::random();
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad })
            .expect("AES-GCM encryption of an in-memory buffer");
        let mut out = Vec::with_capacity(HEADER + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&hex::decode(&self.active).expect("validated key id"));
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        hex::encode_upper(out)
    }

    /// Decrypt a value produced by [`Keyring::encrypt`] for the same `aad`.
    pub fn decrypt(&self, value: &str, aad: &[u8]) -> Result<String, CryptoError> {
        let raw = hex::decode(value).map_err(|_| CryptoError::Malformed)?;
        if raw.len() < HEADER + 16 || raw[0] != VERSION {
            return Err(CryptoError::Malformed);
        }
        let id = hex::encode(&raw[1..5]);
        let cipher = self.cipher(&id).ok_or(CryptoError::MissingKey(id))?;
        let pt = cipher
            .decrypt(Nonce::from_slice(&raw[5..17]), Payload { msg: &raw[17..], aad })
            .map_err(|_| CryptoError::Integrity)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Integrity)
    }

    /// The key id a ciphertext names, if it is one of ours.
    pub fn key_id_of(value: &str) -> Option<String> {
        if value.len() < 2 * HEADER || !value.starts_with("01") {
            return None;
        }
        Some(value.get(2..10)?.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_round_trips_and_is_bound_to_its_key() {
        let ring = Keyring::generate();
        let a = aad("st2kv.user", "alice", "token");
        let ct = ring.encrypt("S3CRET", &a);
        assert!(ct.starts_with("01") && ct == ct.to_uppercase());
        assert!(!ct.contains("S3CRET"));
        assert_eq!(ring.decrypt(&ct, &a).unwrap(), "S3CRET");
        // Moved to another name, owner or scope: refused.
        for other in [
            aad("st2kv.user", "alice", "other"),
            aad("st2kv.user", "bob", "token"),
            aad("st2kv.system", "", "token"),
        ] {
            assert_eq!(ring.decrypt(&ct, &other), Err(CryptoError::Integrity));
        }
        // A flipped byte anywhere: refused.
        let mut raw = hex::decode(&ct).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(ring.decrypt(&hex::encode_upper(&raw), &a), Err(CryptoError::Integrity));
        assert_eq!(ring.decrypt("not hex", &a), Err(CryptoError::Malformed));
    }

    #[test]
    fn every_encryption_uses_a_fresh_nonce() {
        let ring = Keyring::generate();
        let a = aad("st2kv.system", "", "k");
        let nonces: std::collections::HashSet<String> =
            (0..1000).map(|_| ring.encrypt("same", &a)[10..34].to_string()).collect();
        assert_eq!(nonces.len(), 1000);
    }

    #[test]
    fn rotation_keeps_old_ciphertexts_readable_until_the_key_is_retired() {
        let mut ring = Keyring::generate();
        let old = ring.active.clone();
        let a = aad("st2kv.system", "", "k");
        let ct_old = ring.encrypt("v1", &a);
        let new = ring.rotate();
        assert_ne!(old, new);
        let ct_new = ring.encrypt("v2", &a);
        assert_eq!(Keyring::key_id_of(&ct_old).as_deref(), Some(old.as_str()));
        assert_eq!(Keyring::key_id_of(&ct_new).as_deref(), Some(new.as_str()));
        assert_eq!(ring.decrypt(&ct_old, &a).unwrap(), "v1");
        assert!(matches!(ring.retire(&new), Err(KeyringError::RetireActive(_))));
        ring.retire(&old).unwrap();
        assert_eq!(ring.decrypt(&ct_old, &a), Err(CryptoError::MissingKey(old)));
        assert_eq!(ring.decrypt(&ct_new, &a).unwrap(), "v2");
    }

    #[test]
    fn the_file_is_private_and_not_overwritten_by_accident() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let ring = Keyring::generate();
        ring.save(&path, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(Keyring::generate().save(&path, false), Err(KeyringError::Exists(_))));
        let back = Keyring::load(&path).unwrap();
        assert_eq!(back.active, ring.active);
        std::fs::write(&path, r#"{"active":"zz","keys":[]}"#).unwrap();
        assert!(matches!(Keyring::load(&path), Err(KeyringError::Invalid { .. })));
    }
}
