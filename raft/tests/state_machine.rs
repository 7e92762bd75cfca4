//! The state machine, driven directly through openraft's storage-v2 traits: entries built by
//! hand go into `RaftStateMachine::apply`, snapshots are built on one store and installed on
//! another, and every effect is checked through `store::StateView`, the node's read path.

mod common;
use common::retry_locked;
use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::RaftStateMachine;
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, StoredMembership,
};
use st2kv_raft::store::{self, Store, DEDUP_WINDOW_MS};
use st2kv_raft::{Command, KeyId, Node, NodeId, Op, Outcome, Record, Request, Response, Scope, TypeConfig};
use tempfile::TempDir;

/// An arbitrary "now" for the proposers' clocks, in unix ms.
const T0: i64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------------------------
// Helpers

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64, proposed_at_ms: i64, ops: Vec<Op>) -> Entry<TypeConfig> {
    batch(term, index, proposed_at_ms, None, ops)
}

/// An entry holding one batch, with or without a request id.
fn batch(term: u64, index: u64, proposed_at_ms: i64, id: Option<u128>, ops: Vec<Op>) -> Entry<TypeConfig> {
    entry(term, index, Request { id, proposed_at_ms, ops, also: vec![] })
}

fn entry(term: u64, index: u64, req: Request) -> Entry<TypeConfig> {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(req) }
}

/// A put of a plain, non-expiring value. The id it would give a new key is derived from the value,
/// so a test can tell whether an update kept the old id.
fn put(key: KeyId, value: &str, now_ms: i64) -> Command {
    Command::Put {
        key,
        value: value.into(),
        secret: false,
        description: None,
        expire_at_ms: None,
        now_ms,
        new_id: format!("id-{value}"),
        cond: st2kv_raft::Cond::Always,
    }
}

fn expiring_at(mut cmd: Command, at_ms: i64) -> Command {
    if let Command::Put { expire_at_ms, .. } = &mut cmd {
        *expire_at_ms = Some(at_ms);
    }
    cmd
}

fn delete(key: KeyId, now_ms: i64) -> Command {
    Command::Delete { key, now_ms }
}

fn op(cmd: Command) -> Op {
    Op { cmd, guards: vec![] }
}

async fn read_all(mut data: Box<tokio::fs::File>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes).await.expect("read snapshot data");
    bytes
}

/// Write `bytes` into a receiving snapshot of `r` in small chunks, as openraft's transport does.
async fn receive(r: &mut Replica, bytes: &[u8]) -> Box<tokio::fs::File> {
    use tokio::io::AsyncWriteExt;
    let mut rx = r.store.state_machine.begin_receiving_snapshot().await.expect("begin receiving");
    for chunk in bytes.chunks(7) {
        rx.write_all(chunk).await.expect("write chunk");
    }
    rx.shutdown().await.expect("flush");
    rx
}

/// One node's store in a temp dir, with a log-index counter for the entries it is fed.
struct Replica {
    dir: TempDir,
    store: Store,
    last_index: u64,
}

impl Replica {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store::open(dir.path(), false).expect("open store");
        Replica { dir, store, last_index: 0 }
    }

    /// Stop the store as a node shutting down gracefully does, and open it again.
    fn reopen(self) -> Self {
        self.store.closer.close_blocking().expect("close the state machine");
        self.crash_and_reopen()
    }

    /// Drop the store without closing it, in the middle of applying a put of `torn_key` at the
    /// next index: what a killed process leaves when sled kept the first records of an apply
    /// (the "applying" mark in `raft_meta`, then the key) but not its applied log id. Then open it
    /// again.
    fn crash_midway_and_reopen(self, torn_key: &KeyId) -> Self {
        let Replica { dir, store, last_index } = self;
        drop(store);
        let db = retry_locked(|| sled::open(dir.path().join("sled")));
        let meta = db.open_tree("raft_meta").unwrap();
        let sm = db.open_tree("sm").unwrap();
        meta.insert("applying", st2kv_raft::codec::encode(&log_id(1, last_index + 1))).unwrap();
        let half_applied = Record {
            id: "torn".into(),
            value: "half applied".into(),
            secret: false,
            description: None,
            expire_at_ms: None,
            created_ms: T0,
            updated_ms: T0,
            revision: last_index + 1,
        };
        sm.insert(st2kv_raft::layout::kv_key(torn_key), st2kv_raft::codec::encode(&half_applied)).unwrap();
        db.flush().unwrap();
        drop((meta, sm, db));
        let store = retry_locked(|| store::open(dir.path(), false));
        Replica { dir, store, last_index }
    }

    /// Drop the store without closing it, as a killed process would, and open it again.
    fn crash_and_reopen(self) -> Self {
        let Replica { dir, store, last_index } = self;
        drop(store);
        let store = retry_locked(|| store::open(dir.path(), false));
        Replica { dir, store, last_index }
    }

    /// Apply entries exactly as openraft would hand them over.
    async fn apply(&mut self, entries: Vec<Entry<TypeConfig>>) -> Vec<Response> {
        if let Some(last) = entries.last() {
            self.last_index = last.log_id.index;
        }
        self.store.state_machine.apply(entries).await.expect("apply")
    }

    /// Apply one normal entry (term 1, the next index) holding `ops`, proposed at `at_ms`.
    async fn propose(&mut self, at_ms: i64, ops: Vec<Op>) -> Vec<Outcome> {
        self.propose_batch(at_ms, None, ops).await
    }

    /// [`Replica::propose`] of a batch that carries a request id (as the node's batcher sends).
    async fn propose_batch(&mut self, at_ms: i64, id: Option<u128>, ops: Vec<Op>) -> Vec<Outcome> {
        let entry = batch(1, self.last_index + 1, at_ms, id, ops);
        let mut responses = self.apply(vec![entry]).await;
        assert_eq!(responses.len(), 1, "one response per entry");
        responses.remove(0).outcomes
    }

    /// Shorthand for a single op without a request id.
    async fn run(&mut self, at_ms: i64, cmd: Command) -> Outcome {
        let mut outcomes = self.propose(at_ms, vec![op(cmd)]).await;
        assert_eq!(outcomes.len(), 1, "one outcome per op");
        outcomes.remove(0)
    }

    fn get(&self, key: &KeyId, now_ms: i64) -> Option<Record> {
        self.store.view.get(key, now_ms).expect("get")
    }

    fn value(&self, key: &KeyId, now_ms: i64) -> Option<String> {
        self.get(key, now_ms).map(|r| r.value)
    }

    /// Key refs of a full prefix listing.
    fn list(&self, scope: Scope, user: &str, prefix: &str, now_ms: i64) -> Vec<String> {
        self.page(scope, user, prefix, 0, None, now_ms)
    }

    fn page(
        &self,
        scope: Scope,
        user: &str,
        prefix: &str,
        offset: usize,
        limit: Option<usize>,
        now_ms: i64,
    ) -> Vec<String> {
        let listed = self.store.view.list(scope, user, prefix, offset, limit, now_ms).expect("list");
        listed.into_iter().map(|(k, _)| k.key_ref()).collect()
    }

    fn ops_applied(&self) -> u64 {
        self.store.view.ops_applied().expect("ops_applied")
    }

    fn has_expired(&self, now_ms: i64) -> bool {
        self.store.view.has_expired(now_ms).expect("has_expired")
    }

    fn state_hash(&self) -> u64 {
        self.store.view.state_hash().expect("state_hash")
    }

    async fn applied_state(&mut self) -> (Option<LogId<NodeId>>, StoredMembership<NodeId, Node>) {
        self.store.state_machine.applied_state().await.expect("applied_state")
    }
}

fn three_node_membership() -> Membership<NodeId, Node> {
    let nodes: BTreeMap<NodeId, Node> = (1..=3)
        .map(|id| (id, Node { rpc_addr: format!("10.0.0.{id}:7000"), api_addr: format!("10.0.0.{id}:9101") }))
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

// ---------------------------------------------------------------------------------------------
// 1. Put, update, delete

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_creates_then_updates_and_delete_answers_deleted_then_not_found() {
    let mut r = Replica::new();
    let key = KeyId::system("app.colour");

    // Entry 1 creates the key: the proposer's id and clock, the entry's index as revision.
    let created = Record {
        id: "id-red".into(),
        value: "red".into(),
        secret: false,
        description: None,
        expire_at_ms: None,
        created_ms: T0,
        updated_ms: T0,
        revision: 1,
    };
    assert_eq!(
        r.run(T0, put(key.clone(), "red", T0)).await,
        Outcome::Put { record: created.clone(), created: true }
    );
    assert_eq!(r.get(&key, T0), Some(created));

    // Entry 2 replaces it: same id and creation time, new value, update time and revision.
    let updated = Record {
        id: "id-red".into(),
        value: "blue".into(),
        secret: false,
        description: None,
        expire_at_ms: None,
        created_ms: T0,
        updated_ms: T0 + 5,
        revision: 2,
    };
    assert_eq!(
        r.run(T0 + 5, put(key.clone(), "blue", T0 + 5)).await,
        Outcome::Put { record: updated.clone(), created: false }
    );
    assert_eq!(r.get(&key, T0 + 5), Some(updated.clone()));

    // Entry 3 deletes it and returns what was there; entry 4 finds nothing left.
    assert_eq!(r.run(T0 + 6, delete(key.clone(), T0 + 6)).await, Outcome::Deleted { record: updated });
    assert_eq!(r.get(&key, T0 + 6), None);
    assert_eq!(r.run(T0 + 7, delete(key.clone(), T0 + 7)).await, Outcome::NotFound);

    // A put after the delete is a creation again, with the new id.
    match r.run(T0 + 8, put(key.clone(), "green", T0 + 8)).await {
        Outcome::Put { record, created } => {
            assert!(created);
            assert_eq!((record.id.as_str(), record.created_ms, record.revision), ("id-green", T0 + 8, 5));
        }
        other => panic!("expected a put, got {other:?}"),
    }
    assert_eq!(r.ops_applied(), 5);
}

// ---------------------------------------------------------------------------------------------
// 2. Scopes and owners

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_and_user_scopes_and_different_users_never_clash() {
    let mut r = Replica::new();
    let sys = KeyId::system("token");
    let alice = KeyId::user("alice", "token");
    let alice2 = KeyId::user("alice2", "token");
    r.propose(
        T0,
        vec![
            op(put(sys.clone(), "system-value", T0)),
            op(put(alice.clone(), "alice-value", T0)),
            op(put(alice2.clone(), "alice2-value", T0)),
            op(put(KeyId::user("alice2", "tokenizer"), "alice2-other", T0)),
            // A system key whose name looks like alice's key reference.
            op(put(KeyId::system("alice:token"), "lookalike", T0)),
        ],
    )
    .await;

    assert_eq!(r.value(&sys, T0).as_deref(), Some("system-value"));
    assert_eq!(r.value(&alice, T0).as_deref(), Some("alice-value"));
    assert_eq!(r.value(&alice2, T0).as_deref(), Some("alice2-value"));

    // Each listing sees its own keys only: alice is a prefix of alice2, yet they stay apart.
    assert_eq!(r.list(Scope::User, "alice", "", T0), ["alice:token"]);
    assert_eq!(r.list(Scope::User, "alice2", "", T0), ["alice2:token", "alice2:tokenizer"]);
    assert_eq!(r.list(Scope::User, "alice2", "tokeni", T0), ["alice2:tokenizer"]);
    assert_eq!(r.list(Scope::System, "", "", T0), ["alice:token", "token"]);
    assert!(r.list(Scope::User, "ali", "", T0).is_empty());
    assert!(r.list(Scope::User, "", "", T0).is_empty());

    // Deleting alice's key leaves the same name elsewhere alone.
    assert!(matches!(r.run(T0, delete(alice.clone(), T0)).await, Outcome::Deleted { .. }));
    assert_eq!(r.get(&alice, T0), None);
    assert_eq!(r.value(&sys, T0).as_deref(), Some("system-value"));
    assert_eq!(r.value(&alice2, T0).as_deref(), Some("alice2-value"));
    assert_eq!(r.list(Scope::System, "", "", T0), ["alice:token", "token"]);
}

// ---------------------------------------------------------------------------------------------
// 3. TTL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_hidden_then_purged_and_replaced_expiries_are_forgotten() {
    let mut r = Replica::new();
    let ephemeral = KeyId::system("ephemeral");
    let durable = KeyId::system("durable");
    let renewed = KeyId::system("renewed");
    let extended = KeyId::system("extended");
    let expires = T0 + 1_000;

    // `renewed` and `extended` first expire at `expires`, then are replaced by a put without an
    // expiry and by one with a later expiry: their old expiry must be gone from the index.
    r.propose(
        T0,
        vec![
            op(put(durable.clone(), "d", T0)),
            op(expiring_at(put(renewed.clone(), "r1", T0), expires)),
            op(expiring_at(put(extended.clone(), "e1", T0), expires)),
        ],
    )
    .await;
    assert!(r.has_expired(expires));
    r.propose(
        T0 + 1,
        vec![
            op(put(renewed.clone(), "r2", T0 + 1)),
            op(expiring_at(put(extended.clone(), "e2", T0 + 1), T0 + 5_000)),
        ],
    )
    .await;
    assert!(!r.has_expired(expires), "replaced keys left stale expiry index entries");

    r.run(T0 + 2, expiring_at(put(ephemeral.clone(), "x", T0 + 2), expires)).await;

    // Readable up to the instant before expiry; hidden from it on (expiry is inclusive).
    assert_eq!(r.value(&ephemeral, expires - 1).as_deref(), Some("x"));
    assert_eq!(r.list(Scope::System, "", "", expires - 1), ["durable", "ephemeral", "extended", "renewed"]);
    assert!(!r.has_expired(expires - 1));
    assert_eq!(r.get(&ephemeral, expires), None);
    assert_eq!(r.list(Scope::System, "", "", expires), ["durable", "extended", "renewed"]);
    assert!(r.has_expired(expires));
    assert_eq!(r.store.view.key_count(), 4, "hidden but still stored until purged");

    // A purge removes exactly the expired key.
    assert_eq!(r.run(expires, Command::PurgeExpired { now_ms: expires }).await, Outcome::Purged { count: 1 });
    assert_eq!(r.store.view.key_count(), 3);
    assert!(!r.has_expired(expires));
    assert_eq!(r.list(Scope::System, "", "", expires), ["durable", "extended", "renewed"]);
    assert_eq!(r.run(expires, Command::PurgeExpired { now_ms: expires }).await, Outcome::Purged { count: 0 });

    // Later, the extended key expires and is purged too; the renewed one never is.
    assert!(r.has_expired(T0 + 5_000));
    assert_eq!(
        r.run(T0 + 5_000, Command::PurgeExpired { now_ms: T0 + 5_000 }).await,
        Outcome::Purged { count: 1 }
    );
    assert!(!r.has_expired(i64::MAX / 2));
    assert_eq!(r.list(Scope::System, "", "", i64::MAX / 2), ["durable", "renewed"]);
    assert_eq!(r.value(&renewed, i64::MAX / 2).as_deref(), Some("r2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_but_unpurged_key_is_gone_for_put_and_delete() {
    let mut r = Replica::new();
    let key = KeyId::user("bob", "session");
    let expires = T0 + 1_000;
    r.run(T0, expiring_at(put(key.clone(), "s1", T0), expires)).await;

    // Deleting it after expiry answers NotFound (and drops it from storage).
    assert_eq!(r.run(expires, delete(key.clone(), expires)).await, Outcome::NotFound);
    assert_eq!(r.store.view.key_count(), 0);
    assert!(!r.has_expired(expires));

    // Writing over an expired key is a creation: new id, new creation time.
    r.run(T0, expiring_at(put(key.clone(), "s2", T0), expires)).await;
    match r.run(expires + 1, put(key.clone(), "s3", expires + 1)).await {
        Outcome::Put { record, created } => {
            assert!(created, "an expired key must not be updated in place");
            assert_eq!(record.id, "id-s3");
            assert_eq!(record.created_ms, expires + 1);
            assert_eq!(record.expire_at_ms, None);
        }
        other => panic!("expected a put, got {other:?}"),
    }
    assert!(!r.has_expired(i64::MAX / 2));
}

// ---------------------------------------------------------------------------------------------
// 4. Request ids

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_request_id_is_applied_once_and_the_retry_gets_the_first_outcomes() {
    let mut r = Replica::new();
    let key = KeyId::system("counter");
    let mut described = put(key.clone(), "1", T0);
    if let Command::Put { description, .. } = &mut described {
        *description = Some("counts".into());
    }
    let ops = vec![op(described), op(delete(KeyId::system("absent"), T0))];

    let first = r.propose_batch(T0, Some(7), ops.clone()).await;
    assert!(matches!(
        &first[..],
        [Outcome::Put { created: true, record }, Outcome::NotFound]
            if record.revision == 1 && record.value == "1" && record.description.as_deref() == Some("counts")
    ));
    assert_eq!(r.ops_applied(), 2);

    // Entry 2 carries the same batch again (a forwarding retry after a lost answer).
    let second = r.propose_batch(T0 + 10, Some(7), ops).await;
    assert_eq!(second, first, "a retry is answered with the first outcomes, value and description too");
    assert_eq!(r.ops_applied(), 2, "nothing was applied again");
    assert_eq!(r.get(&key, T0).map(|rec| rec.revision), Some(1), "the retry did not write");

    // A different id with the same content is a different batch.
    let other = r.propose_batch(T0 + 11, Some(8), vec![op(put(key.clone(), "1", T0))]).await;
    assert!(matches!(&other[..], [Outcome::Put { created: false, record }] if record.revision == 3));

    // Two entries with the same id in one apply call: the second sees the first's memory.
    let twice = vec![op(put(key.clone(), "2", T0 + 20))];
    let responses = r
        .apply(vec![batch(1, 4, T0 + 20, Some(9), twice.clone()), batch(1, 5, T0 + 21, Some(9), twice)])
        .await;
    assert_eq!(responses[0].outcomes, responses[1].outcomes);
    assert!(
        matches!(&responses[0].outcomes[..], [Outcome::Put { created: false, record }] if record.revision == 4)
    );
    assert_eq!(r.ops_applied(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_forgotten_after_the_dedup_window() {
    let mut r = Replica::new();
    let key = KeyId::system("k");
    let retried = vec![op(put(key.clone(), "v", T0))];

    r.propose_batch(T0, Some(42), retried.clone()).await; // entry 1
    assert_eq!(r.ops_applied(), 1);

    // Exactly one window later the id is still remembered.
    let at_edge = r.propose_batch(T0 + DEDUP_WINDOW_MS, Some(42), retried.clone()).await; // entry 2
    assert!(matches!(&at_edge[..], [Outcome::Put { created: true, record }] if record.revision == 1));
    assert_eq!(r.ops_applied(), 1);

    // A batch proposed more than a window after it ages the id out...
    r.run(T0 + DEDUP_WINDOW_MS + 1, put(KeyId::system("unrelated"), "u", T0)).await; // entry 3
    assert_eq!(r.ops_applied(), 2);

    // ...so the same batch is now applied afresh, as an update at the new index.
    let again = r.propose_batch(T0 + DEDUP_WINDOW_MS + 2, Some(42), retried).await; // entry 4
    assert!(matches!(&again[..], [Outcome::Put { created: false, record }] if record.revision == 4));
    assert_eq!(r.ops_applied(), 3);
}

/// A follower's batch forwarded to the leader rides in the leader's own entry ([`Request::also`]),
/// and is still recognised by its own id when it comes again: alone (a retry sent to a new
/// leader) or carried, nested, inside yet another entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_carried_in_another_entry_keeps_its_own_id_and_outcomes() {
    let mut r = Replica::new();
    let mut feed = r.store.changes.subscribe();
    let forwarded = Request {
        id: Some(11),
        proposed_at_ms: T0,
        ops: vec![op(put(KeyId::system("f"), "1", T0))],
        also: vec![],
    };
    let leaders = Request {
        id: Some(10),
        proposed_at_ms: T0,
        ops: vec![op(put(KeyId::system("own"), "1", T0))],
        also: vec![forwarded.clone()],
    };
    let first = r.apply(vec![entry(1, 1, leaders)]).await.remove(0);
    assert!(matches!(&first.outcomes[..], [Outcome::Put { created: true, .. }]));
    assert_eq!(first.also.len(), 1);
    assert!(
        matches!(&first.also[0].outcomes[..], [Outcome::Put { created: true, record }] if record.revision == 1)
    );
    assert_eq!(r.ops_applied(), 2);
    // Every op of the entry has its own position in the change feed.
    let seen: Vec<(u64, u32)> = (0..2).map(|_| feed.try_recv().map(|c| (c.index, c.seq)).unwrap()).collect();
    assert_eq!(seen, [(1, 0), (1, 1)]);

    let alone = r.apply(vec![entry(1, 2, forwarded.clone())]).await.remove(0);
    assert_eq!(alone.outcomes, first.also[0].outcomes, "the retry is answered from memory");
    let nested = Request {
        id: Some(12),
        proposed_at_ms: T0 + 1,
        ops: vec![],
        also: vec![Request { id: Some(13), proposed_at_ms: T0 + 1, ops: vec![], also: vec![forwarded] }],
    };
    let again = r.apply(vec![entry(1, 3, nested)]).await.remove(0);
    assert_eq!(again.also[0].also[0].outcomes, first.also[0].outcomes);
    assert_eq!(r.ops_applied(), 2, "nothing was applied twice");
    assert_eq!(r.get(&KeyId::system("f"), T0).map(|rec| rec.revision), Some(1));
}

/// Regression: ids used to be aged out after a batch's ops ran, so a retry arriving in the very
/// batch that puts the id past the window was still answered from memory, and whether an old id
/// was remembered depended on unrelated traffic in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_past_the_window_is_applied_even_if_no_batch_came_in_between() {
    let mut r = Replica::new();
    let retried = vec![op(put(KeyId::system("k"), "v", T0))];
    r.propose_batch(T0, Some(42), retried.clone()).await; // entry 1

    let late = r.propose_batch(T0 + DEDUP_WINDOW_MS + 1, Some(42), retried).await; // entry 2
    assert!(
        matches!(&late[..], [Outcome::Put { created: false, record }] if record.revision == 2),
        "id older than DEDUP_WINDOW_MS was still remembered: {late:?}"
    );
    assert_eq!(r.ops_applied(), 2);
}

// ---------------------------------------------------------------------------------------------
// 5. Last applied and membership

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_records_the_last_log_id_and_the_latest_membership() {
    let mut r = Replica::new();
    assert_eq!(r.applied_state().await, (None, StoredMembership::default()));
    assert_eq!(r.store.view.applied().unwrap(), None);

    // A leader's blank entry, a write, a membership change, then a write in a later term.
    let entries = vec![
        Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank },
        normal(1, 2, T0, vec![op(put(KeyId::system("a"), "1", T0))]),
        Entry { log_id: log_id(1, 3), payload: EntryPayload::Membership(three_node_membership()) },
        normal(2, 4, T0 + 1, vec![op(put(KeyId::system("b"), "2", T0 + 1))]),
    ];
    let responses = r.apply(entries).await;
    assert_eq!(responses.len(), 4, "one response per entry");
    assert!(responses[0].outcomes.is_empty() && responses[2].outcomes.is_empty());
    assert!(matches!(&responses[3].outcomes[..], [Outcome::Put { record, .. }] if record.revision == 4));

    let (applied, membership) = r.applied_state().await;
    assert_eq!(applied, Some(log_id(2, 4)));
    assert_eq!(r.store.view.applied().unwrap(), Some(log_id(2, 4)));
    assert_eq!(membership, StoredMembership::new(Some(log_id(1, 3)), three_node_membership()));
    assert_eq!(membership.membership().get_node(&2).map(|n| n.rpc_addr.as_str()), Some("10.0.0.2:7000"));

    // A lone blank entry still moves last-applied; membership stays where it was.
    r.apply(vec![Entry { log_id: log_id(3, 5), payload: EntryPayload::Blank }]).await;
    let (applied, membership2) = r.applied_state().await;
    assert_eq!(applied, Some(log_id(3, 5)));
    assert_eq!(membership2, membership);

    // A later membership entry replaces the stored one.
    let solo = Membership::new(vec![BTreeSet::from([1])], BTreeMap::from([(1, Node::default())]));
    r.apply(vec![Entry { log_id: log_id(3, 6), payload: EntryPayload::Membership(solo.clone()) }]).await;
    assert_eq!(
        r.applied_state().await,
        (Some(log_id(3, 6)), StoredMembership::new(Some(log_id(3, 6)), solo))
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Snapshots

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_snapshot_replaces_the_whole_state_and_survives_a_reopen() {
    let expires = T0 + 1_000;
    let user_key = KeyId::user("alice", "api_key");

    // Store A: a system key, a secret user key, an expiring key, a remembered request id and a
    // membership.
    let mut a = Replica::new();
    let a_outcomes = a
        .apply(vec![
            Entry { log_id: log_id(1, 1), payload: EntryPayload::Membership(three_node_membership()) },
            batch(
                1,
                2,
                T0,
                Some(99),
                vec![
                    op(put(KeyId::system("region"), "eu", T0)),
                    op(Command::Put {
                        key: user_key.clone(),
                        value: "ciphertext".into(),
                        secret: true,
                        description: Some("alice's key".into()),
                        expire_at_ms: None,
                        now_ms: T0,
                        new_id: "0123456789abcdef01234567".into(),
                        cond: st2kv_raft::Cond::Always,
                    }),
                    op(expiring_at(put(KeyId::system("lock"), "held", T0), expires)),
                ],
            ),
            normal(2, 3, T0 + 1, vec![op(put(KeyId::system("region"), "us", T0 + 1))]),
        ])
        .await;
    let a_applied = a.applied_state().await;
    assert_eq!(a_applied.0, Some(log_id(2, 3)));

    let snap = a.store.state_machine.get_snapshot_builder().await.build_snapshot().await.expect("build");
    assert_eq!(snap.meta.last_log_id, a_applied.0);
    assert_eq!(snap.meta.last_membership, a_applied.1);
    let snap_bytes = read_all(snap.snapshot).await;
    let a_current =
        a.store.state_machine.get_current_snapshot().await.unwrap().expect("A keeps its snapshot");
    assert_eq!(a_current.meta, snap.meta);

    // Store B has history of its own that the snapshot must wipe out, expiring key included.
    let mut b = Replica::new();
    b.propose(
        T0,
        vec![
            op(put(KeyId::system("stale"), "old", T0)),
            op(put(KeyId::system("region"), "ap", T0)),
            op(put(KeyId::user("bob", "old"), "old", T0)),
            op(expiring_at(put(KeyId::system("stale-lock"), "x", T0), T0 + 500)),
        ],
    )
    .await;
    assert_ne!(b.state_hash(), a.state_hash());
    assert_eq!(b.store.state_machine.get_current_snapshot().await.unwrap().map(|s| s.meta), None);

    // As openraft streams it: into the file begin_receiving_snapshot gives, chunk by chunk.
    let received = receive(&mut b, &snap_bytes).await;
    b.store.state_machine.install_snapshot(&snap.meta, received).await.expect("install");

    let check_b_matches_a = |b: &Replica, a: &Replica| {
        for now in [T0, expires] {
            assert_eq!(b.list(Scope::System, "", "", now), a.list(Scope::System, "", "", now));
        }
        assert_eq!(b.list(Scope::System, "", "", T0), ["lock", "region"]);
        assert_eq!(b.list(Scope::User, "alice", "", T0), ["alice:api_key"]);
        assert!(b.list(Scope::User, "bob", "", T0).is_empty(), "stale user key survived");
        assert_eq!(b.get(&KeyId::system("stale"), T0), None, "stale system key survived");
        assert_eq!(b.get(&user_key, T0), a.get(&user_key, T0));
        assert_eq!(b.value(&KeyId::system("region"), T0).as_deref(), Some("us"));
        assert_eq!(b.store.view.key_count(), 3);
        assert_eq!(b.state_hash(), a.state_hash());
        assert_eq!(b.ops_applied(), a.ops_applied());
        assert_eq!(b.store.view.applied().unwrap(), Some(log_id(2, 3)));
        // Only A's expiring key is left in the expiry index.
        assert!(!b.has_expired(T0 + 500));
        assert!(b.has_expired(expires));
    };
    check_b_matches_a(&b, &a);
    assert_eq!(b.applied_state().await, a_applied);
    let current =
        b.store.state_machine.get_current_snapshot().await.unwrap().expect("installed snapshot kept");
    assert_eq!(current.meta, snap.meta);
    assert_eq!(read_all(current.snapshot).await, snap_bytes);

    // Everything is still there after closing B and opening it again from disk.
    let mut b = b.reopen();
    check_b_matches_a(&b, &a);
    assert_eq!(b.applied_state().await, a_applied);
    let current = b.store.state_machine.get_current_snapshot().await.unwrap().expect("snapshot kept on disk");
    assert_eq!(current.meta, snap.meta);

    // B carries on from the snapshot like A would: the remembered request id and the expiry
    // index came along.
    b.last_index = 3;
    let retry = vec![op(put(user_key.clone(), "other ciphertext", T0 + 2))];
    assert_eq!(b.propose_batch(T0 + 2, Some(99), retry).await, a_outcomes[1].outcomes);
    assert_eq!(b.value(&user_key, T0).as_deref(), Some("ciphertext"));
    assert_eq!(b.run(expires, Command::PurgeExpired { now_ms: expires }).await, Outcome::Purged { count: 1 });
    assert_eq!(b.list(Scope::System, "", "", T0), ["region"]);
    assert_eq!(b.store.view.key_count(), 2, "the count carried on from the snapshot's");
}

/// The key count (what `/v1/cluster/status` shows) is kept by apply, not counted: creates add,
/// overwrites do not, deletes and purges of expired keys remove, and it survives a reopen.
#[tokio::test]
async fn the_key_count_follows_creates_overwrites_deletes_and_purges() {
    let mut r = Replica::new();
    assert_eq!(r.store.view.key_count(), 0);
    r.propose(
        T0,
        vec![
            op(put(KeyId::system("a"), "1", T0)),
            op(put(KeyId::system("b"), "1", T0)),
            op(put(KeyId::user("alice", "a"), "1", T0)),
            op(put(KeyId::system("a"), "2", T0)),
        ],
    )
    .await;
    assert_eq!(r.store.view.key_count(), 3, "the second put of `a` is an overwrite");
    r.propose(
        T0 + 1,
        vec![op(delete(KeyId::system("b"), T0 + 1)), op(delete(KeyId::system("nope"), T0 + 1))],
    )
    .await;
    assert_eq!(r.store.view.key_count(), 2, "one delete removed a key, the other found none");
    r.propose(
        T0 + 2,
        vec![
            op(expiring_at(put(KeyId::system("lease"), "x", T0 + 2), T0 + 10)),
            op(expiring_at(put(KeyId::system("lease2"), "x", T0 + 2), T0 + 10)),
        ],
    )
    .await;
    assert_eq!(r.store.view.key_count(), 4);
    // An expired key is still stored until purged; a put over it replaces it, a delete removes it.
    r.propose(T0 + 20, vec![op(put(KeyId::system("lease"), "y", T0 + 20))]).await;
    assert_eq!(r.store.view.key_count(), 4);
    r.propose(T0 + 30, vec![op(expiring_at(put(KeyId::system("lease3"), "x", T0 + 30), T0 + 40))]).await;
    r.propose(T0 + 50, vec![op(delete(KeyId::system("lease2"), T0 + 50))]).await;
    assert_eq!(r.store.view.key_count(), 4);
    assert_eq!(r.run(T0 + 50, Command::PurgeExpired { now_ms: T0 + 50 }).await, Outcome::Purged { count: 1 });
    assert_eq!(r.store.view.key_count(), 3);
    let mut r = r.reopen();
    assert_eq!(r.store.view.key_count(), 3);
    r.propose(T0 + 60, vec![op(put(KeyId::system("c"), "1", T0 + 60))]).await;
    assert_eq!(r.store.view.key_count(), 4);
}

/// A snapshot is the state at the moment its builder was taken, however much is applied while it
/// is being written: keys changed, deleted or created after the cut appear as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_holds_the_state_at_its_cut_while_applies_go_on() {
    let mut a = Replica::new();
    let mut ops: Vec<Op> = (0..500).map(|i| op(put(KeyId::system(format!("k{i:03}")), "v0", T0))).collect();
    ops.push(op(put(KeyId::user("alice", "mine"), "a0", T0)));
    a.propose(T0, ops).await;
    let at_cut = (a.state_hash(), a.list(Scope::System, "", "", T0), a.applied_state().await);

    let mut builder = a.store.state_machine.get_snapshot_builder().await;
    // After the cut: updates, deletions (some keys twice), creations, a user key removed.
    let mut later: Vec<Op> =
        (0..500).step_by(3).map(|i| op(put(KeyId::system(format!("k{i:03}")), "v1", T0))).collect();
    later.extend((0..500).step_by(7).map(|i| op(delete(KeyId::system(format!("k{i:03}")), T0))));
    later.extend((0..50).map(|i| op(put(KeyId::system(format!("new{i}")), "n", T0))));
    later.push(op(delete(KeyId::user("alice", "mine"), T0)));
    a.propose(T0 + 1, later).await;
    a.propose(T0 + 2, vec![op(put(KeyId::system("k001"), "v2", T0))]).await;
    assert_ne!(a.state_hash(), at_cut.0);

    let snap = builder.build_snapshot().await.expect("build");
    assert_eq!((snap.meta.last_log_id, snap.meta.last_membership.clone()), at_cut.2);
    let bytes = read_all(snap.snapshot).await;

    let mut b = Replica::new();
    let received = receive(&mut b, &bytes).await;
    b.store.state_machine.install_snapshot(&snap.meta, received).await.expect("install");
    assert_eq!(b.state_hash(), at_cut.0, "the snapshot is the state at the cut");
    let files: Vec<_> = std::fs::read_dir(b.dir.path().join("snapshots")).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "only the installed snapshot's file is kept: {files:?}");
    assert_eq!(b.list(Scope::System, "", "", T0), at_cut.1);
    assert_eq!(b.value(&KeyId::user("alice", "mine"), T0).as_deref(), Some("a0"));

    // The build is over: later applies no longer record anything, and the next snapshot is the
    // state of the moment again.
    a.propose(T0 + 3, vec![op(put(KeyId::system("k002"), "v3", T0))]).await;
    let again = a.store.state_machine.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let mut c = Replica::new();
    let received = receive(&mut c, &read_all(again.snapshot).await).await;
    c.store.state_machine.install_snapshot(&again.meta, received).await.expect("install");
    assert_eq!(c.state_hash(), a.state_hash());
    let files: Vec<_> = std::fs::read_dir(a.dir.path().join("snapshots")).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "a new snapshot replaces the previous file: {files:?}");

    // A build that finishes after a newer snapshot was installed does not replace it.
    let mut stale = b.store.state_machine.get_snapshot_builder().await;
    let newer = a.store.state_machine.get_current_snapshot().await.unwrap().expect("a's snapshot");
    let received = receive(&mut b, &read_all(newer.snapshot).await).await;
    b.store.state_machine.install_snapshot(&newer.meta, received).await.expect("install");
    let late = stale.build_snapshot().await.expect("the late build still answers");
    assert!(late.meta.last_log_id < newer.meta.last_log_id);
    let current = b.store.state_machine.get_current_snapshot().await.unwrap().expect("current snapshot");
    assert_eq!(current.meta, newer.meta, "the older build did not replace the installed snapshot");
    assert_eq!(b.state_hash(), a.state_hash());
}

/// A snapshot copies the whole state, so a new one is due only once the ops applied since the
/// last are at least half the pairs it held (the entry count is the caller's other condition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_due_only_once_enough_has_changed_since_the_last() {
    let mut r = Replica::new();
    assert!(r.store.view.snapshot_due().unwrap(), "due when there is none yet");
    let puts = |from: usize, n: usize| -> Vec<Op> {
        (from..from + n).map(|i| op(put(KeyId::system(format!("k{i:04}")), "v", T0))).collect()
    };
    r.propose(T0, puts(0, 200)).await;
    r.store.state_machine.get_snapshot_builder().await.build_snapshot().await.expect("build");
    assert!(!r.store.view.snapshot_due().unwrap(), "nothing changed since");
    r.propose(T0, puts(0, 80)).await;
    assert!(!r.store.view.snapshot_due().unwrap(), "80 ops against a 200-key snapshot");
    r.propose(T0, puts(80, 30)).await;
    assert!(r.store.view.snapshot_due().unwrap(), "110 ops against a 200-key snapshot");
}

// ---------------------------------------------------------------------------------------------
// 7. Pagination

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_are_name_ordered_and_skip_expired_keys() {
    let mut r = Replica::new();
    // Ten live keys written out of order, plus an expired key and a key outside the prefix.
    let mut ops: Vec<Op> = [7, 2, 9, 0, 5, 3, 8, 1, 6, 4]
        .iter()
        .map(|i| op(put(KeyId::system(format!("k{i:02}")), "v", T0)))
        .collect();
    ops.push(op(expiring_at(put(KeyId::system("k03b"), "gone", T0), T0)));
    ops.push(op(put(KeyId::system("other"), "v", T0)));
    r.propose(T0, ops).await;

    let all: Vec<String> = (0..10).map(|i| format!("k{i:02}")).collect();
    assert_eq!(r.list(Scope::System, "", "k", T0), all);

    let page = |offset, limit| r.page(Scope::System, "", "k", offset, limit, T0);
    assert_eq!(page(0, Some(4)), all[0..4]);
    assert_eq!(page(4, Some(4)), all[4..8]);
    assert_eq!(page(8, Some(4)), all[8..10]);
    assert!(page(10, Some(4)).is_empty());
    assert!(page(0, Some(0)).is_empty());
    assert_eq!(page(3, None), all[3..]);
    assert_eq!(page(9, Some(100)), all[9..]);

    // Walking page by page yields every key exactly once, in order.
    let mut walked = Vec::new();
    for offset in (0..12).step_by(3) {
        walked.extend(page(offset, Some(3)));
    }
    assert_eq!(walked, all);
}

// ---------------------------------------------------------------------------------------------
// Auxiliary records (the node's users, token and API-key hashes)

fn put_aux(
    table: &str,
    key: &str,
    value: &[u8],
    expire_at_ms: Option<i64>,
    cond: st2kv_raft::Cond,
) -> Command {
    Command::PutAux { table: table.into(), key: key.into(), value: value.to_vec(), expire_at_ms, cond }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auxiliary_records_honour_their_conditions_and_tables_never_mix() {
    use st2kv_raft::Cond;
    let mut r = Replica::new();
    assert_eq!(
        r.run(T0, put_aux("users", "alice", b"v1", None, Cond::Absent)).await,
        Outcome::AuxPut { revision: 1, created: true }
    );
    // A second "create if absent" changes nothing and says why.
    assert_eq!(
        r.run(T0, put_aux("users", "alice", b"v2", None, Cond::Absent)).await,
        Outcome::CondFailed { current: Some(1) }
    );
    // Compare-and-set on the revision: a stale revision fails, the current one wins.
    assert_eq!(
        r.run(T0, put_aux("users", "alice", b"v3", None, Cond::Revision(7))).await,
        Outcome::CondFailed { current: Some(1) }
    );
    assert_eq!(
        r.run(T0, put_aux("users", "alice", b"v4", None, Cond::Revision(1))).await,
        Outcome::AuxPut { revision: 4, created: false }
    );
    r.run(T0, put_aux("users", "alice2", b"x", None, Cond::Always)).await;
    r.run(T0, put_aux("tokens", "alice", b"t", None, Cond::Always)).await;
    let view = &r.store.view;
    assert_eq!(view.aux_get("users", "alice", T0).unwrap().unwrap().value, b"v4");
    let users: Vec<String> = view.aux_list("users", "", T0).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(users, vec!["alice", "alice2"]);
    let exact: Vec<String> =
        view.aux_list("users", "alice2", T0).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(exact, vec!["alice2"]);
    // Aux records are not keys: the key space stays empty.
    assert!(r.list(Scope::System, "", "", T0).is_empty());

    assert_eq!(
        r.run(T0, Command::DeleteAux { table: "users".into(), key: "alice".into(), cond: Cond::Revision(1) })
            .await,
        Outcome::CondFailed { current: Some(4) }
    );
    assert_eq!(
        r.run(T0, Command::DeleteAux { table: "users".into(), key: "alice".into(), cond: Cond::Always })
            .await,
        Outcome::AuxDeleted
    );
    assert_eq!(
        r.run(T0, Command::DeleteAux { table: "users".into(), key: "alice".into(), cond: Cond::Always })
            .await,
        Outcome::NotFound
    );
    assert!(r.store.view.aux_get("tokens", "alice", T0).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_auxiliary_records_are_hidden_then_purged() {
    use st2kv_raft::Cond;
    let mut r = Replica::new();
    r.run(T0, put_aux("tokens", "h1", b"t1", Some(T0 + 10), Cond::Always)).await;
    r.run(T0, put_aux("tokens", "h2", b"t2", Some(T0 + 1_000), Cond::Always)).await;
    assert!(r.store.view.aux_get("tokens", "h1", T0 + 9).unwrap().is_some());
    assert!(r.store.view.aux_get("tokens", "h1", T0 + 10).unwrap().is_none(), "hidden once expired");
    assert!(r.store.view.has_expired(T0 + 10).unwrap());
    assert_eq!(r.run(T0 + 10, Command::PurgeExpired { now_ms: T0 + 10 }).await, Outcome::Purged { count: 1 });
    assert!(!r.store.view.has_expired(T0 + 10).unwrap());
    let left: Vec<String> =
        r.store.view.aux_list("tokens", "", T0).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, vec!["h2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_with_a_revision_condition_is_compare_and_set() {
    use st2kv_raft::Cond;
    let mut r = Replica::new();
    let k = KeyId::system("rotating");
    let with = |cond: Cond, v: &str| {
        let mut c = put(k.clone(), v, T0);
        if let Command::Put { cond: c2, .. } = &mut c {
            *c2 = cond;
        }
        c
    };
    assert!(matches!(r.run(T0, with(Cond::Absent, "v1")).await, Outcome::Put { created: true, .. }));
    assert_eq!(r.run(T0, with(Cond::Absent, "v2")).await, Outcome::CondFailed { current: Some(1) });
    assert_eq!(r.run(T0, with(Cond::Revision(7), "v3")).await, Outcome::CondFailed { current: Some(1) });
    assert!(
        matches!(r.run(T0, with(Cond::Revision(1), "v4")).await, Outcome::Put { record, .. } if record.revision == 4)
    );
    assert_eq!(r.value(&k, T0).as_deref(), Some("v4"));
}

/// The guard a write carries for the session token `h1` as it was at `revision`.
fn token_guard(revision: u64) -> st2kv_raft::Guard {
    st2kv_raft::Guard { table: "tokens".into(), key: "h1".into(), revision }
}

/// Issue the session token `h1` (its revision is the index of the entry that applies this).
fn issue_token() -> Command {
    Command::PutAux {
        table: "tokens".into(),
        key: "h1".into(),
        value: b"t".to_vec(),
        expire_at_ms: None,
        cond: st2kv_raft::Cond::Always,
    }
}

fn revoke_token() -> Command {
    Command::DeleteAux { table: "tokens".into(), key: "h1".into(), cond: st2kv_raft::Cond::Always }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_applies_only_while_its_guards_hold() {
    let mut r = Replica::new();
    assert!(matches!(r.run(T0, issue_token()).await, Outcome::AuxPut { revision: 1, .. }));
    let guarded = |rev, v: &str| Op { cmd: put(KeyId::system("k"), v, T0), guards: vec![token_guard(rev)] };
    assert!(matches!(r.propose(T0, vec![guarded(1, "ok")]).await[..], [Outcome::Put { .. }]));
    assert_eq!(r.propose(T0, vec![guarded(7, "stale")]).await, vec![Outcome::GuardFailed]);
    r.run(T0, revoke_token()).await;
    assert_eq!(r.propose(T0, vec![guarded(1, "revoked")]).await, vec![Outcome::GuardFailed]);
    assert_eq!(r.value(&KeyId::system("k"), T0).as_deref(), Some("ok"), "refused ops change nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_sees_what_earlier_ops_of_its_own_entry_did_to_the_credential() {
    let mut r = Replica::new();
    assert!(matches!(r.run(T0, issue_token()).await, Outcome::AuxPut { revision: 1, .. }));
    let guarded =
        |rev, name: &str| Op { cmd: put(KeyId::system(name), "v", T0), guards: vec![token_guard(rev)] };
    // One entry, as the batcher builds it from several clients: the credential is checked, then
    // revoked, then checked again, then issued anew (at the entry's index, 2) and checked again.
    let outcomes = r
        .propose(
            T0,
            vec![
                guarded(1, "before"),
                op(revoke_token()),
                guarded(1, "after-revoke"),
                op(issue_token()),
                guarded(1, "old-rev"),
                guarded(2, "new-rev"),
            ],
        )
        .await;
    assert!(matches!(outcomes[0], Outcome::Put { .. }), "{outcomes:?}");
    assert_eq!(outcomes[2], Outcome::GuardFailed, "a revocation earlier in the entry holds");
    assert!(matches!(outcomes[3], Outcome::AuxPut { revision: 2, .. }), "{outcomes:?}");
    assert_eq!(outcomes[4], Outcome::GuardFailed, "the re-issued credential has a new revision");
    assert!(matches!(outcomes[5], Outcome::Put { .. }), "{outcomes:?}");
    assert_eq!(keys_of(&r), ["before", "new-rev"]);
}

// ---------------------------------------------------------------------------------------------
// Restarts: a clean stop keeps the state machine, an unclean one rebuilds it from the snapshot

fn keys_of(r: &Replica) -> Vec<String> {
    r.list(Scope::System, "", "", T0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_clean_stop_the_state_machine_is_kept_as_it_was() {
    let mut r = Replica::new();
    r.run(T0, put(KeyId::system("a"), "1", T0)).await;
    r.run(T0, put(KeyId::system("b"), "2", T0)).await;
    let before = (r.applied_state().await, r.state_hash(), r.store.view.key_count());

    let mut r = r.reopen();
    assert_eq!((r.applied_state().await, r.state_hash(), r.store.view.key_count()), before);
    assert_eq!(keys_of(&r), ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_unclean_stop_between_applies_the_state_machine_is_kept() {
    let mut r = Replica::new();
    r.run(T0, put(KeyId::system("a"), "1", T0)).await;
    r.run(T0, put(KeyId::system("b"), "2", T0)).await;
    let before = (r.applied_state().await, r.state_hash());
    let mut r = r.crash_and_reopen();
    assert_eq!((r.applied_state().await, r.state_hash()), before);
    assert_eq!(keys_of(&r), ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_cut_short_is_repaired_by_rebuilding_from_the_snapshot() {
    let mut r = Replica::new();
    r.run(T0, put(KeyId::system("a"), "1", T0)).await;
    r.run(T0, put(KeyId::system("b"), "2", T0)).await;
    let snap = r.store.state_machine.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let at_snapshot = (r.applied_state().await, r.state_hash());
    assert_eq!(snap.meta.last_log_id, at_snapshot.0 .0);
    // Applied after the snapshot: in a real node these entries are in the log, and openraft
    // applies them again after the rebuild. These were handed to `apply` directly, so they are
    // gone, which shows the state machine really was replaced.
    r.run(T0, put(KeyId::system("c"), "3", T0)).await;
    r.run(T0, delete(KeyId::system("a"), T0)).await;
    assert_eq!(keys_of(&r), ["b", "c"]);

    let mut r = r.crash_midway_and_reopen(&KeyId::system("torn"));
    assert_eq!((r.applied_state().await, r.state_hash()), at_snapshot);
    assert_eq!(keys_of(&r), ["a", "b"], "the half-applied key is gone with the rest");
    assert_eq!(r.store.view.key_count(), 2);

    // And it goes on from there, trusted again after any stop between applies.
    r.last_index = at_snapshot.0 .0.expect("applied").index;
    r.run(T0, put(KeyId::system("d"), "4", T0)).await;
    let r = r.crash_and_reopen();
    assert_eq!(keys_of(&r), ["a", "b", "d"]);
    let r = r.reopen();
    assert_eq!(keys_of(&r), ["a", "b", "d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_cut_short_without_a_snapshot_leaves_an_empty_state_machine_for_the_log() {
    let mut r = Replica::new();
    r.run(T0, put(KeyId::system("a"), "1", T0)).await;
    let mut r = r.crash_midway_and_reopen(&KeyId::system("torn"));
    assert_eq!(r.applied_state().await.0, None, "openraft applies the whole log again");
    assert!(keys_of(&r).is_empty());
    assert_eq!(r.store.view.key_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_is_trusted_whatever_the_marks_say() {
    // Closing waits for any apply under way and refuses later ones, so a store marked clean is
    // whole: its state machine is not second-guessed.
    let mut r = Replica::new();
    r.run(T0, put(KeyId::system("a"), "1", T0)).await;
    r.store.closer.close_blocking().expect("close");
    let r = r.crash_midway_and_reopen(&KeyId::system("b"));
    assert_eq!(keys_of(&r), ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_store_keeps_its_seed_across_an_unclean_stop_until_a_snapshot_holds_it() {
    // A backup of a store with two keys.
    let mut source = Replica::new();
    source.run(T0, put(KeyId::system("a"), "1", T0)).await;
    source.run(T0, put(KeyId::system("b"), "2", T0)).await;
    let snap = source.store.state_machine.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let backup = read_all(snap.snapshot).await;

    let r = Replica::new();
    store::seed_store(&r.store, r.dir.path(), &backup).expect("seed");
    let mut r = r.crash_midway_and_reopen(&KeyId::system("torn"));
    // (A seeded store's applies are atomic sled batches, never cut short: the marks are not read.)
    assert_eq!(keys_of(&r), ["a", "b", "torn"], "nothing but the seed itself holds a and b");
    r.run(T0, put(KeyId::system("c"), "3", T0)).await;
    let mut r = r.crash_and_reopen();
    assert_eq!(keys_of(&r), ["a", "b", "c", "torn"]);

    // Once a snapshot holds the seed, an apply cut short rebuilds from it.
    r.store.state_machine.get_snapshot_builder().await.build_snapshot().await.expect("build");
    r.run(T0, put(KeyId::system("d"), "4", T0)).await;
    let r = r.crash_midway_and_reopen(&KeyId::system("e"));
    assert_eq!(keys_of(&r), ["a", "b", "c", "torn"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_state_machine_refuses_to_apply() {
    let mut r = Replica::new();
    r.run(T0, put(KeyId::system("a"), "1", T0)).await;
    r.store.closer.close_blocking().expect("close");
    let late = normal(1, r.last_index + 1, T0, vec![op(put(KeyId::system("b"), "2", T0))]);
    assert!(r.store.state_machine.apply(vec![late]).await.is_err());
    let r = r.crash_and_reopen();
    assert_eq!(keys_of(&r), ["a"], "the stop was clean: nothing to rebuild, nothing half applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_installed_into_an_empty_store_is_whole_and_is_what_a_rebuild_starts_from() {
    let mut a = Replica::new();
    a.run(T0, put(KeyId::system("a"), "1", T0)).await;
    a.run(T0, put(KeyId::system("b"), "2", T0)).await;
    a.run(T0, delete(KeyId::system("a"), T0)).await;
    let snap = a.store.state_machine.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let bytes = read_all(snap.snapshot).await;

    // A new member: nothing in its store, so the records go in one by one.
    let mut b = Replica::new();
    let rx = receive(&mut b, &bytes).await;
    b.store.state_machine.install_snapshot(&snap.meta, rx).await.expect("install");
    let want = (a.applied_state().await, a.state_hash(), a.store.view.key_count());
    assert_eq!((b.applied_state().await, b.state_hash(), b.store.view.key_count()), want);

    let mut b = b.crash_midway_and_reopen(&KeyId::system("torn"));
    assert_eq!((b.applied_state().await, b.state_hash(), b.store.view.key_count()), want);
    assert_eq!(keys_of(&b), ["b"], "rebuilt from the installed snapshot");
}
