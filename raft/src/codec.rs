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

/// [`encode`] appended to `out`.
pub fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    options().serialize_into(out, value).expect("bincode serialization of an in-memory value")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options().deserialize(bytes)
}

/// Writes a snapshot's pairs one at a time, in exactly the bytes [`encode`] gives for the whole
/// `Vec<(Vec<u8>, Vec<u8>)>`, without holding the pairs in memory. bincode prefixes a sequence
/// with its length, which is known only at the end: the prefix is written as a 9-byte varint
/// (tag 253 + u64), which bincode's decoder accepts for any value, and patched by `finish`.
pub struct PairWriter<W: std::io::Write + std::io::Seek> {
    out: W,
    count: u64,
}

/// bincode's varint tag for "a little-endian u64 follows".
const VARINT_U64: u8 = 253;

impl<W: std::io::Write + std::io::Seek> PairWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(&[VARINT_U64])?;
        out.write_all(&0u64.to_le_bytes())?;
        Ok(PairWriter { out, count: 0 })
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        options().serialize_into(&mut self.out, &(key, value)).map_err(std::io::Error::other)?;
        self.count += 1;
        Ok(())
    }

    /// Patch the length prefix and hand the writer back, with the number of pairs written.
    pub fn finish(mut self) -> std::io::Result<(W, u64)> {
        self.out.seek(std::io::SeekFrom::Start(1))?;
        self.out.write_all(&self.count.to_le_bytes())?;
        self.out.seek(std::io::SeekFrom::End(0))?;
        Ok((self.out, self.count))
    }
}

/// Reads back what [`PairWriter`] (or [`encode`] of a pair vector) wrote, one pair at a time.
pub struct PairReader<R: std::io::Read> {
    input: R,
    left: u64,
}

impl<R: std::io::Read> PairReader<R> {
    pub fn new(mut input: R) -> Result<Self, bincode::Error> {
        let left: u64 = options().deserialize_from(&mut input)?;
        Ok(PairReader { input, left })
    }
}

impl<R: std::io::Read> Iterator for PairReader<R> {
    type Item = Result<(Vec<u8>, Vec<u8>), bincode::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let item = options().deserialize_from(&mut self.input);
        if item.is_err() {
            self.left = 0;
        }
        Some(item)
    }
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
            also: vec![Request { id: Some(5), proposed_at_ms: 6, ops: vec![], also: vec![] }],
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

    #[test]
    fn streamed_pairs_decode_like_a_pair_vector_and_back() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> =
            (0..300u32).map(|i| (format!("k{i}").into_bytes(), vec![i as u8; (i % 7) as usize])).collect();
        let mut w = PairWriter::new(std::io::Cursor::new(Vec::new())).unwrap();
        for (k, v) in &pairs {
            w.push(k, v).unwrap();
        }
        let (out, n) = w.finish().unwrap();
        assert_eq!(n, 300);
        let bytes = out.into_inner();
        let whole: Vec<(Vec<u8>, Vec<u8>)> = decode(&bytes).unwrap();
        assert_eq!(whole, pairs);
        let streamed: Vec<_> = PairReader::new(&encode(&pairs)[..]).unwrap().map(Result::unwrap).collect();
        assert_eq!(streamed, pairs);
        let mut truncated = PairReader::new(&bytes[..bytes.len() - 1]).unwrap();
        assert!(truncated.by_ref().any(|p| p.is_err()), "a cut-short stream is an error, not an early end");
        assert!(truncated.next().is_none());
    }
}
