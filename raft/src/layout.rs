//! How the state machine lays its data out in the single sled tree `sm`.
//!
//! Every record lives under a one-byte family tag, so one `apply_batch` on one tree can change
//! data, indexes and metadata atomically (sled batches are atomic per tree only):
//!
//! | family | key | value |
//! |---|---|---|
//! | `k` | `k` + scope byte (`s`/`u`) + user + `0x00` + name | bincode `Record` |
//! | `x` | `x` + expire_at_ms (u64 BE) + kv key | empty: the expiry index |
//! | `d` | `d` + batch request id (u128 BE) | bincode `Response`: remembered batches |
//! | `a` | `a` + proposed_at_ms (u64 BE) + request id | empty: ages out `d` |
//! | `t` | `t` + table + `0x00` + key | bincode `AuxRecord`: the node's users, token and API-key hashes |
//! | `m` | `m` + name | bincode metadata (last applied, membership, op counter, key count) |
//!
//! Keys of one `(scope, user)` are contiguous and sorted by name, so a prefix listing is a range
//! scan whose cost is the page, not the store. User names and key names never contain `0x00`
//! (the API refuses them), which keeps the user/name boundary unambiguous.

use crate::types::{KeyId, Scope};

pub const KV: u8 = b'k';
pub const EXPIRY: u8 = b'x';
pub const DEDUP: u8 = b'd';
pub const DEDUP_AGE: u8 = b'a';
pub const META: u8 = b'm';
pub const AUX: u8 = b't';

pub const META_APPLIED: &[u8] = b"mapplied";
pub const META_MEMBERSHIP: &[u8] = b"mmembership";
pub const META_OPS: &[u8] = b"mops";
/// How many `k` records the tree holds (expired-but-unpurged ones included).
pub const META_KEYS: &[u8] = b"mkeys";

/// The prefix shared by every key of `(scope, user)` whose name starts with `name_prefix`.
pub fn kv_prefix(scope: Scope, user: &str, name_prefix: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + user.len() + name_prefix.len());
    k.push(KV);
    match scope {
        Scope::System => k.push(b's'),
        Scope::User => {
            k.push(b'u');
            k.extend_from_slice(user.as_bytes());
            k.push(0);
        }
    }
    k.extend_from_slice(name_prefix.as_bytes());
    k
}

pub fn kv_key(key: &KeyId) -> Vec<u8> {
    kv_prefix(key.scope, &key.user, &key.name)
}

/// Inverse of [`kv_key`]; `None` for bytes that are not a kv key.
pub fn decode_kv_key(bytes: &[u8]) -> Option<KeyId> {
    let rest = bytes.strip_prefix(&[KV])?;
    match rest.first()? {
        b's' => Some(KeyId::system(std::str::from_utf8(&rest[1..]).ok()?)),
        b'u' => {
            let body = &rest[1..];
            let sep = body.iter().position(|b| *b == 0)?;
            Some(KeyId::user(
                std::str::from_utf8(&body[..sep]).ok()?,
                std::str::from_utf8(&body[sep + 1..]).ok()?,
            ))
        }
        _ => None,
    }
}

/// The prefix of every auxiliary record of `table` whose key starts with `prefix`.
pub fn aux_prefix(table: &str, prefix: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + table.len() + prefix.len());
    k.push(AUX);
    k.extend_from_slice(table.as_bytes());
    k.push(0);
    k.extend_from_slice(prefix.as_bytes());
    k
}

/// The key of one auxiliary record, and the inverse (`(table, key)`).
pub fn aux_key(table: &str, key: &str) -> Vec<u8> {
    aux_prefix(table, key)
}

pub fn decode_aux_key(bytes: &[u8]) -> Option<(String, String)> {
    let rest = bytes.strip_prefix(&[AUX])?;
    let sep = rest.iter().position(|b| *b == 0)?;
    Some((String::from_utf8(rest[..sep].to_vec()).ok()?, String::from_utf8(rest[sep + 1..].to_vec()).ok()?))
}

pub fn expiry_key(expire_at_ms: i64, kv_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + kv_key.len());
    k.push(EXPIRY);
    k.extend_from_slice(&(expire_at_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(kv_key);
    k
}

/// The first expiry-index key strictly after every entry expiring at or before `now_ms`.
pub fn expiry_upper_bound(now_ms: i64) -> Vec<u8> {
    let mut k = vec![EXPIRY];
    k.extend_from_slice(&((now_ms.max(0) as u64) + 1).to_be_bytes());
    k
}

pub fn dedup_key(id: u128) -> Vec<u8> {
    let mut k = vec![DEDUP];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn dedup_age_key(at_ms: i64, id: u128) -> Vec<u8> {
    let mut k = vec![DEDUP_AGE];
    k.extend_from_slice(&(at_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Upper bound of the age index for everything proposed before `at_ms`.
pub fn dedup_age_bound(at_ms: i64) -> Vec<u8> {
    let mut k = vec![DEDUP_AGE];
    k.extend_from_slice(&(at_ms.max(0) as u64).to_be_bytes());
    k
}

/// The id stored in an age-index key.
pub fn dedup_id_from_age_key(k: &[u8]) -> Option<u128> {
    let raw: [u8; 16] = k.get(9..25)?.try_into().ok()?;
    Some(u128::from_be_bytes(raw))
}

/// The smallest byte string greater than every string starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys_round_trip_and_user_prefixes_do_not_overlap() {
        for k in [KeyId::system("a.b"), KeyId::user("alice", "x:y"), KeyId::user("alice2", "")] {
            assert_eq!(decode_kv_key(&kv_key(&k)), Some(k));
        }
        // `alice` must never see `alice2`'s keys through a prefix scan.
        let alice = kv_prefix(Scope::User, "alice", "");
        assert!(!kv_key(&KeyId::user("alice2", "k")).starts_with(&alice));
        // System and user families are disjoint.
        assert!(!kv_key(&KeyId::user("s", "k")).starts_with(&kv_prefix(Scope::System, "", "")));
    }

    #[test]
    fn expiry_keys_sort_by_time() {
        let a = expiry_key(5, b"kz");
        let b = expiry_key(256, b"ka");
        assert!(a < b);
        assert!(b < expiry_upper_bound(256));
        assert!(expiry_upper_bound(255) <= b);
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff]), None);
    }
}
