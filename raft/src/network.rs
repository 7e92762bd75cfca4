//! The peer transport: Raft RPCs and forwarded client commands between nodes, as HTTP POSTs with
//! bincode bodies on the peer listener.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `/raft/append` | `AppendEntriesRequest` | `Result<AppendEntriesResponse, RaftError>` |
//! | `/raft/vote` | `VoteRequest` | `Result<VoteResponse, RaftError>` |
//! | `/raft/snapshot` | `InstallSnapshotRequest` (one chunk) | `Result<InstallSnapshotResponse, RaftError<InstallSnapshotError>>` |
//! | `/raft/write` | `Request` (a batch, from a follower; carried in the leader's next entry) | `Result<Response, PeerError>` |
//! | `/raft/read_index` | `()` | `Result<Option<LogId>, PeerError>` |
//! | `/raft/membership` | `MembershipChange` | `Result<(), PeerError>` (adds catch up as learners first) |
//!
//! When a cluster secret is configured, every request is signed with it: the headers
//! `x-st2kv-peer-ts` (unix seconds) and `x-st2kv-peer-signature` (hex HMAC-SHA256 over path,
//! timestamp and body) must verify, and the timestamp be within five minutes of the receiver's
//! clock; otherwise the answer is 401. The secret itself never crosses the wire. (A captured
//! request could be replayed within those five minutes by someone on the peer network; keep the
//! peer port on a private network.) The same `PeerClient`
//! (one pooled reqwest client, keep-alive, `TCP_NODELAY`) serves Raft replication and forwarding,
//! and no connection is dialled in `new_client` (openraft calls it often: pitfall P10).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use axum::Router;
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::LogId;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::store::LogDurability;
use crate::types::{Node, Request, Response};
use crate::{NodeId, Raft, TypeConfig};

const TS_HEADER: &str = "x-st2kv-peer-ts";
const SIG_HEADER: &str = "x-st2kv-peer-signature";
/// How far a signed request's timestamp may be from the receiver's clock.
const MAX_SKEW_SECS: i64 = 300;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn signer(secret: &[u8], path: &str, ts: i64, body: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(path.as_bytes());
    mac.update(b"\n");
    mac.update(ts.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

/// The signature of a peer request (hex HMAC-SHA256).
pub fn sign(secret: &[u8], path: &str, ts: i64, body: &[u8]) -> String {
    use hmac::Mac;
    hex_lower(&signer(secret, path, ts, body).finalize().into_bytes())
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Above this many bytes an AppendEntries is split (it must be sent, appended and synced within
/// one heartbeat interval: pitfall P5).
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// Why a forwarded command or read-index request did not succeed. Serializable, so the leader's
/// answer crosses the wire as-is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    /// The asked node is not the leader; the leader it knows of, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, Node)> },
    /// The leader could not confirm its leadership or commit in time (quorum lost).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The node could not be reached, or the exchange failed before an answer arrived.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The exchange failed after the request was sent: the outcome is unknown.
    #[error("peer did not answer in time: {0}")]
    Timeout(String),
    /// The leader's Raft stopped (storage failure or shutdown).
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The peer refused our credentials.
    #[error("peer refused the cluster secret")]
    Unauthorized,
    /// The request cannot succeed as asked (e.g. removing an unknown member).
    #[error("{0}")]
    Invalid(String),
}

/// A change of cluster membership, carried out on the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a node: first as a learner, promoted to voter once it has caught up.
    Add { id: NodeId, node: Node },
    /// Remove a voter or learner (the leader too).
    Remove { id: NodeId },
}

/// An HTTP client for everything node-to-node, cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: Option<Arc<str>>,
}

enum PostError {
    Unreachable(reqwest::Error),
    Timeout(String),
    Network(String),
    Unauthorized,
}

impl PeerClient {
    /// `local_ip`: the address outgoing peer connections come from (the node's own peer address,
    /// so peers, firewalls and tests can tell nodes apart); `None` lets the kernel choose.
    pub fn new(secret: Option<String>, local_ip: Option<std::net::IpAddr>) -> Self {
        let http = reqwest::Client::builder()
            .local_address(local_ip)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("reqwest client with static configuration");
        PeerClient { http, secret: secret.map(Arc::from) }
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PostError> {
        self.post_bytes(addr, path, encode(req), timeout).await
    }

    async fn post_bytes<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, PostError> {
        let signature = self.secret.as_ref().map(|s| {
            let ts = unix_now();
            (ts, sign(s.as_bytes(), path, ts, &body))
        });
        let mut rb = self.http.post(format!("http://{addr}{path}")).timeout(timeout).body(body);
        if let Some((ts, sig)) = signature {
            rb = rb.header(TS_HEADER, ts.to_string()).header(SIG_HEADER, sig);
        }
        let resp = rb.send().await.map_err(|e| {
            if e.is_connect() {
                PostError::Unreachable(e)
            } else if e.is_timeout() {
                PostError::Timeout(with_causes(&e))
            } else {
                PostError::Network(with_causes(&e))
            }
        })?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(PostError::Unauthorized);
        }
        if !resp.status().is_success() {
            return Err(PostError::Network(format!("{path} answered HTTP {}", resp.status())));
        }
        let bytes = resp.bytes().await.map_err(|e| {
            if e.is_timeout() {
                PostError::Timeout(with_causes(&e))
            } else {
                PostError::Network(with_causes(&e))
            }
        })?;
        decode(&bytes).map_err(|e| PostError::Network(format!("undecodable answer from {path}: {e}")))
    }

    /// Propose `req` on the node at `addr` (which should be the leader). Answers after the batch
    /// is committed and applied there.
    pub async fn forward_write(
        &self,
        addr: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        self.peer_call(addr, "/raft/write", req, timeout).await
    }

    /// Ask the node at `addr` (the leader) for a read index: a log index such that a state
    /// machine that has applied it reflects every write acknowledged before the call.
    pub async fn read_index(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Option<LogId<NodeId>>, PeerError> {
        self.peer_call(addr, "/raft/read_index", &(), timeout).await
    }

    /// Ask the node at `addr` (the leader) to carry out a membership change.
    pub async fn change_membership(
        &self,
        addr: &str,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        self.peer_call(addr, "/raft/membership", change, timeout).await
    }

    async fn peer_call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        match self.post::<Req, Result<Resp, PeerError>>(addr, path, req, timeout).await {
            Ok(r) => r,
            Err(PostError::Unreachable(e)) => Err(PeerError::Unreachable(e.to_string())),
            Err(PostError::Timeout(e)) => Err(PeerError::Timeout(e)),
            Err(PostError::Network(e)) => Err(PeerError::Timeout(e)),
            Err(PostError::Unauthorized) => Err(PeerError::Unauthorized),
        }
    }
}

/// openraft's network factory: hands out per-target handles sharing one [`PeerClient`].
#[derive(Clone)]
pub struct Network {
    client: PeerClient,
    durability: LogDurability,
}

impl Network {
    /// `durability`: this node's log, whose commit index goes out only once the log is on disk
    /// that far (see [`crate::store`]).
    pub fn new(client: PeerClient, durability: LogDurability) -> Self {
        Network { client, durability }
    }
}

pub struct Connection {
    client: PeerClient,
    target: NodeId,
    addr: String,
    durability: LogDurability,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        Connection {
            client: self.client.clone(),
            target,
            addr: node.rpc_addr.clone(),
            durability: self.durability.clone(),
        }
    }
}

impl Connection {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let _ = std::marker::PhantomData::<Req>;
        match self
            .client
            .post_bytes::<Result<Resp, RaftError<NodeId, E>>>(&self.addr, path, body, timeout)
            .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(PostError::Unreachable(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(PostError::Timeout(e)) | Err(PostError::Network(e)) => {
                Err(RPCError::Network(NetworkError::new(&std::io::Error::other(e))))
            }
            Err(PostError::Unauthorized) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("peer refused the cluster secret"),
            ))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        // A follower applies what the leader says is committed. This leader counted its own copy
        // towards that before the copy was on disk, so the claim waits until it is: otherwise a
        // power loss here could leave a follower having applied an entry a new leader never had.
        if let Some(commit) = rpc.leader_commit {
            self.durability
                .through(commit.index)
                .await
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        }
        let n = rpc.entries.len() as u64;
        let body = encode(&rpc);
        if body.len() > MAX_APPEND_BYTES && n > 1 {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(n / 2)));
        }
        self.rpc::<AppendEntriesRequest<TypeConfig>, _, _>("/raft/append", body, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc::<InstallSnapshotRequest<TypeConfig>, _, _>(
            "/raft/snapshot",
            encode(&rpc),
            option.hard_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.rpc::<VoteRequest<NodeId>, _, _>("/raft/vote", encode(&rpc), option.hard_ttl()).await
    }
}

// ---------------------------------------------------------------------------------------------
// Server side

/// One batch a follower forwarded, and where its answer goes.
pub type Forwarded = (Request, tokio::sync::oneshot::Sender<Result<Response, PeerError>>);

/// Where the peer listener hands batches forwarded by followers while this node leads: the
/// node's group commit, which carries them in its own next entry ([`Request::also`]) rather
/// than proposing an entry per forwarded batch.
pub type ForwardSink = tokio::sync::mpsc::Sender<Forwarded>;

#[derive(Clone)]
struct PeerState {
    raft: Raft,
    durability: LogDurability,
    secret: Option<Arc<str>>,
    sink: Option<ForwardSink>,
}

/// The peer listener's routes. Mount them on their own listener, never on the public API.
/// Without a `sink` each forwarded batch is proposed as an entry of its own.
/// `durability`: this node's log; a follower answers an append only once what it wrote is on disk.
pub fn peer_router(
    raft: Raft,
    durability: LogDurability,
    secret: Option<String>,
    sink: Option<ForwardSink>,
) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/write", post(write))
        .route("/raft/read_index", post(read_index))
        .route("/raft/membership", post(membership))
        // Snapshot chunks and large appends exceed axum's 2 MB default (pitfall P6).
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(PeerState { raft, durability, secret: secret.map(Arc::from), sink })
}

fn authorized(state: &PeerState, headers: &HeaderMap, path: &str, body: &[u8]) -> bool {
    match &state.secret {
        None => true,
        Some(secret) => verify(secret.as_bytes(), headers, path, body),
    }
}

/// Whether `headers` carry a fresh, valid signature of (`path`, body) under `secret`.
fn verify(secret: &[u8], headers: &HeaderMap, path: &str, body: &[u8]) -> bool {
    use hmac::Mac;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (header(TS_HEADER).and_then(|t| t.parse::<i64>().ok()), header(SIG_HEADER))
    else {
        return false;
    };
    if (unix_now() - ts).abs() > MAX_SKEW_SECS {
        return false;
    }
    let Some(sig) = decode_hex(sig) else { return false };
    // `verify_slice` compares in constant time.
    signer(secret, path, ts, body).verify_slice(&sig).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn bincode_reply<T: Serialize>(v: &T) -> HttpResponse {
    ([("content-type", "application/octet-stream")], encode(v)).into_response()
}

macro_rules! guard {
    ($state:expr, $headers:expr, $body:expr, $path:expr, $ty:ty) => {{
        if !authorized(&$state, &$headers, $path, &$body) {
            return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
        }
        match decode::<$ty>(&$body) {
            Ok(v) => v,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("undecodable body: {e}")).into_response(),
        }
    }};
}

async fn append(State(s): State<PeerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    let req = guard!(s, headers, body, "/raft/append", AppendEntriesRequest<TypeConfig>);
    let result = s.raft.append_entries(req).await;
    // openraft heard of the append as flushed once it was written; the leader counts this answer
    // towards a quorum, so it goes out only once the entries are on disk.
    if let Err(e) = s.durability.written().await {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    bincode_reply(&result)
}

async fn vote(State(s): State<PeerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    let req = guard!(s, headers, body, "/raft/vote", VoteRequest<NodeId>);
    bincode_reply(&s.raft.vote(req).await)
}

async fn snapshot(State(s): State<PeerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    let req = guard!(s, headers, body, "/raft/snapshot", InstallSnapshotRequest<TypeConfig>);
    bincode_reply(&s.raft.install_snapshot(req).await)
}

async fn write(State(s): State<PeerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    let req = guard!(s, headers, body, "/raft/write", Request);
    // Only while this node leads: a node that does not would forward the batch on, and two nodes
    // that each believed the other led would hold each other's batches until they timed out.
    let leading = {
        let m = s.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(m.id)
    };
    match s.sink.as_ref().filter(|_| leading) {
        Some(sink) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let answer = match sink.send((req, tx)).await {
                Ok(()) => rx.await.unwrap_or_else(|_| {
                    Err(PeerError::Timeout(
                        "the leader stopped before answering; the batch may have applied".into(),
                    ))
                }),
                Err(tokio::sync::mpsc::error::SendError((req, _))) => propose_local(&s.raft, req).await,
            };
            bincode_reply(&answer)
        }
        None => bincode_reply(&propose_local(&s.raft, req).await),
    }
}

async fn read_index(State(s): State<PeerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    guard!(s, headers, body, "/raft/read_index", ());
    let answer = match s.raft.get_read_log_id().await {
        Ok((read, _applied)) => Ok(read),
        Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(PeerError::NotLeader { leader: f.leader_id.zip(f.leader_node) })
        }
        Err(RaftError::APIError(e)) => Err(PeerError::Unavailable(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(PeerError::Fatal(e.to_string())),
    };
    bincode_reply(&answer)
}

async fn membership(State(s): State<PeerState>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    let change = guard!(s, headers, body, "/raft/membership", MembershipChange);
    bincode_reply(&change_membership_local(&s.raft, change, Duration::from_secs(60)).await)
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> PeerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            PeerError::NotLeader { leader: f.leader_id.zip(f.leader_node) }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => PeerError::Invalid(e.to_string()),
        RaftError::Fatal(e) => PeerError::Fatal(e.to_string()),
    }
}

/// Carry out a membership change on this node, which must be the leader. An added node joins as
/// a learner and is promoted to voter only once its matched log index has reached the leader's
/// last log index (openraft's blocking `add_learner` returns earlier: pitfall P8), within
/// `catch_up`.
pub async fn change_membership_local(
    raft: &Raft,
    change: MembershipChange,
    catch_up: Duration,
) -> Result<(), PeerError> {
    use std::collections::BTreeSet;
    let voters = |raft: &Raft| -> BTreeSet<NodeId> {
        raft.metrics().borrow().membership_config.membership().voter_ids().collect()
    };
    match change {
        MembershipChange::Add { id, node } => {
            if voters(raft).contains(&id) {
                return Ok(());
            }
            raft.add_learner(id, node, false).await.map_err(write_error)?;
            let deadline = tokio::time::Instant::now() + catch_up;
            loop {
                let caught_up = {
                    let m = raft.metrics().borrow().clone();
                    let target = m.last_log_index;
                    let matched =
                        m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
                    matched.is_some() && matched >= target
                };
                if caught_up {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(PeerError::Unavailable(format!(
                        "node {id} joined as a learner but did not catch up within {catch_up:?}; it stays a learner"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut v = voters(raft);
            v.insert(id);
            raft.change_membership(v, false).await.map_err(write_error)?;
            Ok(())
        }
        MembershipChange::Remove { id } => {
            let m = raft.metrics().borrow().membership_config.clone();
            let membership = m.membership();
            if membership.get_node(&id).is_none() {
                return Err(PeerError::Invalid(format!("node {id} is not a member of this cluster")));
            }
            let mut v = voters(raft);
            if v.remove(&id) {
                if v.is_empty() {
                    return Err(PeerError::Invalid("cannot remove the last voter".into()));
                }
                raft.change_membership(v, false).await.map_err(write_error)?;
            } else {
                let remove = openraft::ChangeMembers::RemoveNodes([id].into_iter().collect());
                raft.change_membership(remove, false).await.map_err(write_error)?;
            }
            Ok(())
        }
    }
}

/// Propose `req` through this node's Raft, translating openraft's errors into [`PeerError`].
pub async fn propose_local(raft: &Raft, req: Request) -> Result<Response, PeerError> {
    match raft.client_write(req).await {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(PeerError::NotLeader { leader: f.leader_id.zip(f.leader_node) })
        }
        Err(RaftError::APIError(e)) => Err(PeerError::Unavailable(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(PeerError::Fatal(e.to_string())),
    }
}

/// An error with its chain of causes: reqwest's own message ("error sending request for url")
/// leaves out whether it was a timeout, a reset or a refused connection.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        source = cause.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TS_HEADER, ts.to_string().parse().unwrap());
        h.insert(SIG_HEADER, sig.parse().unwrap());
        h
    }

    fn check(secret: &str, h: &HeaderMap, path: &str, body: &[u8]) -> bool {
        verify(secret.as_bytes(), h, path, body)
    }

    #[test]
    fn a_signature_binds_secret_path_time_and_body() {
        let now = unix_now();
        let sig = sign(b"s3cret", "/raft/append", now, b"body");
        assert!(check("s3cret", &headers(now, &sig), "/raft/append", b"body"));
        assert!(!check("other", &headers(now, &sig), "/raft/append", b"body"), "wrong secret");
        assert!(!check("s3cret", &headers(now, &sig), "/raft/vote", b"body"), "another route");
        assert!(!check("s3cret", &headers(now, &sig), "/raft/append", b"bodY"), "tampered body");
        let old = now - MAX_SKEW_SECS - 1;
        let stale = sign(b"s3cret", "/raft/append", old, b"body");
        assert!(!check("s3cret", &headers(old, &stale), "/raft/append", b"body"), "too old");
        assert!(decode_hex("zz").is_none());
        assert!(!check("s3cret", &headers(now, "not-hex"), "/raft/append", b"body"));
    }
}
