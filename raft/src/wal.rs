//! The Raft log as append-only segment files: a write-ahead log made for exactly one job.
//!
//! The log used to live in a sled tree next to the state machine, and every append paid for sled
//! on the way to the disk: its page cache, an IO-buffer handed to a worker thread, a
//! `sync_file_range`, and then our `fdatasync` of sled's whole file. Here an append is one
//! `pwrite` of the encoded entries at the end of the current segment, and making it durable is one
//! `fdatasync` of that file. The state machine stays in sled; it is never synced per write (see
//! [`crate::store`]).
//!
//! **Layout.** `<data-dir>/wal/<first index, 20 digits>.wal`, each segment about
//! [`SEGMENT_BYTES`]; a new one starts when the current one is full. A record is a 16-byte header
//! (entry index `u64` LE, payload length `u32` LE, CRC-32 of index and payload `u32` LE) followed
//! by the bincode `Entry`.
//!
//! **Preallocated segments.** Once the current segment holds [`SPARE_AFTER`] bytes, a background
//! thread prepares the next one as `next.spare`: zero-filled to [`SEGMENT_BYTES`] and synced. The
//! log moves into it (a rename) when the current segment is full, or at once if the current one
//! was not preallocated itself. Overwriting blocks that are already allocated and on disk changes
//! neither the file's size nor its block map, so `fdatasync` need not commit the file system's
//! journal, which three nodes' syncs otherwise queue on (etcd's WAL does the same). A zero tail
//! after the last record is therefore not damage, in any segment. A node that never writes a
//! megabyte of log (a test's) never prepares one. Below four segments' worth of free space, none
//! is prepared.
//!
//! **Recovery.** Opening scans every segment. A record cut short or failing its checksum at the
//! end of the *last* segment is a write that never finished (and so was never acknowledged): the
//! file is cut back to the last good record. The same anywhere else is corruption, and opening
//! fails rather than serve a log with a hole. Entries at or below the purge point are skipped
//! (segments are deleted only after that point is durable, so a crash can leave some behind).
//!
//! **How far it is durable.** Every successful [`Wal::sync`] publishes a [`Durability`] mark: the
//! index through which the log is on disk, and how many writes (appends and truncations) are.
//! A truncation lowers the index mark at once, and a sync that began before it cannot raise it
//! again. The store lets openraft go on before an append is durable and waits on these marks
//! where it matters instead (see [`crate::store`]).
//!
//! **What it does not do.** It does not sync appends by itself ([`Wal::sync`] is called by the
//! store's sync thread, which batches appends into one `fdatasync`; its own thread syncs only the
//! spare it prepares), keep entries in memory (reads are
//! `pread`s, normally served by the OS page cache), or know anything about votes and the purge
//! point: those stay in sled's `raft_meta` tree.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::{Entry, LogId};

use crate::codec::{decode, encode_into};
use crate::{NodeId, TypeConfig};

/// A segment is closed once it holds this much; the next append starts a new file.
pub const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 16;
/// A spare segment is prepared once the current one holds this many bytes (or a quarter of a
/// segment, if less).
pub const SPARE_AFTER: u64 = 1 << 20;
/// The file a spare segment is prepared in; not a segment until renamed.
pub const SPARE_NAME: &str = "next.spare";

/// Where one entry lives.
#[derive(Clone, Copy)]
struct Loc {
    log_id: LogId<NodeId>,
    /// The segment's first index (its key in `segments`).
    seg: u64,
    offset: u64,
    /// Header included.
    len: u32,
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    /// Zero-filled ahead of `len` (see "Preallocated segments" above).
    preallocated: bool,
}

struct Inner {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// One per entry, in index order, without gaps.
    locs: VecDeque<Loc>,
    /// Segments written since the last sync, and whether the directory changed.
    dirty: BTreeMap<u64, Arc<File>>,
    dir_dirty: bool,
    /// Writes (appends and truncations) so far; a sync covers those made before it began.
    writes: u64,
    /// Bumped by every truncation, so a sync that began before one does not vouch for entries
    /// written after it at the same indexes.
    epoch: u64,
}

impl Inner {
    /// Delete the segment files `doomed`, in that order (their entries are already out of `locs`).
    fn delete_segments(&mut self, doomed: Vec<u64>) -> io::Result<()> {
        for s in doomed {
            if let Some(seg) = self.segments.remove(&s) {
                self.dirty.remove(&s);
                std::fs::remove_file(&seg.path)?;
                self.dir_dirty = true;
            }
        }
        Ok(())
    }

    /// Delete the segments before the one holding the first entry; all of them if none is left.
    fn delete_segments_before_first_entry(&mut self) -> io::Result<()> {
        let keep_from = self.locs.front().map(|l| l.seg);
        let doomed = self
            .segments
            .keys()
            .copied()
            .filter(|s| keep_from.is_none() || keep_from.is_some_and(|k| *s < k))
            .collect();
        self.delete_segments(doomed)
    }
}

/// How much of the log is known to be on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durability {
    /// Every entry at or below this index is durable (or purged behind a durable snapshot).
    pub through: u64,
    /// The first this many writes are durable.
    pub writes: u64,
    /// A sync failed: what was written since the last good one may be lost, and nothing more
    /// will be vouched for.
    pub failed: bool,
}

/// The log of one node. Cheap to share: every method takes `&self`.
pub struct Wal {
    inner: Mutex<Inner>,
    durable: bool,
    segment_bytes: u64,
    mark: tokio::sync::watch::Sender<Durability>,
    spares: Option<Arc<Spares>>,
}

/// The hand-over between the log and the thread that prepares spare segments.
#[derive(Default)]
struct Spares {
    state: Mutex<SpareState>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct SpareState {
    /// `next.spare`, zero-filled and synced.
    ready: Option<File>,
    /// The log asked for one.
    wanted: bool,
    /// The log is gone: the thread stops.
    closed: bool,
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, SpareState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(s) = &self.spares {
            s.close();
        }
    }
}

/// Free bytes for unprivileged use on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    (rc == 0).then(|| (st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Create `path` holding `bytes` zeros, on disk. A megabyte at a time, each synced, with a pause
/// after it: one flush of the whole segment would hold the disk for tens of milliseconds, and
/// every node's log sync would wait behind it.
fn zero_filled(path: &Path, bytes: u64) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < bytes {
        let n = (bytes - at).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], at)?;
        file.sync_data()?;
        at += n as u64;
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    file.sync_all()?;
    Ok(file)
}

/// The spare-preparing thread: one zero-filled segment whenever the log wants one and has taken
/// the last.
fn prepare_spares(spares: Arc<Spares>, dir: PathBuf, bytes: u64) {
    let path = dir.join(SPARE_NAME);
    let pause = std::time::Duration::from_secs(30);
    loop {
        {
            let mut g = spares.lock();
            let wanted = |st: &SpareState| st.wanted && st.ready.is_none();
            while !(g.closed || wanted(&g)) {
                g = spares.wake.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            if g.closed {
                return;
            }
        }
        let result = match free_bytes(&dir) {
            Some(free) if free < bytes.saturating_mul(4) => Err(None),
            _ => zero_filled(&path, bytes).map_err(Some),
        };
        let mut g = spares.lock();
        match result {
            Ok(file) if !g.closed => {
                g.ready = Some(file);
                g.wanted = false;
                spares.wake.notify_all();
                continue;
            }
            Ok(_) => return,
            Err(e) => {
                if let Some(e) = e {
                    tracing::warn!(error = %e, "preparing the next raft log segment failed; will retry");
                }
                let _ = std::fs::remove_file(&path);
                // Try again later; meanwhile segments are created as plain files.
                let (g2, _) = spares.wake.wait_timeout(g, pause).unwrap_or_else(|p| p.into_inner());
                if g2.closed {
                    return;
                }
            }
        }
    }
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Open (or create) the log under `dir`, recovering from a torn last write. Entries at or
    /// below `purged` are dropped.
    pub fn open(dir: &Path, purged: Option<u64>, durable: bool) -> io::Result<Wal> {
        Wal::open_with_segment_size(dir, purged, durable, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with segments closed at `segment_bytes` (tests use small ones).
    pub fn open_with_segment_size(
        dir: &Path,
        purged: Option<u64>,
        durable: bool,
        segment_bytes: u64,
    ) -> io::Result<Wal> {
        Wal::open_inner(dir, purged, durable, segment_bytes, false)
    }

    /// [`Wal::open_with_segment_size`], moving into preallocated segments prepared in the
    /// background (see "Preallocated segments" above). What a node uses, with [`SEGMENT_BYTES`].
    pub fn open_with_spares(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> io::Result<Wal> {
        Wal::open_inner(dir, purged, true, segment_bytes, true)
    }

    fn open_inner(
        dir: &Path,
        purged: Option<u64>,
        durable: bool,
        segment_bytes: u64,
        spares: bool,
    ) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        // A spare left by the last run is not part of the log; it is prepared again if wanted.
        match std::fs::remove_file(dir.join(SPARE_NAME)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut firsts = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".wal").and_then(|n| n.parse::<u64>().ok()) {
                firsts.push(n);
            }
        }
        firsts.sort_unstable();
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            locs: VecDeque::new(),
            dirty: BTreeMap::new(),
            dir_dirty: false,
            writes: 0,
            epoch: 0,
        };
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let last_segment = i + 1 == count;
            let path = dir.join(segment_name(first));
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let (good, zero_tail) = scan(&file, first, purged, &mut inner.locs)?;
            let len = file.metadata()?.len();
            let preallocated = good < len && zero_tail;
            if good < len && !zero_tail {
                if !last_segment {
                    return Err(corrupt(format!(
                        "{}: a damaged record at byte {good} before the last segment",
                        path.display()
                    )));
                }
                tracing::warn!(path = %path.display(), at = good, "cutting off an unfinished write at the end of the raft log");
                file.set_len(good)?;
                if durable {
                    file.sync_all()?;
                }
            }
            if good == 0 && last_segment {
                // Created just before a crash, never written: start afresh on the next append.
                drop(file);
                std::fs::remove_file(&path)?;
                inner.dir_dirty = true;
                continue;
            }
            inner.segments.insert(first, Segment { file: Arc::new(file), path, len: good, preallocated });
        }
        // Segments wholly below the purge point are leftovers of an interrupted purge.
        inner.delete_segments_before_first_entry()?;
        if durable {
            // A process that died after an append but before its sync left the entry in the page
            // cache only; make it as durable as the mark below claims.
            for seg in inner.segments.values() {
                seg.file.sync_data()?;
            }
            sync_dir(dir)?;
            inner.dir_dirty = false;
        }
        let through = inner.locs.back().map(|l| l.log_id.index).or(purged).unwrap_or(0);
        let (mark, _) = tokio::sync::watch::channel(Durability { through, writes: 0, failed: false });
        let segment_bytes = segment_bytes.max(1);
        let spares = spares.then(|| {
            let s = Arc::new(Spares::default());
            let (s2, dir) = (s.clone(), dir.to_path_buf());
            std::thread::Builder::new()
                .name("st2kv-log-spare".into())
                .spawn(move || prepare_spares(s2, dir, segment_bytes))
                .map(|_| s)
        });
        let spares = match spares {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => return Err(e),
            None => None,
        };
        Ok(Wal { inner: Mutex::new(inner), durable, segment_bytes, mark, spares })
    }

    /// Wait up to `timeout` for a prepared spare segment (tests).
    pub fn wait_for_spare(&self, timeout: std::time::Duration) -> bool {
        let Some(spares) = &self.spares else { return false };
        let g = spares.lock();
        let (g, _) = spares
            .wake
            .wait_timeout_while(g, timeout, |st| st.ready.is_none() && !st.closed)
            .unwrap_or_else(|p| p.into_inner());
        g.ready.is_some()
    }

    /// The prepared spare, renamed to `to`; `None` if there is none (or the rename failed, and
    /// the spare is dropped: the next one is prepared afresh).
    fn take_spare(&self, to: &Path, dir: &Path) -> Option<File> {
        let spares = self.spares.as_ref()?;
        let mut g = spares.lock();
        let file = g.ready.take()?;
        spares.wake.notify_all();
        match std::fs::rename(dir.join(SPARE_NAME), to) {
            Ok(()) => Some(file),
            Err(e) => {
                tracing::warn!(error = %e, "moving the prepared raft log segment into place failed");
                None
            }
        }
    }

    /// Ask for a spare once the current segment is worth one and none is ready.
    fn want_spare(&self, current_len: u64) {
        let Some(spares) = &self.spares else { return };
        if current_len < SPARE_AFTER.min(self.segment_bytes / 4) {
            return;
        }
        let mut g = spares.lock();
        if g.ready.is_none() && !g.wanted {
            g.wanted = true;
            spares.wake.notify_all();
        }
    }

    /// Whether a prepared spare is waiting.
    fn spare_ready(&self) -> bool {
        self.spares.as_ref().is_some_and(|s| s.lock().ready.is_some())
    }

    /// The current durability mark.
    pub fn durability(&self) -> Durability {
        *self.mark.borrow()
    }

    /// Wait until every entry at or below `index` is durable. An index the log has not reached
    /// has nothing to wait for: no sync would ever vouch for it.
    pub async fn wait_through(&self, index: u64) -> io::Result<()> {
        self.wait_until(|m| {
            // The mark is checked first: taking the log's lock is only needed when it falls short.
            m.through >= index
                || match self.lock().locs.back() {
                    Some(last) => last.log_id.index < index,
                    None => true,
                }
        })
        .await
    }

    /// Wait until every write made before this call is durable.
    pub async fn wait_written(&self) -> io::Result<()> {
        let writes = self.lock().writes;
        self.wait_until(|m| m.writes >= writes).await
    }

    async fn wait_until(&self, done: impl Fn(&Durability) -> bool) -> io::Result<()> {
        let failed = || io::Error::other("a sync of the raft log failed; the node stops vouching for it");
        // The mark is copied out before `done` runs: `done` may take the log's lock, and writers
        // take that lock before the mark's.
        let mut rx: Option<tokio::sync::watch::Receiver<Durability>> = None;
        loop {
            let m = match &mut rx {
                None => *self.mark.borrow(),
                Some(rx) => *rx.borrow_and_update(),
            };
            if m.failed {
                return Err(failed());
            }
            if done(&m) {
                return Ok(());
            }
            match &mut rx {
                None => rx = Some(self.mark.subscribe()),
                Some(rx) => rx.changed().await.map_err(|_| failed())?,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first and last entries' log ids, if the log holds any.
    pub fn bounds(&self) -> Option<(LogId<NodeId>, LogId<NodeId>)> {
        let g = self.lock();
        Some((g.locs.front()?.log_id, g.locs.back()?.log_id))
    }

    pub fn is_empty(&self) -> bool {
        self.lock().locs.is_empty()
    }

    /// How many segment files the log has open.
    pub fn segment_count(&self) -> usize {
        self.lock().segments.len()
    }

    /// Append `entries` (consecutive, continuing the log) with one write. Not yet durable: see
    /// [`Wal::sync`].
    pub fn append(&self, entries: &[Entry<TypeConfig>]) -> io::Result<()> {
        let Some(head) = entries.first() else { return Ok(()) };
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(last) = inner.locs.back() {
            if head.log_id.index != last.log_id.index + 1 {
                return Err(io::Error::other(format!(
                    "append at index {} does not continue the log, which ends at {}",
                    head.log_id.index, last.log_id.index
                )));
            }
        }
        if entries.windows(2).any(|w| w[1].log_id.index != w[0].log_id.index + 1) {
            return Err(io::Error::other("appended entries are not consecutive"));
        }
        let full = match inner.segments.last_key_value() {
            Some((_, s)) => s.len >= self.segment_bytes || (!s.preallocated && self.spare_ready()),
            None => true,
        };
        if full {
            let path = inner.dir.join(segment_name(head.log_id.index));
            let (file, preallocated) = match self.take_spare(&path, &inner.dir) {
                Some(f) => (f, true),
                None => {
                    let f =
                        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
                    (f, false)
                }
            };
            let seg = Segment { file: Arc::new(file), path, len: 0, preallocated };
            inner.segments.insert(head.log_id.index, seg);
            inner.dir_dirty = true;
        }
        let (&seg_first, seg) = inner.segments.last_key_value().expect("a segment exists");
        let mut buf = Vec::new();
        let mut locs = Vec::with_capacity(entries.len());
        for entry in entries {
            // Header first (length and checksum filled in once the payload is written after it).
            let start = buf.len();
            buf.extend_from_slice(&entry.log_id.index.to_le_bytes());
            buf.extend_from_slice(&[0; 8]);
            encode_into(&mut buf, entry);
            let payload_len = (buf.len() - start - HEADER) as u32;
            let crc = checksum(entry.log_id.index, &buf[start + HEADER..]);
            buf[start + 8..start + 12].copy_from_slice(&payload_len.to_le_bytes());
            buf[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
            locs.push(Loc {
                log_id: entry.log_id,
                seg: seg_first,
                offset: seg.len + start as u64,
                len: (buf.len() - start) as u32,
            });
        }
        if let Err(e) = seg.file.write_all_at(&buf, seg.len) {
            // Leave no partial record behind for a later append to land after.
            let _ = seg.file.set_len(seg.len);
            return Err(e);
        }
        let file = seg.file.clone();
        let mut len = 0;
        if let Some(s) = inner.segments.get_mut(&seg_first) {
            s.len += buf.len() as u64;
            len = s.len;
        }
        inner.dirty.insert(seg_first, file);
        inner.locs.extend(locs);
        inner.writes += 1;
        drop(g);
        self.want_spare(len);
        Ok(())
    }

    /// Make everything written so far durable: `fdatasync` of the segments written since the
    /// last sync, and of the directory when segments were created or deleted.
    pub fn sync(&self) -> io::Result<()> {
        let (files, dir, last, writes, epoch) = {
            let mut g = self.lock();
            let files: Vec<Arc<File>> = std::mem::take(&mut g.dirty).into_values().collect();
            let dir = std::mem::replace(&mut g.dir_dirty, false).then(|| g.dir.clone());
            (files, dir, g.locs.back().map(|l| l.log_id.index), g.writes, g.epoch)
        };
        let publish = |result: &io::Result<()>| {
            let g = self.lock();
            self.mark.send_if_modified(|m| {
                let before = *m;
                match result {
                    Err(_) => m.failed = true,
                    Ok(()) => {
                        if g.epoch == epoch {
                            m.through = m.through.max(last.unwrap_or(0));
                        }
                        m.writes = m.writes.max(writes);
                    }
                }
                *m != before
            });
        };
        if !self.durable {
            publish(&Ok(()));
            return Ok(());
        }
        let result = (|| {
            for f in &files {
                f.sync_data()?;
            }
            if let Some(d) = &dir {
                sync_dir(d)?;
            }
            Ok(())
        })();
        if result.is_err() {
            // Nothing may be assumed durable: the next sync covers every segment again.
            let mut g = self.lock();
            let inner = &mut *g;
            inner.dir_dirty |= dir.is_some();
            for (first, seg) in &inner.segments {
                inner.dirty.insert(*first, seg.file.clone());
            }
        }
        publish(&result);
        result
    }

    /// The entries with index in `[start, end)` that the log holds, in order.
    pub fn read(&self, start: u64, end: u64) -> io::Result<Vec<Entry<TypeConfig>>> {
        // Which byte ranges to read, per segment; the lock is not held while reading.
        let runs: Vec<(Arc<File>, u64, Vec<Loc>)> = {
            let g = self.lock();
            let Some(front) = g.locs.front() else { return Ok(Vec::new()) };
            let first = front.log_id.index;
            let lo = start.max(first);
            let hi = end.min(first + g.locs.len() as u64);
            let mut runs: Vec<(Arc<File>, u64, Vec<Loc>)> = Vec::new();
            for i in lo..hi {
                let loc = g.locs[(i - first) as usize];
                match runs.last_mut() {
                    Some((_, seg, locs)) if *seg == loc.seg => locs.push(loc),
                    _ => {
                        let file =
                            g.segments.get(&loc.seg).expect("every entry's segment is open").file.clone();
                        runs.push((file, loc.seg, vec![loc]));
                    }
                }
            }
            runs
        };
        let mut out = Vec::with_capacity(runs.iter().map(|r| r.2.len()).sum());
        for (file, _, locs) in runs {
            let from = locs[0].offset;
            let to = locs.last().map(|l| l.offset + l.len as u64).unwrap_or(from);
            let mut buf = vec![0u8; (to - from) as usize];
            file.read_exact_at(&mut buf, from)?;
            for loc in locs {
                let rec = &buf[(loc.offset - from) as usize..(loc.offset - from) as usize + loc.len as usize];
                let payload = &rec[HEADER..];
                let crc = u32::from_le_bytes(rec[12..16].try_into().expect("4 bytes"));
                if crc != checksum(loc.log_id.index, payload) {
                    return Err(corrupt(format!("raft log entry {} fails its checksum", loc.log_id.index)));
                }
                out.push(decode(payload).map_err(|e| corrupt(e.to_string()))?);
            }
        }
        Ok(out)
    }

    /// Delete the entries from `since` on: later segments go, the one holding `since` is cut.
    /// Not yet durable: see [`Wal::sync`].
    pub fn truncate(&self, since: u64) -> io::Result<()> {
        let mut g = self.lock();
        let inner = &mut *g;
        // Whatever happens below, entries from `since` on are no longer vouched for.
        inner.epoch += 1;
        inner.writes += 1;
        self.mark.send_if_modified(|m| {
            let before = m.through;
            m.through = m.through.min(since.saturating_sub(1));
            m.through != before
        });
        let Some(front) = inner.locs.front() else { return Ok(()) };
        let first = front.log_id.index;
        if since < first {
            // Everything goes.
            inner.locs.clear();
        } else if since - first >= inner.locs.len() as u64 {
            return Ok(());
        }
        let cut = inner.locs.get((since.saturating_sub(first)) as usize).copied();
        inner.locs.truncate(since.saturating_sub(first) as usize);
        // Later segments first, so a crash midway leaves a longer log, never a hole.
        let keep_seg = cut.map(|c| c.seg);
        let doomed: Vec<u64> = inner
            .segments
            .keys()
            .copied()
            .filter(|s| match keep_seg {
                Some(k) => *s > k || (*s == k && cut.is_some_and(|c| c.offset == 0)),
                None => true,
            })
            .rev()
            .collect();
        inner.delete_segments(doomed)?;
        if let Some(c) = cut {
            if let Some(seg) = inner.segments.get_mut(&c.seg) {
                seg.file.set_len(c.offset)?;
                seg.len = c.offset;
                seg.preallocated = false;
                inner.dirty.insert(c.seg, seg.file.clone());
            }
        }
        Ok(())
    }

    /// Forget the entries up to and including `upto`, deleting the segments that hold nothing
    /// newer. The caller has made the purge point durable first.
    pub fn purge(&self, upto: u64) -> io::Result<()> {
        let mut g = self.lock();
        let inner = &mut *g;
        while inner.locs.front().is_some_and(|l| l.log_id.index <= upto) {
            inner.locs.pop_front();
        }
        // What is purged is covered by a durable snapshot.
        self.mark.send_if_modified(|m| {
            let before = m.through;
            m.through = m.through.max(upto);
            m.through != before
        });
        inner.delete_segments_before_first_entry()
    }
}

/// Read the records of one segment into `locs`; returns the length of its intact prefix, and
/// whether everything after that prefix is zeros (a preallocated segment's unused end).
fn scan(file: &File, first: u64, purged: Option<u64>, locs: &mut VecDeque<Loc>) -> io::Result<(u64, bool)> {
    let len = file.metadata()?.len();
    let mut data = Vec::with_capacity(len as usize);
    io::Read::read_to_end(&mut io::BufReader::new(file), &mut data)?;
    let mut pos = 0usize;
    while pos + HEADER <= data.len() {
        let index = u64::from_le_bytes(data[pos..pos + 8].try_into().expect("8 bytes"));
        let plen = u32::from_le_bytes(data[pos + 8..pos + 12].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[pos + 12..pos + 16].try_into().expect("4 bytes"));
        let Some(payload) = data.get(pos + HEADER..pos + HEADER + plen) else { break };
        if crc != checksum(index, payload) {
            break;
        }
        if purged.is_none() || purged.is_some_and(|p| index > p) {
            if let Some(prev) = locs.back() {
                if index != prev.log_id.index + 1 {
                    return Err(corrupt(format!(
                        "raft log segment {first}: entry {index} follows {}",
                        prev.log_id.index
                    )));
                }
            }
            let entry: Entry<TypeConfig> = decode(payload).map_err(|e| corrupt(e.to_string()))?;
            locs.push_back(Loc {
                log_id: entry.log_id,
                seg: first,
                offset: pos as u64,
                len: (HEADER + plen) as u32,
            });
        }
        pos += HEADER + plen;
    }
    Ok((pos as u64, data[pos..].iter().all(|&b| b == 0)))
}
