//! The Raft log files: what survives a restart, a torn last write, damage, purges, truncations,
//! and the move of an older store's log out of sled.

mod common;
use common::retry_locked;
use std::io::Write;
use std::path::Path;

use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
use st2kv_raft::codec::encode;
use st2kv_raft::wal::Wal;
use st2kv_raft::{store, Command, KeyId, Op, Request, TypeConfig};
use tempfile::TempDir;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// An entry whose payload says which index it was written for, so a read can check it.
fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    let cmd = Command::Put {
        key: KeyId::system(format!("k{index}")),
        value: format!("value of entry {index} in term {term}"),
        secret: false,
        description: None,
        expire_at_ms: None,
        now_ms: 0,
        new_id: format!("id{index}"),
        cond: st2kv_raft::Cond::Always,
    };
    let req = Request {
        id: Some(index as u128),
        proposed_at_ms: 0,
        ops: vec![Op { cmd, guards: vec![] }],
        also: vec![],
    };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(req) }
}

fn entries(term: u64, range: std::ops::Range<u64>) -> Vec<Entry<TypeConfig>> {
    range.map(|i| entry(term, i)).collect()
}

fn ids(es: &[Entry<TypeConfig>]) -> Vec<(u64, u64)> {
    es.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect()
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn entries_survive_a_restart_across_segments() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("wal");
    {
        let wal = Wal::open_with_segment_size(&dir, None, true, 1024).unwrap();
        for chunk in entries(1, 1..41).chunks(3) {
            wal.append(chunk).unwrap();
        }
        wal.sync().unwrap();
        assert!(wal.segment_count() >= 3, "small segments roll over: {}", wal.segment_count());
    }
    let wal = Wal::open_with_segment_size(&dir, None, true, 1024).unwrap();
    assert_eq!(wal.bounds(), Some((log_id(1, 1), log_id(1, 40))));
    assert_eq!(ids(&wal.read(0, u64::MAX).unwrap()), ids(&entries(1, 1..41)));
    assert_eq!(ids(&wal.read(7, 19).unwrap()), ids(&entries(1, 7..19)));
    // Reads outside the log return what overlaps, nothing more.
    assert_eq!(ids(&wal.read(39, 100).unwrap()), ids(&entries(1, 39..41)));
    assert!(wal.read(41, 50).unwrap().is_empty());
}

#[test]
fn an_unfinished_last_write_is_cut_off_and_the_log_goes_on() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("wal");
    {
        let wal = Wal::open(&dir, None, true).unwrap();
        wal.append(&entries(1, 1..6)).unwrap();
        wal.sync().unwrap();
    }
    // A crash in the middle of the next append: half a record at the end of the file.
    let last = dir.join(segments(&dir).last().unwrap());
    let whole = {
        let tmp2 = TempDir::new().unwrap();
        let w = Wal::open(tmp2.path(), None, false).unwrap();
        w.append(&entries(1, 6..7)).unwrap();
        std::fs::read(tmp2.path().join(segments(tmp2.path())[0].clone())).unwrap()
    };
    let before = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&whole[..whole.len() / 2])
        .unwrap();

    let wal = Wal::open(&dir, None, true).unwrap();
    assert_eq!(wal.bounds(), Some((log_id(1, 1), log_id(1, 5))));
    assert_eq!(std::fs::metadata(&last).unwrap().len(), before, "the torn record is cut off");
    wal.append(&entries(1, 6..8)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(&dir, None, true).unwrap();
    assert_eq!(ids(&wal.read(0, u64::MAX).unwrap()), ids(&entries(1, 1..8)));
}

#[test]
fn damage_before_the_last_segment_refuses_to_open() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("wal");
    {
        let wal = Wal::open_with_segment_size(&dir, None, true, 512).unwrap();
        for e in entries(1, 1..20) {
            wal.append(&[e]).unwrap();
        }
        wal.sync().unwrap();
        assert!(wal.segment_count() >= 2);
    }
    let first = dir.join(&segments(&dir)[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let err = Wal::open_with_segment_size(&dir, None, true, 512).err().expect("a damaged log must not open");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
}

#[test]
fn a_flipped_byte_in_a_kept_entry_is_an_error_on_read_not_a_wrong_entry() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("wal");
    let wal = Wal::open(&dir, None, true).unwrap();
    wal.append(&entries(1, 1..4)).unwrap();
    wal.sync().unwrap();
    let seg = dir.join(&segments(&dir)[0]);
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x01;
    std::fs::write(&seg, bytes).unwrap();
    assert!(wal.read(1, 3).is_ok(), "the intact entries still read");
    assert!(wal.read(3, 4).is_err(), "the damaged one does not");
}

#[test]
fn truncate_and_purge_delete_whole_segments_and_survive_a_restart() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("wal");
    let open = || Wal::open_with_segment_size(&dir, None, true, 600).unwrap();
    let wal = open();
    for e in entries(1, 1..31) {
        wal.append(&[e]).unwrap();
    }
    wal.sync().unwrap();
    let before = wal.segment_count();

    // A new leader overwrites the tail from 12 on.
    wal.truncate(12).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.bounds(), Some((log_id(1, 1), log_id(1, 11))));
    assert!(wal.segment_count() < before, "segments past the cut are deleted");
    wal.append(&entries(2, 12..16)).unwrap();
    wal.sync().unwrap();

    wal.purge(9).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.bounds().map(|b| b.0), Some(log_id(1, 10)));
    let kept = segments(&dir);
    drop(wal);

    // Purged entries left in a kept segment are skipped after a restart.
    let wal = Wal::open_with_segment_size(&dir, Some(9), true, 600).unwrap();
    let mut want = entries(1, 10..12);
    want.extend(entries(2, 12..16));
    assert_eq!(ids(&wal.read(0, u64::MAX).unwrap()), ids(&want));
    assert_eq!(segments(&dir), kept);

    // Purging everything deletes every file; the next append starts a new one.
    wal.purge(100).unwrap();
    assert!(wal.is_empty());
    assert!(segments(&dir).is_empty());
    wal.append(&entries(3, 101..103)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(&dir, Some(100), true).unwrap();
    assert_eq!(ids(&wal.read(0, u64::MAX).unwrap()), ids(&entries(3, 101..103)));
}

#[test]
fn an_append_that_does_not_continue_the_log_is_refused() {
    let tmp = TempDir::new().unwrap();
    // Segments of one byte: every accepted append starts a new file.
    let wal = Wal::open_with_segment_size(tmp.path(), None, false, 1).unwrap();
    wal.append(&entries(1, 1..3)).unwrap();
    assert!(wal.append(&entries(1, 4..5)).is_err());
    assert!(wal.append(&entries(1, 2..3)).is_err());
    assert!(wal.append(&[entry(1, 3), entry(1, 5)]).is_err(), "a gap inside one append");
    assert_eq!(wal.bounds(), Some((log_id(1, 1), log_id(1, 2))));
    assert_eq!(segments(tmp.path()).len(), 1, "a refused append leaves no file behind");
}

/// A data dir written by a version that kept the log in sled's `raft_log` tree opens with the
/// same log, now in files, and the tree is gone.
#[tokio::test]
async fn a_log_kept_in_sled_by_an_earlier_version_moves_into_the_files() {
    let tmp = TempDir::new().unwrap();
    {
        let db = sled::open(tmp.path().join("sled")).unwrap();
        let old = db.open_tree("raft_log").unwrap();
        for e in entries(1, 1..51) {
            old.insert(e.log_id.index.to_be_bytes(), encode(&e)).unwrap();
        }
        db.flush().unwrap();
    }
    let mut s = retry_locked(|| store::open(tmp.path(), true));
    let state = s.log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 50)));
    let read = s.log.try_get_log_entries(1..51).await.unwrap();
    assert_eq!(ids(&read), ids(&entries(1, 1..51)));
    assert!(!segments(&tmp.path().join("wal")).is_empty());
    drop(s);
    let db = retry_locked(|| sled::open(tmp.path().join("sled")));
    assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"raft_log"), "the old tree is dropped");
}

// ---------------------------------------------------------------------------------------------
// The durability mark: what the store waits on instead of openraft's flush report

/// Whether `fut` is still pending after giving every other task a chance to run.
async fn still_pending<F: std::future::Future>(fut: &mut std::pin::Pin<&mut F>) -> bool {
    tokio::time::timeout(std::time::Duration::from_millis(50), fut.as_mut()).await.is_err()
}

#[tokio::test]
async fn an_append_counts_as_durable_only_after_a_sync() {
    let tmp = TempDir::new().unwrap();
    let wal = Wal::open(tmp.path(), None, true).unwrap();
    wal.append(&entries(1, 1..4)).unwrap();
    assert_eq!(wal.durability().through, 0);

    let through = wal.wait_through(3);
    tokio::pin!(through);
    let written = wal.wait_written();
    tokio::pin!(written);
    assert!(still_pending(&mut through).await, "written is not durable");
    assert!(still_pending(&mut written).await);

    wal.sync().unwrap();
    through.await.unwrap();
    written.await.unwrap();
    assert_eq!(wal.durability().through, 3);
    // Past the end of the log there is nothing a sync could vouch for: no waiting.
    wal.wait_through(10).await.unwrap();
}

#[tokio::test]
async fn a_truncation_takes_back_the_mark_until_the_new_entries_are_synced() {
    let tmp = TempDir::new().unwrap();
    let wal = Wal::open(tmp.path(), None, true).unwrap();
    wal.append(&entries(1, 1..6)).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.durability().through, 5);

    // A new leader's entries replace 3..: the old ones were durable, these are not yet.
    wal.truncate(3).unwrap();
    assert_eq!(wal.durability().through, 2);
    wal.append(&entries(2, 3..5)).unwrap();
    let through = wal.wait_through(4);
    tokio::pin!(through);
    assert!(still_pending(&mut through).await);
    wal.sync().unwrap();
    through.await.unwrap();
    assert_eq!(wal.durability().through, 4);

    // Purged entries are covered by a durable snapshot.
    wal.purge(4).unwrap();
    wal.truncate(5).unwrap();
    assert_eq!(wal.durability().through, 4);
}

#[test]
fn a_reopened_log_is_durable_through_its_last_entry() {
    let tmp = TempDir::new().unwrap();
    {
        let wal = Wal::open(tmp.path(), None, true).unwrap();
        wal.append(&entries(1, 1..8)).unwrap();
        // No sync: a process that died here left the entries in the page cache; opening syncs.
    }
    let wal = Wal::open(tmp.path(), None, true).unwrap();
    assert_eq!(wal.durability().through, 7);
    assert_eq!(wal.durability().writes, 0);
}

// ---------------------------------------------------------------------------------------------
// Preallocated segments

const SMALL_SEGMENT: u64 = 4096;

fn wal_files(dir: &Path) -> Vec<String> {
    segments(dir).into_iter().filter(|n| n.ends_with(".wal")).collect()
}

/// Where the records of a segment file end: the first all-zero header.
fn end_of_records(bytes: &[u8]) -> usize {
    let mut pos = 0;
    while pos + 16 <= bytes.len() && bytes[pos..pos + 16].iter().any(|&b| b != 0) {
        pos += 16 + u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
    }
    pos
}

/// A log with small segments that has moved into a preallocated one: entries 1..=n, the last
/// segment zero-filled past its records.
fn log_in_a_preallocated_segment(dir: &Path) -> u64 {
    let wal = Wal::open_with_spares(dir, None, SMALL_SEGMENT).unwrap();
    let mut next = 1;
    // A quarter of a segment written asks for a spare.
    loop {
        wal.append(&entries(1, next..next + 1)).unwrap();
        next += 1;
        if std::fs::metadata(dir.join(&wal_files(dir)[0])).unwrap().len() >= SMALL_SEGMENT / 4 {
            break;
        }
    }
    assert!(wal.wait_for_spare(std::time::Duration::from_secs(10)), "a spare segment is prepared");
    // The first segment was a plain file: the next append moves into the spare at once.
    wal.append(&entries(1, next..next + 2)).unwrap();
    next += 2;
    wal.sync().unwrap();
    let files = wal_files(dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let last = std::fs::read(dir.join(&files[1])).unwrap();
    assert_eq!(last.len() as u64, SMALL_SEGMENT, "the new segment was preallocated");
    assert!(end_of_records(&last) < last.len(), "zeros follow its records");
    next - 1
}

#[test]
fn a_log_moves_into_preallocated_segments_and_reopens_past_their_zeros() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("wal");
    let last = log_in_a_preallocated_segment(&dir);

    let wal = Wal::open_with_spares(&dir, None, SMALL_SEGMENT).unwrap();
    assert_eq!(wal.bounds(), Some((log_id(1, 1), log_id(1, last))), "the zero tail is not an entry");
    let kept = dir.join(&wal_files(&dir)[1]);
    assert_eq!(std::fs::metadata(&kept).unwrap().len(), SMALL_SEGMENT, "nor damage to cut off");
    // Appends go on right after the last record, not after the zeros, and roll over as usual.
    for i in last + 1..last + 60 {
        wal.append(&entries(1, i..i + 1)).unwrap();
    }
    wal.sync().unwrap();
    assert!(wal_files(&dir).len() >= 3);
    drop(wal);
    let wal = Wal::open_with_spares(&dir, None, SMALL_SEGMENT).unwrap();
    assert_eq!(ids(&wal.read(0, u64::MAX).unwrap()), ids(&entries(1, 1..last + 60)));
}

#[test]
fn a_torn_write_into_a_preallocated_segment_is_cut_off() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("wal");
    let last = log_in_a_preallocated_segment(&dir);
    // A crash in the middle of the next append: half a record right after the last one.
    let path = dir.join(wal_files(&dir).last().unwrap());
    let end = end_of_records(&std::fs::read(&path).unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xab; 40], end as u64).unwrap();
    drop(f);

    let wal = Wal::open_with_spares(&dir, None, SMALL_SEGMENT).unwrap();
    assert_eq!(wal.bounds(), Some((log_id(1, 1), log_id(1, last))));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), end as u64, "the torn record is cut off");
    wal.append(&entries(1, last + 1..last + 3)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open_with_spares(&dir, None, SMALL_SEGMENT).unwrap();
    assert_eq!(ids(&wal.read(0, u64::MAX).unwrap()), ids(&entries(1, 1..last + 3)));
}

#[test]
fn a_spare_left_by_a_crash_is_not_part_of_the_log() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("wal");
    {
        let wal = Wal::open(&dir, None, true).unwrap();
        wal.append(&entries(1, 1..4)).unwrap();
        wal.sync().unwrap();
    }
    // Even a spare that looks like a segment (here: a copy of one, with entries 1..3) is ignored.
    let seg = dir.join(&wal_files(&dir)[0]);
    std::fs::copy(&seg, dir.join(st2kv_raft::wal::SPARE_NAME)).unwrap();
    let wal = Wal::open_with_spares(&dir, None, SMALL_SEGMENT).unwrap();
    assert_eq!(wal.bounds(), Some((log_id(1, 1), log_id(1, 3))));
    assert!(!dir.join(st2kv_raft::wal::SPARE_NAME).exists(), "the leftover spare is removed");
    wal.append(&entries(1, 4..6)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open_with_spares(&dir, None, SMALL_SEGMENT).unwrap();
    assert_eq!(ids(&wal.read(0, u64::MAX).unwrap()), ids(&entries(1, 1..6)));
}
