//! The replicated vocabulary: what goes into a Raft entry and what comes back out of `apply`.
//!
//! Everything here is decided by the node that *receives* a client request, before the request
//! is proposed: timestamps, expiry instants, generated ids. `apply` only copies these values into
//! the state machine, which is what keeps it deterministic on every replica.

use serde::{Deserialize, Serialize};

/// A cluster member as stored in Raft membership: where its peer listener and its public API
/// listener can be reached. `api_addr` may be empty for members listed only by peer address in
/// `--initial-cluster`; nothing in the replication path depends on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `host:port` of the peer listener (Raft RPCs and forwarded commands).
    pub rpc_addr: String,
    /// `host:port` of the public API listener, for operators and clients.
    pub api_addr: String,
}

/// StackStorm's two datastore scopes. The wire names are `st2kv.system` and `st2kv.user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    System,
    User,
}

impl Scope {
    /// The full StackStorm scope name, as returned in resources.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::System => "st2kv.system",
            Scope::User => "st2kv.user",
        }
    }
}

/// The identity of one key: `(scope, owner, name)`. `user` is empty for system-scope keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId {
    pub scope: Scope,
    pub user: String,
    pub name: String,
}

impl KeyId {
    pub fn system(name: impl Into<String>) -> Self {
        KeyId { scope: Scope::System, user: String::new(), name: name.into() }
    }
    pub fn user(user: impl Into<String>, name: impl Into<String>) -> Self {
        KeyId { scope: Scope::User, user: user.into(), name: name.into() }
    }
    /// StackStorm's key reference: `name` for system keys, `user:name` for user keys.
    pub fn key_ref(&self) -> String {
        match self.scope {
            Scope::System => self.name.clone(),
            Scope::User => format!("{}:{}", self.user, self.name),
        }
    }
}

/// One stored value, as the state machine keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// A 24-hex-char id (StackStorm shows a Mongo ObjectId here); chosen at creation, kept on update.
    pub id: String,
    /// Plaintext, or ciphertext when `secret` (never decrypted by this crate).
    pub value: String,
    pub secret: bool,
    pub description: Option<String>,
    /// Absolute expiry, unix milliseconds. Reads hide the key from this instant on.
    pub expire_at_ms: Option<i64>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The log index of the entry that last changed this key.
    pub revision: u64,
}

impl Record {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        matches!(self.expire_at_ms, Some(t) if t <= now_ms)
    }
}

/// A change to the key space. Every field is final: `apply` adds only the revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a key (StackStorm replaces the whole document on update).
    Put {
        key: KeyId,
        value: String,
        secret: bool,
        description: Option<String>,
        expire_at_ms: Option<i64>,
        /// The proposer's clock when the request arrived; becomes created/updated time.
        now_ms: i64,
        /// The id to give the key if it does not exist yet.
        new_id: String,
        /// A precondition on the key's current (live) revision: compare-and-set.
        cond: Cond,
    },
    /// Remove a key; answers `NotFound` if it does not exist (or has expired at `now_ms`).
    Delete { key: KeyId, now_ms: i64 },
    /// Remove every key (and auxiliary record) whose expiry is at or before `now_ms`. Proposed
    /// periodically by the leader.
    PurgeExpired { now_ms: i64 },
    /// Write an opaque auxiliary record (the node keeps users, token and API-key hashes here);
    /// this crate never looks inside `value`.
    PutAux {
        table: String,
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expire_at_ms: Option<i64>,
        cond: Cond,
    },
    /// Remove an auxiliary record.
    DeleteAux { table: String, key: String, cond: Cond },
}

/// A precondition on the current record, checked at apply time (compare-and-set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cond {
    Always,
    /// Only if no record exists.
    Absent,
    /// Only if the record exists at exactly this revision.
    Revision(u64),
}

/// An auxiliary record as stored: opaque bytes with a revision and an optional expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuxRecord {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub expire_at_ms: Option<i64>,
    pub revision: u64,
}

impl AuxRecord {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        matches!(self.expire_at_ms, Some(t) if t <= now_ms)
    }
}

/// One command and the credentials it is bound to. Retries are recognised per batch, by
/// [`Request::id`], not per op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub cmd: Command,
    /// Auxiliary records that must still be at these revisions when the op is applied, or it is
    /// not applied ([`Outcome::GuardFailed`]). The node uses them to bind a write to the
    /// credentials it checked: a token revoked (or a user changed) before the write is ordered
    /// makes the write fail, without a read barrier before every write.
    pub guards: Vec<Guard>,
}

/// "Auxiliary record `(table, key)` exists at `revision`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub table: String,
    pub key: String,
    pub revision: u64,
}

/// The payload of one Raft entry: a group-committed batch of ops, applied atomically in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Request {
    /// The batch's request id. A batch that carries one is remembered as a whole (one record for
    /// all its outcomes, rather than one per op), so a retried proposal of the same batch is
    /// applied once and answered with the outcomes of the first application.
    pub id: Option<u128>,
    /// The proposer's clock (unix ms) when the batch was formed; ages out remembered request ids.
    pub proposed_at_ms: i64,
    pub ops: Vec<Op>,
    /// Batches other nodes forwarded to the leader, carried in the same entry after this one's
    /// ops. Each keeps its own id (a retry of it is recognised on its own) and gets its own
    /// [`Response`] in [`Response::also`], in the same order.
    pub also: Vec<Request>,
}

/// What one op did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Put {
        record: Record,
        created: bool,
    },
    Deleted {
        record: Record,
    },
    NotFound,
    Purged {
        count: u64,
    },
    /// An auxiliary record was written at `revision`.
    AuxPut {
        revision: u64,
        created: bool,
    },
    /// An auxiliary record was removed.
    AuxDeleted,
    /// The command's [`Cond`] did not hold; nothing changed. `current` is the record's revision.
    CondFailed {
        current: Option<u64>,
    },
    /// One of the op's guards did not hold; nothing changed.
    GuardFailed,
}

/// A change to one key, as observed by every replica when it applies the entry that made it.
/// `(index, seq)` names it identically on every node: `seq` is the op's position in the entry.
/// Expiry purges are not reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub index: u64,
    pub seq: u32,
    pub key: KeyId,
    /// The live record before the change (None for a creation).
    pub old: Option<Record>,
    /// The record after the change (None for a deletion).
    pub new: Option<Record>,
}

/// The result of applying one entry: one outcome per op, in order (empty for blank and
/// membership entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    pub outcomes: Vec<Outcome>,
    /// One response per [`Request::also`] batch, in order.
    pub also: Vec<Response>,
}
