//! Every bincode call in the project goes through here, with one configuration, so the on-disk
//! and on-wire encodings cannot drift apart between modules.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Upper bound on any decoded message; a corrupt or hostile length prefix fails instead of
/// allocating without limit.
const LIMIT: u64 = 1 << 30;

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(LIMIT)
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing our own in-memory types cannot fail: they hold no maps with non-string keys
    // that bincode rejects, and nothing reaches the size limit that decode enforces.
    options().serialize(value).expect("bincode serialization of an in-memory value")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options().deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;
    use crate::TypeConfig;
    use openraft::{Entry, EntryPayload, LogId, Vote};

    /// Pitfall P9 in the openraft notes: some serde attributes are rejected by bincode. Round-trip
    /// every type that crosses the wire or the disk.
    #[test]
    fn wire_types_round_trip_through_bincode() {
        let req = Request {
            id: Some(u128::MAX - 3),
            proposed_at_ms: 7,
            ops: vec![
                Op {
                    cmd: Command::Put {
                        key: KeyId::user("bob", "k"),
                        value: "v".into(),
                        secret: true,
                        description: Some("d".into()),
                        expire_at_ms: Some(9),
                        now_ms: 1,
                        new_id: "abc".into(),
                        cond: Cond::Revision(3),
                    },
                    guards: vec![Guard { table: "tokens".into(), key: "h".into(), revision: 4 }],
                },
                Op { cmd: Command::PurgeExpired { now_ms: 3 }, guards: vec![] },
            ],
        };
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
            payload: EntryPayload::Normal(req.clone()),
        };
        let back: Entry<TypeConfig> = decode(&encode(&entry)).unwrap();
        assert_eq!(back.log_id, entry.log_id);
        match back.payload {
            EntryPayload::Normal(r) => assert_eq!(r, req),
            _ => panic!("payload kind changed"),
        }
        let vote = Vote::new_committed(5, 2);
        assert_eq!(decode::<Vote<u64>>(&encode(&vote)).unwrap(), vote);
    }

    #[test]
    fn decode_rejects_garbage_instead_of_allocating() {
        let garbage = [0xffu8; 16];
        assert!(decode::<Request>(&garbage).is_err());
    }
}
