//! # st2kv-raft: the replicated state of an st2kv cluster
//!
//! Every change to the key space is a [`Command`], decided in full by the node that received the
//! client's request, and batched with other commands into one [`Request`]: the payload of one
//! Raft entry. [openraft](https://docs.rs/openraft/0.9.25) orders the entries and replicates them
//! to a quorum; each node then applies them, in order, to its own sled-backed state machine
//! ([`store::StateMachine`]). A node that falls too far behind, or joins new, receives a snapshot
//! of the state machine instead of the entries it missed.
//!
//! How the parts map onto openraft 0.9 (storage-v2):
//! - [`TypeConfig`]: `D = Request`, `R = Response`, `NodeId = u64`, `Node = Node { rpc_addr,
//!   api_addr }`, snapshots are in-memory byte buffers.
//! - [`store::LogStore`] implements `RaftLogStorage`: entries in append-only segment files
//!   ([`wal`]), vote / committed / last-purged in sled's `raft_meta` tree. Appends, truncations,
//!   purges and votes are durable (fdatasync) before they are acknowledged; appends are made
//!   durable by one ordered sync thread, many per `fdatasync`.
//! - [`store::StateMachine`] implements `RaftStateMachine`: one atomic sled batch per apply
//!   call, holding the data, the expiry index, remembered request ids and the last-applied log
//!   id together. `apply` is a pure function of (state, entries): it never reads the clock, the
//!   environment or a key file, and never encrypts or decrypts.
//! - [`store::StateView`] is how the node reads (get, prefix list, applied index).
//! - [`network`] holds the peer transport, client and server, including the two application
//!   RPCs the node needs: forwarding a batch to the leader and asking it for a read index.
//! - [`codec`] holds every bincode call.
//!
//! ## What this crate deliberately does not do
//! - It knows nothing of users, tokens, plaintext secrets, HTTP JSON shapes or StackStorm: those
//!   are the node's. A secret arrives here already encrypted; users and token hashes arrive as
//!   opaque auxiliary records (`Command::PutAux`) in tables the node names.
//! - It does not batch or forward on its own: group commit and leader forwarding are the node's
//!   policy, built on [`network::propose_local`] and [`network::PeerClient`].
//! - Snapshots are files, built while applies go on (copy-on-write pre-images of the keys
//!   changed since the cut) and streamed to followers in chunks; but a follower *installs* one
//!   as a single atomic sled batch, so installing needs memory in the order of the state's size.
//! - Peer traffic is signed (HMAC-SHA256 with the cluster secret), not encrypted; run the peer
//!   listener on a private network.

pub mod codec;
pub mod layout;
pub mod network;
pub mod store;
pub mod types;
pub mod wal;

pub use types::{
    AuxRecord, Command, Cond, Guard, KeyChange, KeyId, Node, Op, Outcome, Record, Request, Response, Scope,
};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of st2kv.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// Tunables of the Raft layer, with the values we run by default and why.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    /// Leader heartbeat; also openraft's deadline for one AppendEntries (pitfall P5), so it must
    /// cover a ~1 MiB append plus an fdatasync on the follower. Default 100 ms.
    pub heartbeat_ms: u64,
    /// Election timeout range: ≥5x the heartbeat so disk stalls do not depose a healthy leader.
    /// Default 500-1000 ms; failover then takes about 1-2 s.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// At least this many entries between snapshots. Default 10 000. openraft's own policy is
    /// off: the node triggers snapshots itself, also weighing the state's size
    /// ([`store::StateView::snapshot_due`]).
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, so briefly lagging followers catch up from the
    /// log rather than a whole snapshot (pitfall P11). Default 5 000.
    pub keep_after_snapshot: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            snapshot_every: 10_000,
            keep_after_snapshot: 5_000,
        }
    }
}

impl RaftTuning {
    pub fn to_config(&self, cluster_name: &str) -> Result<openraft::Config, String> {
        openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            install_snapshot_timeout: 10_000,
            snapshot_max_chunk_size: 3 << 20,
            max_payload_entries: 1000,
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            replication_lag_threshold: self.snapshot_every.saturating_mul(2).max(1000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }
}
