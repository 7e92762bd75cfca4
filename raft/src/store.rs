//! The Raft log store and the sled state machine (openraft storage-v2), plus [`StateView`], the
//! read-only handle the node serves reads from.
//!
//! The log's entries are in append-only files under `<data-dir>/wal` ([`crate::wal`]). One
//! `sled::Db` per node holds three trees: `raft_meta` (vote, committed, last purged), `sm` (the
//! state machine, see [`crate::layout`]) and `snapshot` (the last built or received snapshot).
//! Because a sled flush persists the whole Db, one flush covers everything written to it before.
//!
//! Durability rules (see ../shared/openraft-notes.md §2):
//! - `append` writes the entries to the log files and queues them for the sync thread, which
//!   makes many appends durable with one `fdatasync`. openraft 0.9 replicates nothing until it
//!   hears that the leader's own append is flushed, so a batch that changes no membership is
//!   reported flushed as soon as it is written: the leader's sync then overlaps the followers'.
//!   Nothing that depends on the entries being on this node's disk happens before they are,
//!   which the log's durability mark ([`crate::wal::Durability`]) enforces in four places:
//!   a follower answers an append only once what it wrote is durable (peer server); a leader
//!   sends a commit index only once its log is durable that far (peer client); `apply` waits
//!   until the entries it applies are durable here; `save_committed` never records an index
//!   beyond the durable log. So an acknowledged write is on a majority's disks, and no client
//!   or follower sees an entry that a power loss on the leader could take back. Membership
//!   changes take effect when appended, so openraft hears of those only after the sync.
//! - `truncate` completes after its sync; `save_vote` and `purge` (which write sled) also after
//!   [`Disk::sync`], sled's flush plus, in durable mode, `fdatasync` of sled's file. All syncs go
//!   through one thread, in order.
//! - `apply` does **not** sync, and writes a batch's records one by one, the applied log id
//!   last (sled 0.34's atomic batches cost two hand-offs of its IO buffer to a thread pool per
//!   apply). A crash can therefore leave an apply half done. `raft_meta` says whether the state
//!   machine is trustworthy: `running` from open until [`Closer::close`] marks it `clean` at a
//!   graceful shutdown (after the last apply, and refusing any later one). A store found
//!   `running` at open did not stop cleanly; whether an apply was cut short is told by the
//!   `applying` mark, written to `raft_meta` before an apply's records (the applied log id comes
//!   after them), since sled recovers a prefix of its log. Only if one was is the state machine
//!   rebuilt from the current snapshot (or from nothing), and openraft applies the log again
//!   from there. That needs the log from the snapshot on, which holds because openraft purges
//!   only what a snapshot covers.
//!   Where no snapshot and log could rebuild the state (a store seeded from a backup, or an
//!   earlier version's store with data and no snapshot) applies stay atomic sled batches until
//!   the first snapshot is adopted.
//! - Readers see each record change as it is written: a batch of several keys can be seen half
//!   applied, each key whole. Linearizable reads are unaffected (they wait for the read index to
//!   be applied, and every later apply is of committed entries).

// openraft's trait methods return its `StorageError` (large by design); our helpers share it.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};

use crate::codec::{decode, encode};
use crate::layout::{self, *};
use crate::types::*;
use crate::wal::Wal;
use crate::{NodeId, TypeConfig};

/// How long the state machine remembers a request id, measured on the proposers' clocks.
/// Forwarding retries a proposal for at most a few seconds; this leaves a wide margin.
pub const DEDUP_WINDOW_MS: i64 = 120_000;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Errors opening or reading the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt stored data: {0}")]
    Corrupt(#[from] bincode::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The node's one sled database and the means to make its writes durable.
pub struct Disk {
    db: sled::Db,
    /// sled's log file, opened for `fdatasync`; `None` when durable mode is off.
    log_file: Option<Arc<std::fs::File>>,
}

impl Disk {
    /// Flush every tree, then (durable mode) `fdatasync` sled's file. Runs on the blocking pool.
    pub async fn sync(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.sync_blocking()).await.map_err(std::io::Error::other)?
    }

    /// [`Disk::sync`] on the calling thread.
    pub fn sync_blocking(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        if let Some(f) = &self.log_file {
            f.sync_data()?;
        }
        Ok(())
    }
}

/// Everything [`open`] returns: the two openraft stores and the read view.
pub struct Store {
    /// The shared database, for a final sync at shutdown.
    pub disk: Arc<Disk>,
    pub log: LogStore,
    pub state_machine: StateMachine,
    /// How far this node's log is on disk, for the peer network (see [`LogDurability`]).
    pub durability: LogDurability,
    /// Marks the state machine closed cleanly at shutdown (see [`Closer`]).
    pub closer: Closer,
    pub view: StateView,
    /// Every key change this node applies, in apply order (see [`KeyChange`]). In memory only:
    /// a subscriber that falls more than a buffer behind, or a restart, loses changes.
    pub changes: tokio::sync::broadcast::Sender<KeyChange>,
}

/// Open the log files under `dir/wal`, first moving into them a log that an earlier version kept
/// in sled's `raft_log` tree (the tree is emptied only once the files are durable; if that was
/// interrupted, the move starts over).
fn open_wal(dir: &Path, db: &sled::Db, meta: &sled::Tree, durable: bool) -> Result<Wal, StoreError> {
    let purged: Option<LogId<NodeId>> =
        read_meta(meta, LAST_PURGED).map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
    let wal_dir = dir.join("wal");
    let had_old = db.tree_names().iter().any(|n| n.as_ref() == b"raft_log");
    if had_old {
        let old = db.open_tree("raft_log")?;
        if wal_dir.exists() {
            std::fs::remove_dir_all(&wal_dir)?;
        }
        let wal = Wal::open(&wal_dir, purged.map(|l| l.index), durable)?;
        let mut chunk = Vec::new();
        for item in old.iter() {
            let (_, v) = item?;
            let entry: Entry<TypeConfig> = decode(&v)?;
            if purged.is_none() || purged.is_some_and(|p| entry.log_id.index > p.index) {
                chunk.push(entry);
            }
            if chunk.len() >= 1024 {
                wal.append(&chunk)?;
                chunk.clear();
            }
        }
        wal.append(&chunk)?;
        wal.sync()?;
        drop(old);
        db.drop_tree("raft_log")?;
        db.flush()?;
        tracing::info!("moved the raft log from sled into {}", wal_dir.display());
    }
    let purged = purged.map(|l| l.index);
    Ok(if durable {
        Wal::open_with_spares(&wal_dir, purged, crate::wal::SEGMENT_BYTES)?
    } else {
        Wal::open(&wal_dir, purged, false)?
    })
}

/// Count the `k` records once if the tree has no count yet (a store of an earlier version, or
/// one just seeded); from then on every apply keeps the count.
fn ensure_key_count(sm: &sled::Tree) -> Result<(), StoreError> {
    if sm.get(META_KEYS)?.is_none() {
        let n = sm.scan_prefix([KV]).count() as u64;
        sm.insert(META_KEYS, encode(&n))?;
    }
    Ok(())
}

/// `raft_meta`: [`SM_RUNNING`] while a process may be applying, [`SM_CLEAN`] once one closed
/// the state machine (see the module's rules); absent in stores of earlier versions.
const SM_STATE: &[u8] = b"sm_state";
const SM_RUNNING: &[u8] = b"running";
const SM_CLEAN: &[u8] = b"clean";
/// `raft_meta`: present while the state machine may hold state that its snapshot and log could
/// not rebuild (a store seeded from a backup, or one from an earlier version with data but no
/// snapshot). Applies are then atomic batches, until the first snapshot is adopted.
const SM_ATOMIC: &[u8] = b"sm_atomic";

/// `raft_meta`: the last log id of the apply (or install, or rebuild) under way, written before
/// any of its records. Equal to the state machine's applied log id once it is done.
const APPLYING: &[u8] = b"applying";
/// What [`APPLYING`] says while a rebuild or an install is under way: matches no applied log id.
const REBUILDING: &[u8] = b"rebuilding";

/// Whether an apply, install or rebuild was cut short. sled recovers a prefix of its log (its
/// recovery stops at the first torn write; its own atomic batches rest on that), and [`APPLYING`]
/// is written before an apply's records and the applied log id after them, in the same database:
/// if any of an apply's records survived, the mark did, and it differs from the applied log id
/// unless the last one survived too. No mark: no apply of this version ever ran.
fn torn_apply(meta: &sled::Tree, sm: &sled::Tree) -> Result<bool, StoreError> {
    Ok(match meta.get(APPLYING)? {
        None => false,
        Some(mark) => sm.get(META_APPLIED)?.as_deref() != Some(mark.as_ref()),
    })
}

/// Make the state machine fit to apply to, and mark it running (the caller syncs that before any
/// apply). If an unclean stop cut an apply short it is rebuilt from the snapshot; returns whether
/// applies must be atomic.
fn prepare_state_machine(
    db: &sled::Db,
    meta: &sled::Tree,
    snap: &sled::Tree,
    snap_dir: &Path,
    wal: &Wal,
) -> Result<(sled::Tree, bool), StoreError> {
    let has_snapshot = snap.get(SNAP_FILE)?.is_some();
    let mut sm = db.open_tree("sm")?;
    match meta.get(SM_STATE)?.as_deref() {
        Some(SM_CLEAN) => {}
        Some(_) if meta.get(SM_ATOMIC)?.is_none() && torn_apply(meta, &sm)? => {
            // Dropping the tree is far cheaper than deleting its records one by one.
            meta.insert(APPLYING, REBUILDING)?;
            drop(sm);
            db.drop_tree("sm")?;
            sm = db.open_tree("sm")?;
            rebuild_state_machine(&sm, snap, snap_dir, wal)?;
            match sm.get(META_APPLIED)? {
                Some(applied) => meta.insert(APPLYING, applied)?,
                None => meta.remove(APPLYING)?,
            };
        }
        Some(_) if meta.get(SM_ATOMIC)?.is_none() => {
            tracing::info!(
                "the node did not stop cleanly, but no apply was cut short: the state machine is whole"
            );
        }
        Some(_) => {}
        None => {
            // An earlier version's store (every apply was atomic) or a brand-new one.
            let holds_data = sm.iter().keys().any(|k| k.map_or(true, |k| k.as_ref() != META_KEYS));
            if holds_data && !has_snapshot {
                meta.insert(SM_ATOMIC, &[])?;
            }
        }
    }
    ensure_key_count(&sm)?;
    meta.insert(SM_STATE, SM_RUNNING)?;
    Ok((sm, meta.get(SM_ATOMIC)?.is_some()))
}

/// Fill the (empty) state machine from the current snapshot (or leave it empty, without one);
/// openraft then applies the log from there. Only after an unclean stop cut an apply short.
fn rebuild_state_machine(
    sm: &sled::Tree,
    snap: &sled::Tree,
    snap_dir: &Path,
    wal: &Wal,
) -> Result<(), StoreError> {
    let meta: Option<SnapshotMeta<NodeId, Node>> = snap.get(SNAP_META)?.map(|m| decode(&m)).transpose()?;
    let file = snap.get(SNAP_FILE)?.map(|n| String::from_utf8_lossy(&n).into_owned());
    let from = meta.as_ref().and_then(|m| m.last_log_id).map_or(0, |l| l.index);
    if let Some((first, _)) = wal.bounds() {
        if first.index > from + 1 {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "the state machine needs rebuilding after an unclean stop, but the log starts at {} \
                 and the snapshot ends at {from}",
                first.index
            ))));
        }
    }
    let started = std::time::Instant::now();
    let mut keys = 0u64;
    if let (Some(meta), Some(file)) = (meta, file) {
        let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(snap_dir.join(file))?);
        (_, _, keys) = read_snapshot_pairs(reader, |k, v| {
            sm.insert(k, v)?;
            Ok(())
        })?;
        if let Some(last) = meta.last_log_id {
            sm.insert(META_APPLIED, encode(&last))?;
        }
        sm.insert(META_MEMBERSHIP, encode(&meta.last_membership))?;
    }
    sm.insert(META_KEYS, encode(&keys))?;
    tracing::warn!(
        snapshot_index = from,
        keys,
        ms = started.elapsed().as_millis() as u64,
        "the node did not stop cleanly: its state machine was rebuilt from {}; the log is applied again from there",
        if from == 0 { "nothing (no snapshot yet)" } else { "its snapshot" }
    );
    Ok(())
}

/// Read a snapshot file's pairs, handing each to `put`; returns `(pairs, ops at the cut, keys)`.
fn read_snapshot_pairs(
    reader: impl std::io::Read,
    mut put: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
) -> Result<(u64, u64, u64), StoreError> {
    let (mut pairs, mut ops, mut keys) = (0u64, 0u64, 0u64);
    for pair in crate::codec::PairReader::new(reader)? {
        let (k, v) = pair?;
        if k == META_OPS {
            ops = decode(&v)?;
        }
        if k.first() == Some(&KV) {
            keys += 1;
        }
        pairs += 1;
        put(k, v)?;
    }
    Ok((pairs, ops, keys))
}

/// Closes the state machine at shutdown: waits for an apply under way, refuses later ones, and
/// records durably that the state machine is whole, so the next start trusts it as it is.
#[derive(Clone)]
pub struct Closer {
    disk: Arc<Disk>,
    meta: sled::Tree,
    gate: Arc<std::sync::Mutex<bool>>,
}

impl Closer {
    /// Close (after Raft has stopped). A node that stops without this has its state machine
    /// checked for an apply cut short at the next start (see `torn_apply`).
    pub async fn close(&self) -> std::io::Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.close_blocking()).await.map_err(std::io::Error::other)?
    }

    /// [`Closer::close`] on the calling thread.
    pub fn close_blocking(&self) -> std::io::Result<()> {
        let mut closed = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        *closed = true;
        // Everything applied is in sled before the mark; one sync makes both durable.
        self.meta.insert(SM_STATE, SM_CLEAN).map_err(std::io::Error::other)?;
        self.disk.sync_blocking()
    }
}

/// sled's page cache unless the caller says otherwise (sled's own default is 1 GiB): enough
/// to keep the pages of a million 100-byte keys hot (docs/architecture.md).
pub const DEFAULT_CACHE_MB: u64 = 320;

/// Open (or create) the store under `dir`. `durable` adds an `fdatasync` to every sync.
pub fn open(dir: &Path, durable: bool) -> Result<Store, StoreError> {
    open_with_cache(dir, durable, DEFAULT_CACHE_MB)
}

/// [`open`] with sled's page cache capped at `cache_mb` MiB.
pub fn open_with_cache(dir: &Path, durable: bool, cache_mb: u64) -> Result<Store, StoreError> {
    let path = dir.join("sled");
    let db = sled::Config::new()
        .path(&path)
        .cache_capacity(cache_mb.max(1) << 20)
        .flush_every_ms(Some(500))
        .open()?;
    let log_file = if durable {
        Some(Arc::new(std::fs::OpenOptions::new().read(true).open(path.join("db"))?))
    } else {
        None
    };
    let disk = Arc::new(Disk { db: db.clone(), log_file });
    let snap = db.open_tree("snapshot")?;
    let snap_dir = dir.join("snapshots");
    tidy_snapshots(&snap_dir, &snap, &db)?;
    let meta = db.open_tree("raft_meta")?;
    let wal = open_wal(dir, &db, &meta, durable)?;
    let (sm, atomic) = prepare_state_machine(&db, &meta, &snap, &snap_dir, &wal)?;
    disk.sync_blocking()?;
    let atomic = Arc::new(std::sync::atomic::AtomicBool::new(atomic));
    let gate = Arc::new(std::sync::Mutex::new(false));
    let (changes, _) = tokio::sync::broadcast::channel(CHANGE_BUFFER);
    let wal = Arc::new(wal);
    Ok(Store {
        changes: changes.clone(),
        disk: disk.clone(),
        durability: LogDurability(wal.clone()),
        closer: Closer { disk: disk.clone(), meta: meta.clone(), gate: gate.clone() },
        log: LogStore {
            disk: disk.clone(),
            wal: wal.clone(),
            meta: meta.clone(),
            syncer: Default::default(),
        },
        state_machine: StateMachine {
            disk,
            wal,
            meta,
            atomic,
            gate,
            sm: sm.clone(),
            snap: snap.clone(),
            snap_dir: snap_dir.clone(),
            cut: Default::default(),
            adopting: Default::default(),
            receiving: Vec::new(),
            changes,
        },
        view: StateView { sm, snap, snap_dir },
    })
}

/// Bring the snapshot directory in line with the `snapshot` tree at start-up: move a snapshot
/// kept inside the tree by earlier versions out to a file, and delete files no record names
/// (a build or a transfer cut short by a crash).
fn tidy_snapshots(snap_dir: &Path, snap: &sled::Tree, db: &sled::Db) -> Result<(), StoreError> {
    std::fs::create_dir_all(snap_dir)?;
    if let (Some(data), None) = (snap.get(SNAP_DATA)?, snap.get(SNAP_FILE)?) {
        let name = "snap-legacy.bin";
        write_file_durably(&snap_dir.join(name), &data)?;
        let mut b = sled::Batch::default();
        b.insert(SNAP_FILE, name.as_bytes());
        b.remove(SNAP_DATA);
        snap.apply_batch(b)?;
        db.flush()?;
    }
    let keep = snap.get(SNAP_FILE)?.map(|n| String::from_utf8_lossy(&n).into_owned());
    for entry in std::fs::read_dir(snap_dir)? {
        let entry = entry?;
        if Some(entry.file_name().to_string_lossy().as_ref()) != keep.as_deref() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn write_file_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut f, data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// fsync the directory holding `path`, so a rename into it survives power loss.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

fn io_read<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::read(&e).into()
}

fn io_write<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

/// A handle on how far this node's Raft log is durable. openraft hears of an append as flushed
/// before it is (see [`LogStore`]'s `append`), so the peer network uses this where it tells
/// another node something that relies on the local copy: a follower's reply that it holds the
/// entries, and a leader's commit index.
#[derive(Clone)]
pub struct LogDurability(Arc<Wal>);

impl LogDurability {
    /// Wait until every entry at or below `index` is on disk.
    pub async fn through(&self, index: u64) -> std::io::Result<()> {
        self.0.wait_through(index).await
    }

    /// Wait until everything written to the log before this call is on disk.
    pub async fn written(&self) -> std::io::Result<()> {
        self.0.wait_written().await
    }
}

// ---------------------------------------------------------------------------------------------
// Log store

#[derive(Clone)]
pub struct LogStore {
    disk: Arc<Disk>,
    wal: Arc<Wal>,
    meta: sled::Tree,
    /// The queue of the thread that makes log writes durable; started on first use.
    syncer: Arc<std::sync::OnceLock<std::sync::mpsc::Sender<SyncRequest>>>,
}

/// Something waiting for everything written before it to be durable.
enum SyncRequest {
    /// An append: tell openraft once its entries are on disk.
    Append(LogFlushed<TypeConfig>),
    /// An append openraft was told of at once: only the log's durability mark is waiting.
    Flush,
    /// A truncation, purge or vote waiting for its own sync; `sled` when what it wrote is in sled
    /// (the vote, the purge point) rather than in the log files.
    Wait { sled: bool, tx: tokio::sync::oneshot::Sender<std::io::Result<()>> },
}

/// Group commit on a thread of its own. Requests are served strictly in arrival order; all those
/// waiting when a sync starts share it (a sync covers every write made before it began), and
/// those arriving during a sync wait for the next one. `append` returns once its entries are
/// written; openraft 0.9 then waits for the callback, which this thread fires right after the
/// `fdatasync`, with no task or thread-pool hop in between.
fn sync_thread(wal: Arc<Wal>, disk: Arc<Disk>, rx: std::sync::mpsc::Receiver<SyncRequest>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(r) = rx.try_recv() {
            waiting.push(r);
        }
        let mut result = wal.sync();
        if result.is_ok() && waiting.iter().any(|r| matches!(r, SyncRequest::Wait { sled: true, .. })) {
            result = disk.sync_blocking();
        }
        for r in waiting {
            let r2 = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            match r {
                SyncRequest::Append(cb) => cb.log_io_completed(r2),
                SyncRequest::Flush => {}
                SyncRequest::Wait { tx, .. } => {
                    let _ = tx.send(r2);
                }
            }
        }
    }
}

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

fn read_meta<T: serde::de::DeserializeOwned>(meta: &sled::Tree, key: &[u8]) -> StorageResult<Option<T>> {
    match meta.get(key).map_err(io_read)? {
        Some(v) => Ok(Some(decode(&v).map_err(io_read)?)),
        None => Ok(None),
    }
}

impl LogStore {
    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        read_meta(&self.meta, key)
    }

    /// Whether the log holds no entry (a store fit to be seeded from a backup).
    pub fn is_empty(&self) -> bool {
        self.wal.is_empty()
    }

    fn syncer(&self) -> &std::sync::mpsc::Sender<SyncRequest> {
        self.syncer.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (wal, disk) = (self.wal.clone(), self.disk.clone());
            std::thread::Builder::new()
                .name("st2kv-log-sync".into())
                .spawn(move || sync_thread(wal, disk, rx))
                .expect("spawn the log sync thread");
            tx
        })
    }

    /// Wait until everything written so far is durable, after every append queued before.
    async fn sync_in_order(&self, sled: bool) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.syncer().send(SyncRequest::Wait { sled, tx }).is_err() {
            return Err(std::io::Error::other("the log sync thread stopped"));
        }
        rx.await.map_err(|_| std::io::Error::other("the log sync thread stopped"))?
    }

    async fn sync_logs(&self, sled: bool) -> StorageResult<()> {
        self.sync_in_order(sled).await.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.wal.read(start, end).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED)?;
        let last = self.wal.bounds().map(|(_, last)| last);
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.meta.insert(VOTE, encode(vote)).map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.sync_in_order(true).await.map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // No sync: a committed index that is stale after a crash is safe (openraft re-learns it).
        // One ahead of the durable log is not (after power loss it would name entries that are
        // gone), so it is not written until the log has caught up; a later call writes it.
        if committed.is_some_and(|c| c.index > self.wal.durability().through) {
            return Ok(());
        }
        self.meta.insert(COMMITTED, encode(&committed)).map_err(io_write)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.read_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if let Err(e) = self.wal.append(&entries) {
            callback.log_io_completed(Err(std::io::Error::new(e.kind(), e.to_string())));
            return Err(StorageIOError::write_logs(AnyError::new(&e)).into());
        }
        // Written, durable after the sync thread's next `fdatasync` (see `sync_thread`). A batch
        // without a membership change is reported flushed at once, so that openraft 0.9, which
        // waits for this report before it replicates, sends the entries to the followers while
        // they are being synced here; what depends on their durability waits for the log's mark
        // instead (see the module's durability rules). Membership changes take effect when
        // appended, so openraft hears of those only once they are on disk.
        let early = !entries.iter().any(|e| matches!(e.payload, EntryPayload::Membership(_)));
        let (request, early_callback) =
            if early { (SyncRequest::Flush, Some(callback)) } else { (SyncRequest::Append(callback), None) };
        match self.syncer().send(request) {
            Ok(()) => {
                if let Some(callback) = early_callback {
                    callback.log_io_completed(Ok(()));
                }
                Ok(())
            }
            Err(std::sync::mpsc::SendError(request)) => {
                let e = std::io::Error::other("the log sync thread stopped");
                let callback = match request {
                    SyncRequest::Append(callback) => Some(callback),
                    _ => early_callback,
                };
                if let Some(callback) = callback {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
                Err(StorageIOError::write_logs(AnyError::new(&e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.wal.truncate(log_id.index).map_err(io_write)?;
        self.sync_logs(false).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Persist the purge point first (and, through the shared Db, the state machine up to
        // what is applied): a crash after this leaves extra entries, never a hole.
        self.meta.insert(LAST_PURGED, encode(&log_id)).map_err(io_write)?;
        self.sync_logs(true).await?;
        self.wal.purge(log_id.index).map_err(io_write)
    }
}

// ---------------------------------------------------------------------------------------------
// State machine

pub struct StateMachine {
    disk: Arc<Disk>,
    /// The log, for its durability mark (see `apply`).
    wal: Arc<Wal>,
    /// `raft_meta`, where adopting a snapshot ends atomic mode.
    meta: sled::Tree,
    /// Whether applies must be atomic sled batches (see the module's rules).
    atomic: Arc<std::sync::atomic::AtomicBool>,
    /// Held while an apply writes; `true` once [`Closer::close`] ran, after which nothing applies.
    gate: Arc<std::sync::Mutex<bool>>,
    sm: sled::Tree,
    /// The current snapshot's record: its `SnapshotMeta` and the name of its file in `snap_dir`.
    snap: sled::Tree,
    snap_dir: std::path::PathBuf,
    /// The cut of the snapshot being built, if one is.
    cut: CutSlot,
    /// Held while a snapshot file becomes the current one (see [`SnapshotStore::adopt`]).
    adopting: Arc<tokio::sync::Mutex<()>>,
    /// Files handed out by `begin_receiving_snapshot`, removed once a snapshot is installed.
    receiving: Vec<std::path::PathBuf>,
    changes: tokio::sync::broadcast::Sender<KeyChange>,
}

/// A snapshot in the making, copy-on-write at the key level. sled 0.34 has no point-in-time
/// iterator, so the builder iterates the live tree while `apply` goes on, and `apply` records
/// here, just before it first changes a key, the value that key had at the cut. The builder
/// writes a recorded pre-image in place of whatever it iterated (and, at the end, the
/// pre-images of keys deleted since the cut that it never met), which gives exactly the state
/// at the cut: keys no apply has touched since cannot have changed.
struct Cut {
    generation: u64,
    pre: std::collections::HashMap<Vec<u8>, PreImage>,
}

struct PreImage {
    /// The value at the cut; `None` for a key created after it.
    value: Option<sled::IVec>,
    /// Whether the builder has met the key while iterating.
    met: bool,
}

#[derive(Clone, Default)]
struct CutSlot(Arc<std::sync::Mutex<Option<Cut>>>);

impl CutSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cut>> {
        // Every critical section is short and cannot panic halfway through an update.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// While a snapshot is being built, record the current value in `sm` of each of `keys` not
    /// recorded yet. Called with the keys of a batch just before the batch is written to `sm`.
    fn preserve<K: AsRef<[u8]>>(
        &self,
        sm: &sled::Tree,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<(), StoreError> {
        let mut slot = self.lock();
        let Some(cut) = slot.as_mut() else { return Ok(()) };
        for k in keys {
            let k = k.as_ref();
            if !cut.pre.contains_key(k) {
                let value = sm.get(k)?;
                cut.pre.insert(k.to_vec(), PreImage { value, met: false });
            }
        }
        Ok(())
    }

    fn active(&self) -> bool {
        self.lock().is_some()
    }

    /// Drop the cut of build `generation`, if it is still the current one.
    fn clear(&self, generation: u64) {
        let mut slot = self.lock();
        if slot.as_ref().is_some_and(|c| c.generation == generation) {
            *slot = None;
        }
    }
}

/// How many key changes a slow subscriber may fall behind before it misses some.
const CHANGE_BUFFER: usize = 16_384;

const SNAP_META: &[u8] = b"meta";
/// The file in the snapshot directory that holds the current snapshot's data.
const SNAP_FILE: &[u8] = b"file";
/// `(pairs, ops applied at the cut)` of the current snapshot: what the next one will cost, and
/// how much has changed since (see [`StateView::snapshot_due`]).
const SNAP_WEIGHT: &[u8] = b"weight";
/// Where versions before file-backed snapshots kept the data (moved out at open).
const SNAP_DATA: &[u8] = b"data";

/// A batch of pending writes over the `sm` tree: reads see earlier writes of the same batch.
struct Overlay<'a> {
    tree: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Key changes made by this batch, published once it is written.
    changes: Vec<KeyChange>,
    /// Where the op being applied sits: `(log index, position in the entry)`.
    at: (u64, u32),
    /// `k` records created minus removed by this batch.
    keys_delta: i64,
    /// Revisions of the aux records guard checks have read in this batch (`None`: absent). Every
    /// op of a client carries the same guards (its credential and its user), so a batch of many
    /// ops reads each record once instead of once per op; a write to a record drops its entry.
    revisions: HashMap<Vec<u8>, Option<u64>>,
}

impl<'a> Overlay<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        Overlay {
            tree,
            writes: BTreeMap::new(),
            changes: Vec::new(),
            at: (0, 0),
            keys_delta: 0,
            revisions: HashMap::new(),
        }
    }

    /// The revision of aux record `k` as the batch would leave it so far.
    fn aux_revision(&mut self, k: Vec<u8>) -> Result<Option<u64>, StoreError> {
        if let Some(r) = self.revisions.get(&k) {
            return Ok(*r);
        }
        let r = self.aux(&k)?.map(|r| r.revision);
        self.revisions.insert(k, r);
        Ok(r)
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.writes.get(k) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(k)?.map(|v| v.to_vec()))
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        if !self.revisions.is_empty() {
            self.revisions.remove(&k);
        }
        self.writes.insert(k, Some(v));
    }

    fn del(&mut self, k: Vec<u8>) {
        if !self.revisions.is_empty() {
            self.revisions.remove(&k);
        }
        self.writes.insert(k, None);
    }

    /// Keys in `[lo, hi)` as the batch would leave them.
    fn keys_in(&self, lo: &[u8], hi: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = std::collections::BTreeSet::new();
        for item in self.tree.range(lo..hi) {
            keys.insert(item?.0.to_vec());
        }
        for (k, v) in self.writes.range::<[u8], _>((Bound::Included(lo), Bound::Excluded(hi))) {
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn record(&self, kv: &[u8]) -> Result<Option<Record>, StoreError> {
        Ok(match self.get(kv)? {
            Some(v) => Some(decode(&v)?),
            None => None,
        })
    }

    fn aux(&self, k: &[u8]) -> Result<Option<AuxRecord>, StoreError> {
        Ok(match self.get(k)? {
            Some(v) => Some(decode(&v)?),
            None => None,
        })
    }

    /// Write the pending records one by one, the applied log id last.
    fn write_each(self, tree: &sled::Tree, meta: &sled::Tree) -> sled::Result<()> {
        let mut applied = None;
        if let Some(v) = self.writes.get(META_APPLIED).cloned().flatten() {
            // First: which apply is under way (see `torn_apply`).
            meta.insert(APPLYING, v)?;
        }
        for (k, v) in self.writes {
            if k == META_APPLIED {
                applied = v;
                continue;
            }
            match v {
                Some(v) => tree.insert(k, v)?,
                None => tree.remove(k)?,
            };
        }
        if let Some(v) = applied {
            tree.insert(META_APPLIED, v)?;
        }
        Ok(())
    }

    fn into_batch(self) -> sled::Batch {
        let mut b = sled::Batch::default();
        for (k, v) in self.writes {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        b
    }
}

/// Apply one command at log index `index`. Deterministic: reads only the batch and the command.
fn apply_command(ov: &mut Overlay, index: u64, cmd: &Command) -> Result<Outcome, StoreError> {
    Ok(match cmd {
        Command::Put { key, value, secret, description, expire_at_ms, now_ms, new_id, cond } => {
            let kvk = kv_key(key);
            let old = ov.record(&kvk)?;
            let current = old.as_ref().filter(|o| !o.is_expired(*now_ms)).map(|o| o.revision);
            if let Some(failed) = check_revision(*cond, current) {
                return Ok(failed);
            }
            if let Some(t) = old.as_ref().and_then(|o| o.expire_at_ms) {
                ov.del(expiry_key(t, &kvk));
            }
            let existed = old.is_some();
            let live = old.filter(|o| !o.is_expired(*now_ms));
            let record = Record {
                id: live.as_ref().map(|o| o.id.clone()).unwrap_or_else(|| new_id.clone()),
                value: value.clone(),
                secret: *secret,
                description: description.clone(),
                expire_at_ms: *expire_at_ms,
                created_ms: live.as_ref().map(|o| o.created_ms).unwrap_or(*now_ms),
                updated_ms: *now_ms,
                revision: index,
            };
            if let Some(t) = expire_at_ms {
                ov.put(expiry_key(*t, &kvk), Vec::new());
            }
            if !existed {
                ov.keys_delta += 1;
            }
            ov.put(kvk, encode(&record));
            let (index, seq) = ov.at;
            ov.changes.push(KeyChange {
                index,
                seq,
                key: key.clone(),
                old: live.clone(),
                new: Some(record.clone()),
            });
            Outcome::Put { record, created: live.is_none() }
        }
        Command::Delete { key, now_ms } => {
            let kvk = kv_key(key);
            match ov.record(&kvk)? {
                None => Outcome::NotFound,
                Some(old) => {
                    if let Some(t) = old.expire_at_ms {
                        ov.del(expiry_key(t, &kvk));
                    }
                    ov.del(kvk);
                    ov.keys_delta -= 1;
                    if old.is_expired(*now_ms) {
                        Outcome::NotFound
                    } else {
                        let (index, seq) = ov.at;
                        ov.changes.push(KeyChange {
                            index,
                            seq,
                            key: key.clone(),
                            old: Some(old.clone()),
                            new: None,
                        });
                        Outcome::Deleted { record: old }
                    }
                }
            }
        }
        Command::PurgeExpired { now_ms } => {
            let mut count = 0;
            for xk in ov.keys_in(&[EXPIRY], &expiry_upper_bound(*now_ms))? {
                let target = xk[9..].to_vec();
                ov.del(xk);
                let expired = match target.first() {
                    Some(&KV) => ov.record(&target)?.is_some_and(|r| r.is_expired(*now_ms)),
                    Some(&AUX) => ov.aux(&target)?.is_some_and(|r| r.is_expired(*now_ms)),
                    _ => false,
                };
                if expired {
                    if target.first() == Some(&KV) {
                        ov.keys_delta -= 1;
                    }
                    ov.del(target);
                    count += 1;
                }
            }
            Outcome::Purged { count }
        }
        Command::PutAux { table, key, value, expire_at_ms, cond } => {
            let ak = aux_key(table, key);
            let old = ov.aux(&ak)?;
            if let Some(failed) = check_cond(*cond, old.as_ref()) {
                return Ok(failed);
            }
            if let Some(t) = old.as_ref().and_then(|o| o.expire_at_ms) {
                ov.del(expiry_key(t, &ak));
            }
            if let Some(t) = expire_at_ms {
                ov.put(expiry_key(*t, &ak), Vec::new());
            }
            let rec = AuxRecord { value: value.clone(), expire_at_ms: *expire_at_ms, revision: index };
            ov.put(ak, encode(&rec));
            Outcome::AuxPut { revision: index, created: old.is_none() }
        }
        Command::DeleteAux { table, key, cond } => {
            let ak = aux_key(table, key);
            let Some(old) = ov.aux(&ak)? else {
                return Ok(if *cond == Cond::Always || *cond == Cond::Absent {
                    Outcome::NotFound
                } else {
                    Outcome::CondFailed { current: None }
                });
            };
            if let Some(failed) = check_cond(*cond, Some(&old)) {
                return Ok(failed);
            }
            if let Some(t) = old.expire_at_ms {
                ov.del(expiry_key(t, &ak));
            }
            ov.del(ak);
            Outcome::AuxDeleted
        }
    })
}

/// `Some(CondFailed)` when `cond` does not hold for the record `old`.
fn check_cond(cond: Cond, old: Option<&AuxRecord>) -> Option<Outcome> {
    check_revision(cond, old.map(|o| o.revision))
}

/// `Some(CondFailed)` when `cond` does not hold for a record at revision `current`.
fn check_revision(cond: Cond, current: Option<u64>) -> Option<Outcome> {
    let holds = match cond {
        Cond::Always => true,
        Cond::Absent => current.is_none(),
        Cond::Revision(r) => current == Some(r),
    };
    (!holds).then_some(Outcome::CondFailed { current })
}

/// Apply one entry's request: its own ops, then each batch it carries for other nodes
/// ([`Request::also`]), each remembered under its own id. `next_seq` numbers the ops across
/// all of them, so every op of the entry has its own position.
fn apply_request(
    ov: &mut Overlay,
    index: u64,
    req: &Request,
    next_seq: &mut u32,
) -> Result<Response, StoreError> {
    // Forget request ids proposed more than DEDUP_WINDOW_MS before this batch, first, so whether
    // an old id is remembered never depends on unrelated traffic in between.
    for ak in ov.keys_in(&[DEDUP_AGE], &dedup_age_bound(req.proposed_at_ms - DEDUP_WINDOW_MS))? {
        if let Some(id) = dedup_id_from_age_key(&ak) {
            ov.del(dedup_key(id));
        }
        ov.del(ak);
    }
    let remembered = match req.id {
        Some(id) => ov.get(&dedup_key(id))?,
        None => None,
    };
    let outcomes = match remembered {
        Some(prev) => {
            *next_seq += req.ops.len() as u32;
            decode::<Response>(&prev)?.outcomes
        }
        None => {
            let outcomes = apply_ops(ov, index, &req.ops, next_seq)?;
            if let Some(id) = req.id {
                ov.put(dedup_key(id), encode(&Response { outcomes: outcomes.clone(), also: Vec::new() }));
                ov.put(dedup_age_key(req.proposed_at_ms, id), Vec::new());
            }
            outcomes
        }
    };
    let mut also = Vec::with_capacity(req.also.len());
    for part in &req.also {
        also.push(apply_request(ov, index, part, next_seq)?);
    }
    Ok(Response { outcomes, also })
}

fn apply_ops(
    ov: &mut Overlay,
    index: u64,
    ops: &[Op],
    next_seq: &mut u32,
) -> Result<Vec<Outcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut applied = 0u64;
    for op in ops {
        ov.at = (index, *next_seq);
        *next_seq += 1;
        let mut guarded = true;
        for g in &op.guards {
            if ov.aux_revision(aux_key(&g.table, &g.key))? != Some(g.revision) {
                guarded = false;
                break;
            }
        }
        let outcome = if guarded {
            applied += 1;
            apply_command(ov, index, &op.cmd)?
        } else {
            Outcome::GuardFailed
        };
        outcomes.push(outcome);
    }
    let count: u64 = match ov.get(META_OPS)? {
        Some(v) => decode(&v)?,
        None => 0,
    };
    ov.put(META_OPS.to_vec(), encode(&(count + applied)));
    Ok(outcomes)
}

impl StateMachine {
    fn read_sm<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        match self.sm.get(key).map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))? {
            Some(v) => {
                Ok(Some(decode(&v).map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?))
            }
            None => Ok(None),
        }
    }

    /// The current snapshot, opened from its file.
    async fn snapshot_from_files(&self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let rerr =
            |e: &dyn std::fmt::Display| StorageIOError::read_snapshot(None, AnyError::error(e.to_string()));
        let meta = self.snap.get(SNAP_META).map_err(|e| rerr(&e))?;
        let file = self.snap.get(SNAP_FILE).map_err(|e| rerr(&e))?;
        let (Some(m), Some(f)) = (meta, file) else { return Ok(None) };
        let meta: SnapshotMeta<NodeId, Node> = decode(&m).map_err(|e| rerr(&e))?;
        let path = self.snap_dir.join(String::from_utf8_lossy(&f).as_ref());
        let data = tokio::fs::File::open(&path).await.map_err(|e| rerr(&e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(data) }))
    }

    fn snapshot_store(&self) -> SnapshotStore {
        SnapshotStore {
            disk: self.disk.clone(),
            meta: self.meta.clone(),
            atomic: self.atomic.clone(),
            snap: self.snap.clone(),
            snap_dir: self.snap_dir.clone(),
            adopting: self.adopting.clone(),
        }
    }
}

fn snapshot_file_name(last: Option<LogId<NodeId>>) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    format!("snap-{}-{micros}.bin", last.map(|l| l.index).unwrap_or(0))
}

/// Everything a snapshot carries besides openraft's `SnapshotMeta`: every `sm` pair except the
/// applied/membership metadata, which the meta already holds.
type SnapshotPairs = Vec<(Vec<u8>, Vec<u8>)>;

fn is_raft_meta(k: &[u8]) -> bool {
    k == META_APPLIED || k == META_MEMBERSHIP
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>)> {
        let applied = self.read_sm::<LogId<NodeId>>(META_APPLIED)?;
        let membership = self.read_sm(META_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let werr = |e: StoreError| -> StorageError<NodeId> {
            StorageIOError::write_state_machine(AnyError::new(&e)).into()
        };
        let mut ov = Overlay::new(&self.sm);
        let mut responses = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            match &entry.payload {
                EntryPayload::Blank => responses.push(Response::default()),
                EntryPayload::Normal(req) => {
                    responses.push(apply_request(&mut ov, entry.log_id.index, req, &mut 0).map_err(werr)?)
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    ov.put(META_MEMBERSHIP.to_vec(), encode(&stored));
                    responses.push(Response::default());
                }
            }
        }
        if let Some(last) = last {
            ov.put(META_APPLIED.to_vec(), encode(&last));
        }
        if ov.keys_delta != 0 {
            let keys: u64 = match ov.get(META_KEYS).map_err(werr)? {
                Some(v) => decode(&v).map_err(|e| werr(e.into()))?,
                None => 0,
            };
            ov.put(META_KEYS.to_vec(), encode(&keys.saturating_add_signed(ov.keys_delta)));
        }
        let changes = std::mem::take(&mut ov.changes);
        // Committed entries can be ahead of this node's durable log (the leader's own copy is
        // synced while they replicate). Nothing of them may reach the state machine, whose
        // writes sled persists on its own schedule, and so no client or reader may see them,
        // before they are on this node's disk.
        if let Some(last) = last {
            self.wal
                .wait_through(last.index)
                .await
                .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        }
        self.cut.preserve(&self.sm, ov.writes.keys()).map_err(werr)?;
        {
            let closed = self.gate.lock().unwrap_or_else(|p| p.into_inner());
            if *closed {
                return Err(werr(StoreError::Io(std::io::Error::other("the state machine is closed"))));
            }
            if self.atomic.load(std::sync::atomic::Ordering::Acquire) {
                self.sm.apply_batch(ov.into_batch()).map_err(|e| werr(e.into()))?;
            } else {
                // One write per record, the applied log id last. Not atomic (see the module's
                // rules): a crash midway is repaired by rebuilding from the snapshot and the log.
                // sled 0.34's atomic batch costs two hand-offs of its IO buffer to its thread pool
                // on every apply, on every node, which a single put waited for.
                ov.write_each(&self.sm, &self.meta).map_err(|e| werr(e.into()))?;
            }
        }
        for c in changes {
            // No subscriber is not an error: the feed is best-effort and in memory only.
            let _ = self.changes.send(c);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Runs in openraft's state-machine worker between applies: what is applied now is the
        // cut. Only the cut is taken here; the copy happens in `build_snapshot`, concurrently
        // with later applies (see [`Cut`]).
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let head = (|| -> Result<_, StoreError> {
            let applied: Option<LogId<NodeId>> =
                self.sm.get(META_APPLIED)?.map(|v| decode(&v)).transpose()?;
            let membership: StoredMembership<NodeId, Node> =
                self.sm.get(META_MEMBERSHIP)?.map(|v| decode(&v)).transpose()?.unwrap_or_default();
            let ops: u64 = self.sm.get(META_OPS)?.map(|v| decode(&v)).transpose()?.unwrap_or(0);
            Ok((applied, membership, ops))
        })();
        let mut slot = self.cut.lock();
        if let Some(old) = slot.as_ref() {
            tracing::warn!(generation = old.generation, "a snapshot build was superseded by a newer one");
        }
        *slot = Some(Cut { generation, pre: Default::default() });
        drop(slot);
        SnapshotBuilder {
            head: head.map_err(|e| e.to_string()),
            generation,
            sm: self.sm.clone(),
            cut: self.cut.clone(),
            machine: self.snapshot_store(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let path = self.snap_dir.join(format!("{}.recv", snapshot_file_name(None)));
        let werr = |e: std::io::Error| StorageIOError::write_snapshot(None, &e);
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(werr)?;
        self.receiving.push(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        let sig = Some(meta.signature());
        let werr = |e: &dyn std::fmt::Display| {
            StorageIOError::write_snapshot(sig.clone(), AnyError::error(e.to_string()))
        };
        // Keep a copy as the current snapshot (it is what we would send onwards), then replace
        // the state machine in one atomic batch: old keys out, snapshot keys in, applied and
        // membership last. Keys absent from the snapshot must not survive. (An empty store is
        // filled record by record instead, see below.)
        let name = snapshot_file_name(meta.last_log_id);
        let path = self.snap_dir.join(&name);
        let mut source = snapshot.into_std().await;
        let sm = self.sm.clone();
        let last = meta.last_log_id;
        let membership = meta.last_membership.clone();
        let cut = self.cut.clone();
        let (atomic, gate, raft_meta) = (self.atomic.clone(), self.gate.clone(), self.meta.clone());
        let replaced = tokio::task::spawn_blocking(move || -> Result<(u64, u64), StoreError> {
            use std::io::{Seek, SeekFrom};
            source.seek(SeekFrom::Start(0))?;
            let tmp = path.with_extension("tmp");
            let mut copy = std::fs::File::create(&tmp)?;
            std::io::copy(&mut source, &mut copy)?;
            copy.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&path)?;
            let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
            // Only a build of our own in progress needs the keys (it must still see the state at
            // its cut); no build can start during an install, both run in the state-machine worker.
            let building = cut.active();
            // A store with nothing in it (a new member) has no readers to shield from a half-done
            // install: the records go in one by one, without a batch of the whole key space in
            // memory. A crash midway leaves it `running`, rebuilt from the previous snapshot.
            let empty =
                sm.iter().keys().find(|k| k.as_ref().map_or(true, |k| k.as_ref() != META_KEYS)).is_none();
            if empty && !building && !atomic.load(std::sync::atomic::Ordering::Acquire) {
                let closed = gate.lock().unwrap_or_else(|p| p.into_inner());
                if *closed {
                    return Err(StoreError::Io(std::io::Error::other("the state machine is closed")));
                }
                raft_meta.insert(APPLYING, REBUILDING)?;
                let (pairs, ops, keys) = read_snapshot_pairs(reader, |k, v| {
                    sm.insert(k, v)?;
                    Ok(())
                })?;
                sm.insert(META_MEMBERSHIP, encode(&membership))?;
                sm.insert(META_KEYS, encode(&keys))?;
                match last {
                    Some(last) => {
                        sm.insert(META_APPLIED, encode(&last))?;
                        raft_meta.insert(APPLYING, encode(&last))?;
                    }
                    None => {
                        raft_meta.remove(APPLYING)?;
                    }
                }
                return Ok((pairs, ops));
            }
            let mut b = sled::Batch::default();
            let mut touched: Vec<Vec<u8>> = Vec::new();
            for item in sm.iter().keys() {
                let k = item?;
                if building {
                    touched.push(k.to_vec());
                }
                b.remove(k);
            }
            let (pairs, ops, keys) = read_snapshot_pairs(reader, |k, v| {
                if building {
                    touched.push(k.clone());
                }
                b.insert(k, v);
                Ok(())
            })?;
            if let Some(last) = last {
                b.insert(META_APPLIED, encode(&last));
            }
            b.insert(META_MEMBERSHIP, encode(&membership));
            b.insert(META_KEYS, encode(&keys));
            if building {
                touched.push(META_KEYS.to_vec());
            }
            cut.preserve(&sm, touched)?;
            sm.apply_batch(b)?;
            // Whole, so no longer "under way" (see `torn_apply`).
            match last {
                Some(last) => raft_meta.insert(APPLYING, encode(&last))?,
                None => raft_meta.remove(APPLYING)?,
            };
            Ok((pairs, ops))
        })
        .await
        .map_err(|e| werr(&e))?;
        let weight = replaced.map_err(|e| werr(&e))?;
        self.snapshot_store().adopt(meta, &name, weight).await?;
        // The copy is ours now: the received files (this transfer's, and any abandoned one's) go.
        for path in self.receiving.drain(..) {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.snapshot_from_files().await
    }
}

/// Where snapshots are recorded: the `snapshot` tree and the directory of snapshot files.
struct SnapshotStore {
    disk: Arc<Disk>,
    meta: sled::Tree,
    atomic: Arc<std::sync::atomic::AtomicBool>,
    snap: sled::Tree,
    snap_dir: std::path::PathBuf,
    adopting: Arc<tokio::sync::Mutex<()>>,
}

impl SnapshotStore {
    /// Make the snapshot file `name` (already durable in `snap_dir`) the current snapshot and
    /// delete the file it replaces; other files are left alone, since a build and a transfer can
    /// be under way at once (leftovers of either are removed at the next start). A snapshot older
    /// than the current one (a build that finished after a newer snapshot was installed) is not
    /// adopted: its file is deleted and `false` returned.
    async fn adopt(
        &self,
        meta: &SnapshotMeta<NodeId, Node>,
        name: &str,
        weight: (u64, u64),
    ) -> StorageResult<bool> {
        let sig = Some(meta.signature());
        let werr = |e: &dyn std::fmt::Display| {
            StorageIOError::write_snapshot(sig.clone(), AnyError::error(e.to_string()))
        };
        let _one_at_a_time = self.adopting.lock().await;
        let current: Option<SnapshotMeta<NodeId, Node>> = self
            .snap
            .get(SNAP_META)
            .map_err(|e| werr(&e))?
            .map(|m| decode(&m))
            .transpose()
            .map_err(|e| werr(&e))?;
        if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
            let _ = std::fs::remove_file(self.snap_dir.join(name));
            return Ok(false);
        }
        let previous = self.snap.get(SNAP_FILE).map_err(|e| werr(&e))?;
        let mut b = sled::Batch::default();
        b.insert(SNAP_META, encode(meta));
        b.insert(SNAP_FILE, name.as_bytes());
        b.insert(SNAP_WEIGHT, encode(&weight));
        b.remove(SNAP_DATA);
        self.snap.apply_batch(b).map_err(|e| werr(&e))?;
        // With a snapshot of the whole state, the state machine can always be rebuilt: applies
        // need no longer be atomic, once that is durable.
        let leaving_atomic = self.atomic.load(std::sync::atomic::Ordering::Acquire);
        if leaving_atomic {
            self.meta.remove(SM_ATOMIC).map_err(|e| werr(&e))?;
        }
        self.disk.sync().await.map_err(|e| werr(&e))?;
        if leaving_atomic {
            self.atomic.store(false, std::sync::atomic::Ordering::Release);
        }
        if let Some(previous) = previous.filter(|p| p.as_ref() != name.as_bytes()) {
            let _ = std::fs::remove_file(self.snap_dir.join(String::from_utf8_lossy(&previous).as_ref()));
        }
        Ok(true)
    }
}

/// Last applied, membership and the count of applied ops, at the cut.
type SnapshotHead = (Option<LogId<NodeId>>, StoredMembership<NodeId, Node>, u64);

pub struct SnapshotBuilder {
    head: Result<SnapshotHead, String>,
    generation: u64,
    sm: sled::Tree,
    cut: CutSlot,
    machine: SnapshotStore,
}

/// Write the state at the cut of build `generation` to `path`: every `sm` pair but the Raft
/// metadata, in the encoding of [`SnapshotPairs`]. Runs on the blocking pool, concurrently with
/// applies.
fn write_cut(sm: &sled::Tree, cut: &CutSlot, generation: u64, path: &Path) -> Result<u64, StoreError> {
    let superseded = || StoreError::Io(std::io::Error::other("the snapshot build was superseded"));
    let file = std::fs::File::create(path)?;
    let mut out = crate::codec::PairWriter::new(std::io::BufWriter::with_capacity(1 << 20, file))?;
    for item in sm.iter() {
        let (k, v) = item?;
        if is_raft_meta(&k) {
            continue;
        }
        let pre = {
            let mut slot = cut.lock();
            let c = slot.as_mut().filter(|c| c.generation == generation).ok_or_else(superseded)?;
            c.pre.get_mut(&*k).map(|p| {
                p.met = true;
                p.value.clone()
            })
        };
        match pre {
            None => out.push(&k, &v)?,
            Some(Some(at_cut)) => out.push(&k, &at_cut)?,
            Some(None) => {} // created after the cut
        }
    }
    // Done iterating: stop recording, then add the keys deleted since the cut that were never met.
    let cut = {
        let mut slot = cut.lock();
        match slot.take() {
            Some(c) if c.generation == generation => c,
            other => {
                *slot = other;
                return Err(superseded());
            }
        }
    };
    for (k, p) in cut.pre {
        if let (false, Some(v)) = (p.met, p.value) {
            if !is_raft_meta(&k) {
                out.push(&k, &v)?;
            }
        }
    }
    let (buffered, count) = out.finish()?;
    let file = buffered.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(count)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let head = std::mem::replace(&mut self.head, Err("taken".into()));
        let (applied, membership, ops_at_cut) = match head {
            Ok(h) => h,
            Err(e) => {
                self.cut.clear(self.generation);
                return Err(StorageIOError::read_state_machine(AnyError::error(e)).into());
            }
        };
        let name = snapshot_file_name(applied);
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, name),
            None => format!("none-{name}"),
        };
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
        let sig = Some(meta.signature());
        let werr = |e: &dyn std::fmt::Display| {
            StorageIOError::write_snapshot(sig.clone(), AnyError::error(e.to_string()))
        };
        let (sm, cut, generation) = (self.sm.clone(), self.cut.clone(), self.generation);
        let path = self.machine.snap_dir.join(&name);
        let tmp = path.with_extension("tmp");
        let started = std::time::Instant::now();
        let written = tokio::task::spawn_blocking(move || {
            let r = write_cut(&sm, &cut, generation, &tmp).and_then(|n| {
                std::fs::rename(&tmp, &path)?;
                sync_dir(&path)?;
                Ok(n)
            });
            if r.is_err() {
                cut.clear(generation);
                let _ = std::fs::remove_file(&tmp);
            }
            r
        })
        .await
        .map_err(|e| werr(&e))?
        .map_err(|e| werr(&e))?;
        tracing::info!(
            pairs = written,
            ms = started.elapsed().as_millis() as u64,
            index = applied.map(|l| l.index),
            "snapshot built"
        );
        // Opened before adopting: if a newer snapshot was installed meanwhile, this one's file is
        // deleted, and openraft (which ignores a build older than its snapshot) gets it anyway.
        let data = tokio::fs::File::open(self.machine.snap_dir.join(&name)).await.map_err(|e| werr(&e))?;
        if !self.machine.adopt(&meta, &name, (written, ops_at_cut)).await? {
            tracing::info!(
                index = applied.map(|l| l.index),
                "a newer snapshot was installed meanwhile; this one is dropped"
            );
        }
        Ok(Snapshot { meta, snapshot: Box::new(data) })
    }
}

/// Seed a brand-new store under `dir` with the state-machine data of a snapshot (a backup), like
/// `etcdutl snapshot restore`: the data becomes the initial state, with no log, vote or
/// membership, so the node then forms (or joins) a cluster as usual. Every founding node of the
/// restored cluster is seeded from the same backup, so they start identical.
pub fn seed(dir: &Path, data: &[u8]) -> Result<usize, StoreError> {
    seed_store(&open(dir, true)?, dir, data)
}

/// [`seed`] into a store already open (a node seeding its own store at start: opening the
/// directory a second time could race sled's lock, still held while the first handle's
/// background flusher winds down).
pub fn seed_store(store: &Store, dir: &Path, data: &[u8]) -> Result<usize, StoreError> {
    let pairs: SnapshotPairs = decode(data)?;
    let db = &store.disk.db;
    let sm = db.open_tree("sm")?;
    let meta = db.open_tree("raft_meta")?;
    // The key count every open writes is not data.
    let sm_holds_data = sm.iter().keys().any(|k| k.map_or(true, |k| k.as_ref() != META_KEYS));
    // What every open writes there is not raft state either.
    let meta_holds_state =
        meta.iter().keys().any(|k| k.map_or(true, |k| k.as_ref() != SM_STATE && k.as_ref() != SM_ATOMIC));
    if sm_holds_data || !store.log.is_empty() || meta_holds_state {
        return Err(StoreError::Io(std::io::Error::other(format!(
            "{} already holds data; restore only into an empty data dir",
            dir.display()
        ))));
    }
    let n = pairs.len();
    let mut b = sled::Batch::default();
    for (k, v) in pairs {
        if !is_raft_meta(&k) {
            b.insert(k, v);
        }
    }
    sm.apply_batch(b)?;
    sm.remove(META_KEYS)?;
    ensure_key_count(&sm)?;
    // No snapshot or log could rebuild this: applies stay atomic until a snapshot holds it.
    meta.insert(SM_ATOMIC, &[])?;
    store.state_machine.atomic.store(true, std::sync::atomic::Ordering::Release);
    store.disk.sync_blocking()?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Reads

/// A read-only view of the local state machine, safe to use from any task at any time. What it
/// returns is this replica's applied state: linearizability is the caller's business (wait for a
/// read index first).
#[derive(Clone)]
pub struct StateView {
    sm: sled::Tree,
    snap: sled::Tree,
    snap_dir: std::path::PathBuf,
}

impl StateView {
    /// The live (not expired at `now_ms`) record of `key`.
    pub fn get(&self, key: &KeyId, now_ms: i64) -> Result<Option<Record>, StoreError> {
        match self.sm.get(kv_key(key))? {
            Some(v) => {
                let r: Record = decode(&v)?;
                Ok((!r.is_expired(now_ms)).then_some(r))
            }
            None => Ok(None),
        }
    }

    /// Live keys of `(scope, user)` whose name starts with `prefix`, in name order, skipping
    /// `offset` and returning at most `limit` (all when `None`). Cost: O(offset + page).
    pub fn list(
        &self,
        scope: Scope,
        user: &str,
        prefix: &str,
        offset: usize,
        limit: Option<usize>,
        now_ms: i64,
    ) -> Result<Vec<(KeyId, Record)>, StoreError> {
        let mut out = Vec::new();
        let mut skipped = 0;
        for item in self.sm.scan_prefix(kv_prefix(scope, user, prefix)) {
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let (k, v) = item?;
            let r: Record = decode(&v)?;
            if r.is_expired(now_ms) {
                continue;
            }
            if skipped < offset {
                skipped += 1;
                continue;
            }
            if let Some(key) = layout::decode_kv_key(&k) {
                out.push((key, r));
            }
        }
        Ok(out)
    }

    /// The live auxiliary record `(table, key)`.
    pub fn aux_get(&self, table: &str, key: &str, now_ms: i64) -> Result<Option<AuxRecord>, StoreError> {
        match self.sm.get(aux_key(table, key))? {
            Some(v) => {
                let r: AuxRecord = decode(&v)?;
                Ok((!r.is_expired(now_ms)).then_some(r))
            }
            None => Ok(None),
        }
    }

    /// Live auxiliary records of `table` whose key starts with `prefix`, in key order.
    pub fn aux_list(
        &self,
        table: &str,
        prefix: &str,
        now_ms: i64,
    ) -> Result<Vec<(String, AuxRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.sm.scan_prefix(aux_prefix(table, prefix)) {
            let (k, v) = item?;
            let r: AuxRecord = decode(&v)?;
            if r.is_expired(now_ms) {
                continue;
            }
            if let Some((_, key)) = decode_aux_key(&k) {
                out.push((key, r));
            }
        }
        Ok(out)
    }

    /// Whether some key has expired by `now_ms` and is still stored (a purge is due).
    pub fn has_expired(&self, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self.sm.range(vec![EXPIRY]..expiry_upper_bound(now_ms)).next().transpose()?.is_some())
    }

    pub fn applied(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        Ok(self.sm.get(META_APPLIED)?.map(|v| decode(&v)).transpose()?)
    }

    /// How many ops this replica has applied (a retried op answered from memory does not count).
    pub fn ops_applied(&self) -> Result<u64, StoreError> {
        Ok(self.sm.get(META_OPS)?.map(|v| decode(&v)).transpose()?.unwrap_or(0))
    }

    /// A digest of every key and value (FNV-1a over the `k` family): equal on replicas that
    /// applied the same entries, whatever their history of snapshots.
    pub fn state_hash(&self) -> Result<u64, StoreError> {
        let mut h: u64 = 0xcbf29ce484222325;
        for item in self.sm.scan_prefix([KV]) {
            let (k, v) = item?;
            for b in k.iter().chain(v.iter()).chain([0xffu8].iter()) {
                h ^= *b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
        }
        Ok(h)
    }

    /// Every stored secret (any scope, any owner), in key order. O(keys): for admin operations
    /// such as re-encryption and start-up checks, never for serving requests.
    pub fn secrets(&self) -> Result<Vec<(KeyId, Record)>, StoreError> {
        let mut out = Vec::new();
        for item in self.sm.scan_prefix([KV]) {
            let (k, v) = item?;
            let r: Record = decode(&v)?;
            if r.secret {
                if let Some(key) = layout::decode_kv_key(&k) {
                    out.push((key, r));
                }
            }
        }
        Ok(out)
    }

    /// The last snapshot this node built or received: `(last log index, last log term, data)`,
    /// where data is what [`seed`] takes. `None` before the first snapshot.
    pub fn current_snapshot(&self) -> Result<Option<(u64, u64, Vec<u8>)>, StoreError> {
        let (Some(m), Some(f)) = (self.snap.get(SNAP_META)?, self.snap.get(SNAP_FILE)?) else {
            return Ok(None);
        };
        let meta: SnapshotMeta<NodeId, Node> = decode(&m)?;
        let (index, term) = meta.last_log_id.map(|l| (l.index, l.leader_id.term)).unwrap_or((0, 0));
        let data = std::fs::read(self.snap_dir.join(String::from_utf8_lossy(&f).as_ref()))?;
        Ok(Some((index, term, data)))
    }

    /// Whether a new snapshot is worth its cost: every snapshot writes the whole state, so one is
    /// due only once at least half as many ops have been applied since the last one as that
    /// snapshot held pairs (besides openraft's entry count, which the caller checks). Over a
    /// growing key space this keeps the snapshot work proportional to the writes, instead of a
    /// full copy of a million keys every few thousand entries. Due when there is no snapshot.
    pub fn snapshot_due(&self) -> Result<bool, StoreError> {
        let Some(w) = self.snap.get(SNAP_WEIGHT)? else { return Ok(true) };
        let (pairs, ops_at_cut): (u64, u64) = decode(&w)?;
        Ok(self.ops_applied()?.saturating_sub(ops_at_cut).saturating_mul(2) >= pairs)
    }

    /// Number of stored keys, expired-but-unpurged included: a counter the state machine keeps,
    /// not a scan (counting a million keys took seconds and swept sled's cache).
    pub fn key_count(&self) -> usize {
        match self.sm.get(META_KEYS).ok().flatten().and_then(|v| decode::<u64>(&v).ok()) {
            Some(n) => n as usize,
            None => self.sm.scan_prefix([KV]).count(),
        }
    }
}
