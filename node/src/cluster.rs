//! The node's side of consensus: group commit, leader forwarding, read barriers and the TTL
//! sweeper, on top of the `st2kv-raft` crate.
//!
//! **Writes.** Handlers call [`Cluster::propose`] with one [`Command`]. A batcher task drains the
//! queue into batches (at most `batch_max` commands; up to `batch_inflight` batches in flight),
//! gives the batch a random request id, and submits each batch as one Raft entry: locally on the
//! leader, or forwarded once to the leader's peer listener from a follower. While no leader is
//! known or reachable the batch is retried until `leader_wait` runs out; the request ids make a
//! retry of a batch that did apply harmless. Each caller gets its own op's outcome.
//!
//! **Reads.** [`Cluster::linearize`] returns once this node's state machine reflects every write
//! acknowledged before the call: on the leader through openraft's `ensure_linearizable` (a
//! heartbeat round to a quorum), on a follower by asking the leader for a read index and waiting
//! for the local apply to reach it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use st2kv_raft::network::{
    change_membership_local, propose_local, ForwardSink, Forwarded, MembershipChange, PeerClient, PeerError,
};
use st2kv_raft::store::StateView;
use st2kv_raft::{Command, Node, Op, Outcome, Raft, Request, Response};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::ApiError;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Default)]
struct ReadQueue {
    running: bool,
    waiters: Vec<oneshot::Sender<Result<(), ApiError>>>,
}

/// One caller's commands: they travel in the same entry, in order, and so apply atomically.
struct Pending {
    cmds: Vec<(Command, Vec<st2kv_raft::Guard>)>,
    tx: oneshot::Sender<Result<Vec<Outcome>, ApiError>>,
}

/// Shared handle to this node's Raft, its state and its peers.
pub struct Cluster {
    pub id: u64,
    /// Readers waiting for the next barrier round. A std mutex: held briefly, never across await.
    reads: std::sync::Mutex<ReadQueue>,
    pub raft: Raft,
    pub view: StateView,
    peers: PeerClient,
    leader_wait: Duration,
    queue: mpsc::Sender<Pending>,
    /// Batches followers forwarded to this node while it leads (see [`Cluster::forward_sink`]).
    forwarded: mpsc::Sender<Forwarded>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Free MiB in the data dir's file system (updated by [`disk_watch`]), and the reserve.
    pub free_mb: std::sync::atomic::AtomicU64,
    pub min_free_mb: std::sync::atomic::AtomicU64,
}

/// Tunables of the write path.
pub struct Batching {
    pub max_ops: usize,
    pub inflight: usize,
}

impl Cluster {
    pub fn start(
        id: u64,
        raft: Raft,
        view: StateView,
        peers: PeerClient,
        leader_wait: Duration,
        batching: Batching,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Cluster> {
        let (queue, rx) = mpsc::channel(batching.max_ops.max(1) * batching.inflight.max(1) * 4);
        let (forwarded, fwd_rx) = mpsc::channel(1024);
        let cluster = Arc::new(Cluster {
            id,
            reads: Default::default(),
            raft,
            view,
            peers,
            leader_wait,
            queue,
            forwarded,
            metrics,
            free_mb: std::sync::atomic::AtomicU64::new(u64::MAX),
            min_free_mb: std::sync::atomic::AtomicU64::new(0),
        });
        tokio::spawn(batcher(Arc::downgrade(&cluster), rx, fwd_rx, batching));
        cluster
    }

    /// Where the peer listener puts batches forwarded by followers: they travel in this node's
    /// next entry, next to its own commands, instead of each becoming an entry.
    pub fn forward_sink(&self) -> ForwardSink {
        self.forwarded.clone()
    }

    /// The leader this node currently believes in, with its address.
    pub fn leader(&self) -> Option<(u64, Node)> {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Replicate `cmd` and return what applying it did.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ApiError> {
        self.propose_guarded(cmd, Vec::new()).await
    }

    /// [`Cluster::propose`], applied only while `guards` hold (see [`st2kv_raft::Op::guards`]).
    pub async fn propose_guarded(
        &self,
        cmd: Command,
        guards: Vec<st2kv_raft::Guard>,
    ) -> Result<Outcome, ApiError> {
        let mut outcomes = self.propose_all(vec![(cmd, guards)]).await?;
        outcomes.pop().ok_or_else(|| ApiError::Internal("a proposal came back without its outcome".into()))
    }

    /// Replicate several commands in one Raft entry: they are applied together, in order, or not
    /// at all (each still subject to its own condition and guards). One outcome per command.
    pub async fn propose_all(
        &self,
        cmds: Vec<(Command, Vec<st2kv_raft::Guard>)>,
    ) -> Result<Vec<Outcome>, ApiError> {
        use std::sync::atomic::Ordering::Relaxed;
        let (free, min) = (self.free_mb.load(Relaxed), self.min_free_mb.load(Relaxed));
        // A purge of expired keys frees space: let it through.
        if free < min && !cmds.iter().all(|(c, _)| matches!(c, Command::PurgeExpired { .. })) {
            return Err(ApiError::InsufficientStorage(format!(
                "Node {} has {free} MiB free in its data dir, below its reserve of {min} MiB: writes are refused until space is freed.",
                self.id
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Pending { cmds, tx })
            .await
            .map_err(|_| ApiError::Unavailable("This node is shutting down.".into()))?;
        rx.await.map_err(|_| ApiError::Unavailable("This node is shutting down.".into()))?
    }

    /// Submit one batch, forwarding to the leader and retrying until `leader_wait` runs out.
    async fn submit(&self, req: Request) -> Result<Response, ApiError> {
        let deadline = Instant::now() + self.leader_wait;
        let mut hint: Option<(u64, Node)> = None;
        let mut maybe_applied = false;
        let mut last;
        let mut pause = Duration::from_millis(10);
        loop {
            let remaining =
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(200));
            let result = match self.leader().or(hint.take()) {
                Some((id, _)) if id == self.id => {
                    match tokio::time::timeout(remaining, propose_local(&self.raft, req.clone())).await {
                        Ok(r) => r,
                        Err(_) => Err(PeerError::Timeout("the entry was not committed in time".into())),
                    }
                }
                Some((id, node)) => {
                    self.metrics.forwarded.inc();
                    let r = self.peers.forward_write(&node.rpc_addr, &req, remaining).await;
                    if let Err(e) = &r {
                        tracing::debug!(leader = id, error = %e, "forwarding a batch failed");
                    }
                    // The leader's Raft stopping (it is shutting down) is not ours: retry, and
                    // the next leader takes the batch (its request ids keep that exactly-once).
                    r.map_err(|e| match e {
                        PeerError::Fatal(m) => PeerError::Unavailable(format!("the leader is stopping: {m}")),
                        other => other,
                    })
                }
                None => Err(PeerError::NotLeader { leader: None }),
            };
            match result {
                Ok(resp) => return Ok(resp),
                Err(PeerError::NotLeader { leader }) => {
                    hint = leader.filter(|(id, _)| *id != self.id);
                    last = "no leader is known (an election may be in progress)".into();
                }
                Err(PeerError::Timeout(e)) => {
                    maybe_applied = true;
                    last = e;
                }
                Err(PeerError::Unreachable(e)) | Err(PeerError::Unavailable(e)) => last = e,
                Err(PeerError::Fatal(e)) => {
                    return Err(ApiError::Unavailable(format!("This node's Raft has stopped: {e}")))
                }
                Err(PeerError::Unauthorized) => {
                    return Err(ApiError::Internal("the leader refused this node's cluster secret".into()))
                }
                Err(PeerError::Invalid(e)) => return Err(ApiError::Internal(e)),
            }
            if Instant::now() >= deadline {
                return Err(if maybe_applied {
                    ApiError::OutcomeUnknown(format!(
                        "The write was sent to the leader but not confirmed in time ({last}); it may or may not have been applied."
                    ))
                } else {
                    ApiError::Unavailable(format!(
                        "No leader is available to accept writes ({last}); retry shortly."
                    ))
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Carry out a membership change on the leader (forwarded there from a follower).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ApiError> {
        let deadline = Instant::now() + self.leader_wait;
        let mut hint: Option<(u64, Node)> = None;
        loop {
            let result = match self.leader().or(hint.take()) {
                Some((id, _)) if id == self.id => {
                    change_membership_local(&self.raft, change.clone(), Duration::from_secs(60)).await
                }
                Some((_, node)) => {
                    self.peers.change_membership(&node.rpc_addr, &change, Duration::from_secs(75)).await
                }
                None => Err(PeerError::NotLeader { leader: None }),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(PeerError::NotLeader { leader }) if Instant::now() < deadline => {
                    hint = leader.filter(|(id, _)| *id != self.id);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(PeerError::Invalid(e)) => return Err(ApiError::BadRequest(e)),
                Err(e) => {
                    return Err(ApiError::Unavailable(format!("The membership change did not complete: {e}")))
                }
            }
        }
    }

    /// Wait until this node's state machine reflects every write acknowledged before the call.
    ///
    /// Concurrent callers share barrier rounds: a caller joins the next round to *start* after it
    /// arrived (never one already under way, whose read index could predate a write the caller
    /// saw acknowledged), so under load one quorum round serves many reads.
    pub async fn linearize(self: &Arc<Self>) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut r = self.reads.lock().expect("read queue lock");
            r.waiters.push(tx);
            !std::mem::replace(&mut r.running, true)
        };
        if start_driver {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    let waiters = {
                        let mut r = me.reads.lock().expect("read queue lock");
                        if r.waiters.is_empty() {
                            r.running = false;
                            return;
                        }
                        std::mem::take(&mut r.waiters)
                    };
                    let result = me.barrier_round().await;
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            });
        }
        rx.await.map_err(|_| ApiError::Unavailable("This node is shutting down.".into()))?
    }

    /// One read barrier: leader confirmation or a read index from the leader, then local apply.
    async fn barrier_round(&self) -> Result<(), ApiError> {
        let deadline = Instant::now() + self.leader_wait;
        let mut hint: Option<(u64, Node)> = None;
        let mut last = String::from("no leader is known");
        let mut pause = Duration::from_millis(10);
        loop {
            let remaining =
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(200));
            match self.leader().or(hint.take()) {
                Some((id, _)) if id == self.id => {
                    match tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                            hint = f.leader_id.zip(f.leader_node).filter(|(id, _)| *id != self.id);
                        }
                        Ok(Err(e)) => last = e.to_string(),
                        Err(_) => last = "leadership could not be confirmed in time".into(),
                    }
                }
                Some((_, node)) => match self.peers.read_index(&node.rpc_addr, remaining).await {
                    Ok(index) => {
                        let wait = self.raft.wait(Some(remaining));
                        return match wait.applied_index_at_least(index.map(|l| l.index), "read barrier").await {
                            Ok(_) => Ok(()),
                            Err(e) => Err(ApiError::Unavailable(format!(
                                "This node could not catch up with the leader in time ({e}); retry, or read with consistency=stale."
                            ))),
                        };
                    }
                    Err(PeerError::NotLeader { leader }) => hint = leader.filter(|(id, _)| *id != self.id),
                    Err(e) => last = e.to_string(),
                },
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(ApiError::Unavailable(format!(
                    "No leader is available to serve a linearizable read ({last}); retry shortly, or read with consistency=stale."
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

/// Group commit: drain waiting commands, and batches forwarded by followers, into batches and
/// submit each as one Raft entry.
async fn batcher(
    cluster: std::sync::Weak<Cluster>,
    mut rx: mpsc::Receiver<Pending>,
    mut fwd_rx: mpsc::Receiver<Forwarded>,
    cfg: Batching,
) {
    let slots = Arc::new(Semaphore::new(cfg.inflight.max(1)));
    loop {
        let mut local = Vec::new();
        let mut carried = Vec::new();
        tokio::select! {
            p = rx.recv() => match p {
                Some(p) => local.push(p),
                None => return,
            },
            Some(f) = fwd_rx.recv() => carried.push(f),
        }
        // Waiting for a slot is what lets a batch grow while earlier ones are in flight.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut ops: usize = local.iter().map(|p| p.cmds.len()).sum::<usize>()
            + carried.iter().map(|(r, _)| r.ops.len()).sum::<usize>();
        while ops < cfg.max_ops {
            match fwd_rx.try_recv() {
                Ok(f) => {
                    ops += f.0.ops.len();
                    carried.push(f);
                }
                Err(_) => break,
            }
        }
        while ops < cfg.max_ops {
            match rx.try_recv() {
                Ok(p) => {
                    ops += p.cmds.len();
                    local.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(cluster) = cluster.upgrade() else { return };
        tokio::spawn(async move {
            let mut txs = Vec::with_capacity(local.len());
            let mut own = Vec::with_capacity(ops);
            for p in local {
                txs.push((p.tx, p.cmds.len()));
                for (cmd, guards) in p.cmds {
                    own.push(Op { cmd, guards });
                }
            }
            let (also, fwd_txs): (Vec<Request>, Vec<_>) = carried.into_iter().unzip();
            let n = own.len() + also.iter().map(|r| r.ops.len()).sum::<usize>();
            let req = Request { id: Some(rand::random()), proposed_at_ms: now_ms(), ops: own, also };
            let started = Instant::now();
            let result = cluster.submit(req).await;
            cluster.metrics.observe_proposal(n, started.elapsed());
            match result {
                Ok(resp) => {
                    let mut outcomes = resp.outcomes.into_iter();
                    for (tx, k) in txs {
                        let _ = tx.send(Ok(outcomes.by_ref().take(k).collect()));
                    }
                    for (tx, part) in fwd_txs.into_iter().zip(resp.also) {
                        let _ = tx.send(Ok(part));
                    }
                }
                Err(e) => {
                    for tx in fwd_txs {
                        let _ = tx.send(Err(for_follower(&e)));
                    }
                    for (tx, _) in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}

/// How a failed batch is reported to the follower that forwarded part of it: it retries (the
/// request id makes that safe) or gives its client the same answer.
fn for_follower(e: &ApiError) -> PeerError {
    match e {
        ApiError::OutcomeUnknown(m) => PeerError::Timeout(m.clone()),
        other => PeerError::Unavailable(other.to_string()),
    }
}

/// On the leader, propose a purge whenever some key has expired. Followers only watch.
pub async fn ttl_sweeper(cluster: Arc<Cluster>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !cluster.is_leader() {
            continue;
        }
        let now = now_ms();
        match cluster.view.has_expired(now) {
            Ok(false) => {}
            Ok(true) => match cluster.propose(Command::PurgeExpired { now_ms: now }).await {
                Ok(Outcome::Purged { count }) => tracing::debug!(count, "purged expired keys"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging expired keys failed; will retry"),
            },
            Err(e) => tracing::warn!(error = %e, "reading the expiry index failed"),
        }
    }
}

/// Build a snapshot (and so let openraft purge the log behind it) once `every` entries were
/// applied since the last one *and* the state has changed enough to be worth copying again
/// ([`StateView::snapshot_due`]). Every node decides for itself, as openraft's own policy would.
pub async fn snapshot_trigger(cluster: Arc<Cluster>, every: u64, check: Duration) {
    let mut tick = tokio::time::interval(check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (applied, snapshot) = {
            let m = cluster.raft.metrics();
            let m = m.borrow();
            (m.last_applied.map(|l| l.index).unwrap_or(0), m.snapshot.map(|l| l.index).unwrap_or(0))
        };
        if applied.saturating_sub(snapshot) < every.max(1) {
            continue;
        }
        match cluster.view.snapshot_due() {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the snapshot's weight failed");
                continue;
            }
        }
        if let Err(e) = cluster.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "could not trigger a snapshot");
            continue;
        }
        // openraft ignores a trigger while a build runs; wait for this one before looking again.
        let _ = cluster
            .raft
            .wait(Some(Duration::from_secs(600)))
            .metrics(|m| m.snapshot.map(|l| l.index).unwrap_or(0) > snapshot, "snapshot built")
            .await;
    }
}

/// Watch the free space of the data dir's file system, for [`Cluster::propose`]'s reserve check.
pub async fn disk_watch(cluster: Arc<Cluster>, dir: std::path::PathBuf, min_free_mb: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    cluster.min_free_mb.store(min_free_mb, Relaxed);
    let mut warned = false;
    loop {
        if let Some(free) = free_mb(&dir) {
            cluster.free_mb.store(free, Relaxed);
            if free < min_free_mb && !warned {
                tracing::error!(free_mb = free, min_free_mb, "data dir is low on space: refusing writes");
            } else if free >= min_free_mb && warned {
                tracing::info!(free_mb = free, "data dir has space again: accepting writes");
            }
            warned = free < min_free_mb;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn free_mb(dir: &std::path::Path) -> Option<u64> {
    st2kv_raft::wal::free_bytes(dir).map(|b| b / (1024 * 1024))
}
