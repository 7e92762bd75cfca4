//! # Linearizability checker for key/value histories
//!
//! ## What it checks
//!
//! A *history* is the list of every operation the test clients issued against the cluster:
//! for each one, which client issued it, on which key, what it asked for (read, put, delete),
//! when it was invoked, when its answer came back, and what the answer was. The history is
//! *linearizable* if there is one total order of (a subset, see below) of those operations
//! such that
//!
//! 1. the order respects real time: if operation `a` completed before `b` was invoked, `a`
//!    comes before `b`;
//! 2. replaying the operations in that order against a single, sequential key/value map
//!    gives exactly the answers the clients saw.
//!
//! That is the promise a strongly consistent store makes: every operation appears to take
//! effect atomically at some instant between its invocation and its completion. [`check`]
//! answers yes, no (with an explanation), or "inconclusive" when the search exceeded its
//! budget; callers must treat anything other than yes as a failure ([`Verdict::ok`] does).
//!
//! ## The model
//!
//! Linearizability is *local* (Herlihy & Wing): a history is linearizable iff its restriction
//! to each object is. Every key is an independent object, so the checker splits the history
//! by key and checks each key on its own, which keeps every search small. Each key is a
//! register: its initial value is "absent" (`None`); a put sets it to `Some(value)`; a delete
//! sets it to `None`; a read must return the current value (`None` meaning "not found").
//!
//! ## Outcomes
//!
//! * [`OpResult::ReadOk`] / [`OpResult::WriteOk`]: the operation definitely happened inside
//!   its `[invoke, complete]` interval and must be linearized there.
//! * [`OpResult::Failed`]: the operation definitely did *not* take effect (the server refused
//!   it before proposing it, e.g. a 4xx or a 503 from a node that is not the leader). It is
//!   dropped. If a read later sees the value only a failed put wrote, the history is rejected.
//! * [`OpResult::Unknown`]: the client timed out or lost the connection; the operation may or
//!   may not have taken effect, and may even take effect long after the client gave up. Such
//!   an operation is kept *pending*, never counted as failed: its completion time is +infinity
//!   and it may be linearized anywhere after its invocation, or never. For a register "never"
//!   needs no special case: a write of unknown outcome can always be linearized at the very end
//!   of the history, where nothing observes it, which is the same as not having happened. An
//!   unknown *read* changes no state and tells us nothing, so it is dropped. An unknown write
//!   whose value no read on its key ever returned is dropped too (it can always be moved to the
//!   end), which keeps the number of forever-pending operations, and so the search, small.
//!
//! Equal timestamps are treated as concurrent (a completion at `t` does not order the operation
//! before an invocation at the same `t`), so clock granularity can never produce a false alarm.
//!
//! ## The algorithm
//!
//! Per key, the checker runs the Wing & Gong search in the form Lowe calls "just-in-time
//! linearization" (the algorithm Knossos and Porcupine use). The invocations and completions
//! of the key's operations are put in one time-ordered, doubly linked event list. A depth-first
//! search builds the linearization front to back: an operation may go next iff its invocation
//! comes before the earliest completion among the operations not yet linearized (otherwise the
//! operation owning that completion would have to come later than real time allows). Scanning
//! the list from the head, every invocation met before the first completion is such a
//! candidate. The search tries the candidates the register accepts (a put or delete always
//! fits, a read must return the current value) one by one, puts and deletes in order of
//! completion (the one that must take effect soonest first); taking one unlinks its two events
//! from the list (dancing links, O(1) each way, undone on backtracking) and goes one level
//! deeper. When every candidate of a level has failed, the search backtracks. The history is
//! linearizable once every operation with a definite outcome has been linearized (the
//! remaining ones are unknown writes that go at the end); it is not once the first level has
//! run out of candidates.
//!
//! The search is an explicit loop with its own stack, so a 10,000-operation key costs heap,
//! not call stack.
//!
//! ### Reads go first
//!
//! One exact shortcut: if a read that may go next returns the current value, it is linearized
//! next without trying the alternatives. That loses nothing: take any valid continuation, move
//! that read to its front; the read fits (it returns the current value), every later operation
//! sees the same values as before (a read changes nothing), and no real-time constraint breaks
//! (nothing still pending had to come before the read, or it would not have been a candidate,
//! and moving an operation earlier keeps everything it had to precede after it). So if the
//! search fails after such a read, it fails without it too, and it backtracks straight past it.
//! This keeps the search from interleaving every concurrent read with every concurrent write.
//!
//! ### Dead values
//!
//! A second exact cut: the checker counts, per value, the reads still to be linearized that
//! returned it and the writes still to be linearized that write it (writes of unknown outcome
//! included). A step after which some value is still to be read, is not the current value, and
//! has no pending writer left can never be completed (only a write can make it current again),
//! so that step is refused at once instead of being discovered many levels deeper, once the
//! stranded read's completion comes up. This is what keeps histories with many concurrent
//! puts on one key cheap: without it, every subset of the concurrent puts was explored before
//! the search noticed that an early one had overwritten a value a later read still needs.
//!
//! ### Memoization
//!
//! Without memoization the search is factorial in the number of concurrent operations: every
//! interleaving of `k` overlapping puts is a separate path, and a violation found after them
//! is re-discovered `k!` times. But what the rest of the search can do depends only on *which*
//! operations are linearized and on the register's value, not on the order that got there. So
//! every `(set of linearized operations, value)` pair reached is recorded in a hash set and a
//! step that reaches a recorded pair is pruned (Lowe's observation). That turns `k!` into at
//! most `k * 2^(k-1)` for `k` mutually concurrent puts, and into a handful of states per
//! operation for realistic histories, where at any moment only a few operations overlap.
//!
//! The set is stored exactly, not hashed: operations are numbered in invocation order, and all
//! operations below the first not yet linearized one (the one owning the list's head) are
//! linearized by construction, so a state is stored as the register value, the index of the
//! 64-operation word containing that first gap, and the bitset words from there to the last
//! set bit. That is usually one or two words, whatever the length of the history.
//!
//! ## Explanations
//!
//! A "no" comes with the longest linearizable prefix the search found (its last operations
//! and the value it leaves) and, for each operation that could go next, why it cannot: a read
//! that returns another value, or a write after which some pending read's value could never
//! come back (naming those reads). Reads of a value nothing wrote are reported before any
//! search, and so are reads of a value that only writes invoked after the read completed wrote.
//! Unknown-outcome and failed operations appear as `-> unknown` / `-> failed`.
//!
//! ## Limits
//!
//! * The search is bounded by a budget of explored states per key
//!   ([`DEFAULT_MAX_STATES`], or [`check_with_limit`]); past it the key's verdict is
//!   [`KeyVerdict::Inconclusive`], which counts as failure. Worst-case checking is NP-complete
//!   (Gibbons & Korach), and the cuts above are heuristics for the common case: many puts that
//!   stay concurrent for long, or many observed writes of unknown outcome on one key, can still
//!   make the state space grow like `2^pending`.
//! * Cost, in a debug build: 2,000 operations from 20 clients over 20 keys take a few tens of
//!   milliseconds; the same on a single key (about 15 operations in flight at any time) well
//!   under a second. The memo holds a few words per explored state.
//! * Only single-key operations are modelled: reads, puts and deletes. Multi-key operations,
//!   compare-and-set, listings by prefix, TTLs and expiry are out of scope.
//! * The checker trusts the timestamps: invocation must be taken before the request is sent,
//!   completion after the response is received, from one monotonic clock ([`History`] does
//!   this). A value is compared as an opaque string.
//! * Linearizability is about single operations; it says nothing about durability across
//!   failures beyond what the reads in the history happened to observe.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Read the key's current value.
    Read,
    /// `Some(value)`: put `value`; `None`: delete the key.
    Write(Option<String>),
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// A read succeeded and saw this value (`None`: not found).
    ReadOk(Option<String>),
    /// A put or delete was acknowledged.
    WriteOk,
    /// Timed out or connection lost: the operation may or may not have taken effect.
    Unknown,
    /// The operation definitely did not take effect (e.g. a 4xx, or a 503 before proposal).
    Failed,
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub kind: OpKind,
    /// Invocation time, monotonic nanoseconds.
    pub invoke: u64,
    /// Completion time, monotonic nanoseconds; `None` if the outcome is unknown (the checker
    /// ignores the completion time of an [`OpResult::Unknown`] operation in any case).
    pub complete: Option<u64>,
    pub result: OpResult,
}

fn fmt_value(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "<absent>".to_string(),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.kind {
            OpKind::Read => write!(f, "read({:?})", self.key)?,
            OpKind::Write(Some(v)) => write!(f, "put({:?}, {v:?})", self.key)?,
            OpKind::Write(None) => write!(f, "delete({:?})", self.key)?,
        }
        match self.complete {
            Some(c) => write!(f, " [{}..{}ns]", self.invoke, c)?,
            None => write!(f, " [{}..?ns]", self.invoke)?,
        }
        match &self.result {
            OpResult::ReadOk(v) => write!(f, " -> {}", fmt_value(v)),
            OpResult::WriteOk => write!(f, " -> ok"),
            OpResult::Unknown => write!(f, " -> unknown"),
            OpResult::Failed => write!(f, " -> failed"),
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Recording
// ----------------------------------------------------------------------------------------------

struct HistoryInner {
    base: Instant,
    ops: Mutex<Vec<Op>>,
}

/// A thread-safe history recorder. Cloning shares the same history (it is an `Arc` inside), so a
/// clone can be moved into every client thread or task.
///
/// ```ignore
/// let op = history.invoke(client, "k", OpKind::Write(Some("v".into())));
/// let result = match put(...).await { Ok(_) => OpResult::WriteOk, Err(timeout) => OpResult::Unknown, ... };
/// op.complete(result);
/// ```
#[derive(Clone)]
pub struct History {
    inner: Arc<HistoryInner>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        History { inner: Arc::new(HistoryInner { base: Instant::now(), ops: Mutex::new(Vec::new()) }) }
    }

    /// Nanoseconds since this history was created.
    pub fn now(&self) -> u64 {
        self.inner.base.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        self.inner.ops.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record an invocation now; call this just before sending the request. The operation is
    /// recorded as pending with an unknown outcome until [`OpHandle::complete`] is called, so a
    /// handle that is dropped (a panicking or abandoned client) leaves an unknown outcome.
    pub fn invoke(&self, client: usize, key: impl Into<String>, kind: OpKind) -> OpHandle {
        let invoke = self.now();
        let op = Op { client, key: key.into(), kind, invoke, complete: None, result: OpResult::Unknown };
        let mut ops = self.lock();
        ops.push(op);
        OpHandle { history: self.clone(), index: ops.len() - 1 }
    }

    /// Add an already complete operation (e.g. one recorded elsewhere).
    pub fn record(&self, op: Op) {
        self.lock().push(op);
    }

    /// A snapshot of every operation recorded so far, in invocation-recording order.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`check`] the operations recorded so far.
    pub fn check(&self) -> Verdict {
        check(&self.ops())
    }
}

/// An invoked operation awaiting its outcome.
#[must_use = "complete the operation with its result (dropping it records an unknown outcome)"]
pub struct OpHandle {
    history: History,
    index: usize,
}

impl OpHandle {
    /// Record the outcome now; call this just after the response arrived (or the client gave
    /// up). [`OpResult::Unknown`] leaves the completion time unset: the operation stays pending.
    pub fn complete(self, result: OpResult) {
        let now = self.history.now();
        let mut ops = self.history.lock();
        let op = &mut ops[self.index];
        op.complete = if result == OpResult::Unknown { None } else { Some(now) };
        op.result = result;
    }
}

// ----------------------------------------------------------------------------------------------
// Verdicts
// ----------------------------------------------------------------------------------------------

/// Budget of explored search states per key used by [`check`].
pub const DEFAULT_MAX_STATES: u64 = 1_000_000;

/// The verdict for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    /// `ops` operations were considered (failed ones and unknown reads excluded), and the search
    /// explored `states` distinct states.
    Linearizable { ops: usize, states: u64 },
    /// No linearization exists; `explanation` names the operations involved.
    NotLinearizable { ops: usize, states: u64, explanation: String },
    /// The search hit its state budget before deciding. Counts as a failure.
    Inconclusive { ops: usize, states: u64 },
}

impl KeyVerdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, KeyVerdict::Linearizable { .. })
    }

    /// Number of distinct states the search explored.
    pub fn states(&self) -> u64 {
        match self {
            KeyVerdict::Linearizable { states, .. }
            | KeyVerdict::NotLinearizable { states, .. }
            | KeyVerdict::Inconclusive { states, .. } => *states,
        }
    }
}

impl fmt::Display for KeyVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyVerdict::Linearizable { ops, states } => {
                write!(f, "linearizable ({ops} ops, {states} states)")
            }
            KeyVerdict::NotLinearizable { ops, states, explanation } => {
                write!(f, "NOT linearizable ({ops} ops, {states} states): {explanation}")
            }
            KeyVerdict::Inconclusive { ops, states } => write!(
                f,
                "INCONCLUSIVE ({ops} ops): gave up after {states} states without deciding (counts as failure)"
            ),
        }
    }
}

/// The verdict for a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// True iff every key is [`KeyVerdict::Linearizable`].
    pub ok: bool,
    pub per_key: BTreeMap<String, KeyVerdict>,
}

impl Verdict {
    /// The keys that are not (or not provably) linearizable.
    pub fn failures(&self) -> impl Iterator<Item = (&String, &KeyVerdict)> {
        self.per_key.iter().filter(|(_, v)| !v.is_linearizable())
    }

    /// Total distinct states explored over all keys.
    pub fn states(&self) -> u64 {
        self.per_key.values().map(KeyVerdict::states).sum()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok {
            let ops: usize = self
                .per_key
                .values()
                .map(|v| match v {
                    KeyVerdict::Linearizable { ops, .. } => *ops,
                    _ => 0,
                })
                .sum();
            return write!(
                f,
                "linearizable: {} keys, {ops} ops, {} states explored",
                self.per_key.len(),
                self.states()
            );
        }
        write!(
            f,
            "history is NOT linearizable ({} of {} keys fail)",
            self.failures().count(),
            self.per_key.len()
        )?;
        for (key, v) in self.failures() {
            write!(f, "\n  key {key:?}: {v}")?;
        }
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------------
// Checking
// ----------------------------------------------------------------------------------------------

/// Check a history with the default state budget ([`DEFAULT_MAX_STATES`] per key).
pub fn check(ops: &[Op]) -> Verdict {
    check_with_limit(ops, DEFAULT_MAX_STATES)
}

/// Check a history, exploring at most `max_states` distinct search states per key.
pub fn check_with_limit(ops: &[Op], max_states: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let per_key: BTreeMap<String, KeyVerdict> =
        by_key.into_iter().map(|(key, ops)| (key.to_string(), check_key(&ops, max_states))).collect();
    Verdict { ok: per_key.values().all(KeyVerdict::is_linearizable), per_key }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Read that must return this value id.
    Read(u32),
    /// Write of this value id.
    Write(u32),
}

/// An operation as the search sees it; values are interned (0 = absent).
struct KOp<'a> {
    op: &'a Op,
    invoke: u64,
    /// Completion time; `None` = never (unknown outcome, or no recorded time).
    ret: Option<u64>,
    step: Step,
    /// False for unknown-outcome writes: they need not be linearized.
    required: bool,
}

/// Counts of not-yet-linearized reads and writes per value, and how many values are read by a
/// pending read yet can no longer be the register's value (see "Dead values" in the docs).
#[derive(Clone)]
struct Pending {
    readers: Vec<u32>,
    writers: Vec<u32>,
    dead: usize,
}

impl Pending {
    fn is_dead(&self, v: u32, state: u32) -> bool {
        self.readers[v as usize] > 0 && self.writers[v as usize] == 0 && v != state
    }

    /// Account for linearizing (or, with `undo`, un-linearizing) `step`, which takes the
    /// register from `from` to `to`.
    fn apply(&mut self, step: Step, from: u32, to: u32, undo: bool) {
        let val = match step {
            Step::Read(v) | Step::Write(v) => v,
        };
        let (before, after) = if undo { (to, from) } else { (from, to) };
        let affected = [val, from, to];
        for (k, &v) in affected.iter().enumerate() {
            if !affected[..k].contains(&v) && self.is_dead(v, before) {
                self.dead -= 1;
            }
        }
        let counts = match step {
            Step::Read(_) => &mut self.readers,
            Step::Write(_) => &mut self.writers,
        };
        if undo {
            counts[val as usize] += 1;
        } else {
            counts[val as usize] -= 1;
        }
        for (k, &v) in affected.iter().enumerate() {
            if !affected[..k].contains(&v) && self.is_dead(v, after) {
                self.dead += 1;
            }
        }
    }
}

/// A fast, non-cryptographic hasher for the memo keys (FxHash's mixing step, one word at a
/// time); SipHash dominated the cost of a search step.
#[derive(Default)]
struct WordHasher(u64);

impl std::hash::Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type MemoSet = HashSet<Box<[u64]>, std::hash::BuildHasherDefault<WordHasher>>;

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

fn explain_ops<'a>(ops: impl IntoIterator<Item = &'a Op>) -> String {
    ops.into_iter().map(|op| format!("\n      {op}")).collect()
}

fn check_key<'a>(ops: &[&'a Op], max_states: u64) -> KeyVerdict {
    // --- Validate and intern. -------------------------------------------------------------------
    let mut values: HashMap<Option<&str>, u32> = HashMap::new();
    values.insert(None, 0);
    let mut intern = |v: &'a Option<String>| -> u32 {
        let next = values.len() as u32;
        *values.entry(v.as_deref()).or_insert(next)
    };
    let mut kops: Vec<KOp<'a>> = Vec::new();
    for &op in ops {
        if let Some(c) = op.complete {
            if c < op.invoke && op.result != OpResult::Unknown {
                return KeyVerdict::NotLinearizable {
                    ops: ops.len(),
                    states: 0,
                    explanation: format!("malformed history: completes before it is invoked:\n      {op}"),
                };
            }
        }
        let (step, required, ret) = match (&op.kind, &op.result) {
            (_, OpResult::Failed) | (OpKind::Read, OpResult::Unknown) => continue,
            (OpKind::Read, OpResult::ReadOk(v)) => (Step::Read(intern(v)), true, op.complete),
            (OpKind::Write(v), OpResult::WriteOk) => (Step::Write(intern(v)), true, op.complete),
            (OpKind::Write(v), OpResult::Unknown) => (Step::Write(intern(v)), false, None),
            (OpKind::Read, OpResult::WriteOk) | (OpKind::Write(_), OpResult::ReadOk(_)) => {
                return KeyVerdict::NotLinearizable {
                    ops: ops.len(),
                    states: 0,
                    explanation: format!("malformed history: result does not match operation:\n      {op}"),
                };
            }
        };
        kops.push(KOp { op, invoke: op.invoke, ret, step, required });
    }

    // --- Cheap pre-checks and pruning. ----------------------------------------------------------
    let mut written: HashSet<u32> = HashSet::from([0]);
    let mut read: HashSet<u32> = HashSet::new();
    for k in &kops {
        match k.step {
            Step::Write(v) => {
                written.insert(v);
            }
            Step::Read(v) => {
                read.insert(v);
            }
        }
    }
    if let Some(bad) = kops.iter().find(|k| matches!(k.step, Step::Read(v) if !written.contains(&v))) {
        return KeyVerdict::NotLinearizable {
            ops: kops.len(),
            states: 0,
            explanation: format!(
                "a read returned a value that no successful or possibly successful write wrote:\n      {}",
                bad.op
            ),
        };
    }
    // A read of a value whose every writer was invoked only after the read completed.
    let mut first_writer: HashMap<u32, u64> = HashMap::from([(0, 0)]);
    for k in &kops {
        if let Step::Write(v) = k.step {
            let t = first_writer.entry(v).or_insert(k.invoke);
            *t = (*t).min(k.invoke);
        }
    }
    if let Some(bad) = kops.iter().find(|k| match (k.step, k.ret) {
        (Step::Read(v), Some(ret)) => first_writer[&v] > ret,
        _ => false,
    }) {
        return KeyVerdict::NotLinearizable {
            ops: kops.len(),
            states: 0,
            explanation: format!(
                "a read returned a value that was first written only after the read completed:\n      {}",
                bad.op
            ),
        };
    }
    // An unknown write whose value nobody read can always be linearized last: drop it.
    kops.retain(|k| k.required || matches!(k.step, Step::Write(v) if read.contains(&v)));
    let n = kops.len();
    if n == 0 {
        return KeyVerdict::Linearizable { ops: 0, states: 0 };
    }
    // Number operations in invocation order: the list head is then always the lowest
    // unlinearized index, which is what makes the compact memo key exact.
    kops.sort_by_key(|k| (k.invoke, k.ret.unwrap_or(u64::MAX)));

    // --- Event list: node 0 is the head sentinel. ------------------------------------------------
    // (time, 0 = call / 1 = return, op index)
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, k) in kops.iter().enumerate() {
        events.push((k.invoke, 0, i));
        if k.required {
            events.push((k.ret.unwrap_or(u64::MAX), 1, i));
        }
    }
    events.sort_unstable();
    let m = events.len();
    let mut next = vec![NIL; m + 1];
    let mut prev = vec![NIL; m + 1];
    let mut op_of = vec![NIL; m + 1];
    let mut is_call = vec![false; m + 1];
    let mut call_node = vec![NIL; n];
    let mut ret_node = vec![NIL; n];
    for (j, &(_, kind, i)) in events.iter().enumerate() {
        let node = j + 1;
        prev[node] = j;
        next[j] = node;
        op_of[node] = i;
        is_call[node] = kind == 0;
        if kind == 0 {
            call_node[i] = node;
        } else {
            ret_node[i] = node;
        }
    }
    let unlink = |next: &mut [usize], prev: &mut [usize], x: usize| {
        next[prev[x]] = next[x];
        if next[x] != NIL {
            prev[next[x]] = prev[x];
        }
    };
    let relink = |next: &mut [usize], prev: &mut [usize], x: usize| {
        next[prev[x]] = x;
        if next[x] != NIL {
            prev[next[x]] = x;
        }
    };
    let lift = |next: &mut [usize], prev: &mut [usize], i: usize| {
        unlink(next, prev, call_node[i]);
        if ret_node[i] != NIL {
            unlink(next, prev, ret_node[i]);
        }
    };
    let unlift = |next: &mut [usize], prev: &mut [usize], i: usize| {
        if ret_node[i] != NIL {
            relink(next, prev, ret_node[i]);
        }
        relink(next, prev, call_node[i]);
    };

    // --- The search. ----------------------------------------------------------------------------
    let words = n.div_ceil(64);
    let mut bits = vec![0u64; words];
    let mut cache = MemoSet::default();
    let mut scratch: Vec<u64> = Vec::with_capacity(words + 1);
    // The candidates to try at the current configuration: a single read that fits the current
    // value if there is one (see "Reads go first"), else every write that may go next.
    let candidates = |next: &[usize], state: u32| -> Vec<usize> {
        let mut out = Vec::new();
        let mut e = next[HEAD];
        while e != NIL && is_call[e] {
            let i = op_of[e];
            match kops[i].step {
                Step::Read(v) if v == state => return vec![i],
                Step::Read(_) => {}
                Step::Write(_) => out.push(i),
            }
            e = next[e];
        }
        // Earliest completion first: the write that must take effect soonest.
        out.sort_by_key(|&i| (kops[i].ret.unwrap_or(u64::MAX), i));
        out
    };
    // One level per linearized operation, plus the current one: the candidates at that
    // configuration and how many were tried.
    let mut levels: Vec<(Vec<usize>, usize)> = vec![(candidates(&next, 0), 0)];
    // The linearized operations, with the register value before each.
    let mut path: Vec<usize> = Vec::new();
    let mut path_before: Vec<u32> = Vec::new();
    let mut state: u32 = 0;
    let mut remaining = kops.iter().filter(|k| k.required).count();
    let mut states: u64 = 0;
    let mut pending = Pending { readers: vec![0; values.len()], writers: vec![0; values.len()], dead: 0 };
    for k in &kops {
        match k.step {
            Step::Read(v) => pending.readers[v as usize] += 1,
            Step::Write(v) => pending.writers[v as usize] += 1,
        }
    }
    pending.dead = (0..values.len() as u32).filter(|&v| pending.is_dead(v, 0)).count();
    let mut names: Vec<Option<&str>> = vec![None; values.len()];
    for (&v, &id) in &values {
        names[id as usize] = v;
    }
    let name = |id: u32| fmt_value(&names[id as usize].map(str::to_string));
    // Longest linearized prefix seen and why nothing could follow it, for the explanation.
    // (Only the path is copied here, a memcpy; the explanation is rebuilt from it at the end.)
    let mut best: Option<Vec<usize>> = None;

    loop {
        if remaining == 0 {
            return KeyVerdict::Linearizable { ops: n, states };
        }
        let (cands, tried) = levels.last_mut().expect("at least the root level");
        if let Some(&i) = cands.get(*tried) {
            *tried += 1;
            let new_state = match kops[i].step {
                Step::Read(v) | Step::Write(v) => v,
            };
            pending.apply(kops[i].step, state, new_state, false);
            if pending.dead > 0 {
                // Some pending read can no longer be satisfied: a dead end, no need to look.
                pending.apply(kops[i].step, state, new_state, true);
                continue;
            }
            bits[i / 64] |= 1 << (i % 64);
            lift(&mut next, &mut prev, i);
            // Memo key: value and start word packed in one u64, then the bitset words from the
            // word holding the first gap to the last non-zero word.
            let first_gap = if next[HEAD] == NIL { n } else { op_of[next[HEAD]] };
            let start = first_gap / 64;
            let end = bits.iter().rposition(|&w| w != 0).map_or(start, |last| (last + 1).max(start));
            scratch.clear();
            scratch.push(u64::from(new_state) | ((start as u64) << 32));
            scratch.extend_from_slice(&bits[start..end]);
            if cache.contains(scratch.as_slice()) {
                // Already explored from here, and it failed.
                pending.apply(kops[i].step, state, new_state, true);
                unlift(&mut next, &mut prev, i);
                bits[i / 64] &= !(1 << (i % 64));
                continue;
            }
            cache.insert(scratch.clone().into_boxed_slice());
            states += 1;
            if states > max_states {
                return KeyVerdict::Inconclusive { ops: n, states };
            }
            path.push(i);
            path_before.push(state);
            state = new_state;
            if kops[i].required {
                remaining -= 1;
            }
            levels.push((candidates(&next, state), 0));
        } else {
            // Every candidate failed here: undo the step that led here.
            match &mut best {
                Some(b) if b.len() >= path.len() => {}
                Some(b) => b.clone_from(&path),
                None => best = Some(path.clone()),
            }
            levels.pop();
            let (Some(i), Some(before)) = (path.pop(), path_before.pop()) else {
                break;
            };
            pending.apply(kops[i].step, before, state, true);
            state = before;
            bits[i / 64] &= !(1 << (i % 64));
            if kops[i].required {
                remaining += 1;
            }
            unlift(&mut next, &mut prev, i);
        }
    }

    // --- Not linearizable: explain with the longest prefix found. -------------------------------
    // The search undid everything; replay the longest prefix to explain why it cannot go on.
    let best = best.expect("the root level was exhausted");
    for &i in &best {
        let to = match kops[i].step {
            Step::Read(v) | Step::Write(v) => v,
        };
        pending.apply(kops[i].step, state, to, false);
        bits[i / 64] |= 1 << (i % 64);
        lift(&mut next, &mut prev, i);
        state = to;
    }
    let reasons = explain_frontier(&kops, &next, &is_call, &op_of, &bits, &pending, state, &name);
    let explanation = if best.is_empty() {
        format!("no operation can go first (the value starts absent):{reasons}")
    } else {
        let tail = best.len().saturating_sub(3);
        format!(
            "the longest linearizable prefix found has {} of {} operations, ending with:{}\n    \
             the value is then {}, and none of the operations that may go next works:{reasons}",
            best.len(),
            n,
            explain_ops(best[tail..].iter().map(|&i| kops[i].op)),
            name(state),
        )
    };
    KeyVerdict::NotLinearizable { ops: n, states, explanation }
}

/// Why each operation that may go next cannot (at most 6 of them, the one whose completion
/// bounds the others first).
#[allow(clippy::too_many_arguments)]
fn explain_frontier(
    kops: &[KOp],
    next: &[usize],
    is_call: &[bool],
    op_of: &[usize],
    bits: &[u64],
    pending: &Pending,
    state: u32,
    name: &dyn Fn(u32) -> String,
) -> String {
    let ops = frontier(next, is_call, op_of);
    let mut out = String::new();
    for &i in ops.iter().take(6) {
        let why = match kops[i].step {
            Step::Read(v) if v != state => format!("it returns {} but the value is {}", name(v), name(state)),
            Step::Read(_) => "every continuation after it fails".to_string(),
            Step::Write(v) => {
                let mut after = pending.clone();
                after.apply(kops[i].step, state, v, false);
                let stranded: Vec<&Op> = (0..kops.len())
                    .filter(|&j| j != i && bits[j / 64] & (1 << (j % 64)) == 0)
                    .filter(|&j| matches!(kops[j].step, Step::Read(x) if after.is_dead(x, v)))
                    .map(|j| kops[j].op)
                    .take(3)
                    .collect();
                if stranded.is_empty() {
                    "every continuation after it fails".to_string()
                } else {
                    format!(
                        "after it nothing left can produce the value these pending reads returned:{}",
                        stranded.iter().map(|op| format!("\n          {op}")).collect::<String>()
                    )
                }
            }
        };
        out.push_str(&format!("\n      {}\n        {why}", kops[i].op));
    }
    if ops.len() > 6 {
        out.push_str(&format!("\n      ... and {} more", ops.len() - 6));
    }
    out
}

/// The operations that may be linearized next: invocations before the first completion.
fn frontier(next: &[usize], is_call: &[bool], op_of: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut e = next[HEAD];
    while e != NIL && is_call[e] {
        out.push(op_of[e]);
        e = next[e];
    }
    // The operation whose completion stops the scan must be among them; it is the one that
    // cannot be postponed, so show it first.
    if e != NIL {
        let blocker = op_of[e];
        if let Some(pos) = out.iter().position(|&i| i == blocker) {
            out.remove(pos);
            out.insert(0, blocker);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::Duration;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    fn put(c: usize, k: &str, v: &str, inv: u64, comp: u64) -> Op {
        Op {
            client: c,
            key: k.into(),
            kind: OpKind::Write(s(v)),
            invoke: inv,
            complete: Some(comp),
            result: OpResult::WriteOk,
        }
    }

    fn del(c: usize, k: &str, inv: u64, comp: u64) -> Op {
        Op {
            client: c,
            key: k.into(),
            kind: OpKind::Write(None),
            invoke: inv,
            complete: Some(comp),
            result: OpResult::WriteOk,
        }
    }

    fn get(c: usize, k: &str, seen: Option<&str>, inv: u64, comp: u64) -> Op {
        Op {
            client: c,
            key: k.into(),
            kind: OpKind::Read,
            invoke: inv,
            complete: Some(comp),
            result: OpResult::ReadOk(seen.map(str::to_string)),
        }
    }

    fn put_unknown(c: usize, k: &str, v: &str, inv: u64) -> Op {
        Op {
            client: c,
            key: k.into(),
            kind: OpKind::Write(s(v)),
            invoke: inv,
            complete: None,
            result: OpResult::Unknown,
        }
    }

    fn put_failed(c: usize, k: &str, v: &str, inv: u64, comp: u64) -> Op {
        Op { result: OpResult::Failed, ..put(c, k, v, inv, comp) }
    }

    #[track_caller]
    fn assert_ok(ops: &[Op]) -> Verdict {
        let v = check(ops);
        assert!(v.ok, "expected linearizable, got: {v}");
        v
    }

    #[track_caller]
    fn assert_bad(ops: &[Op]) -> Verdict {
        let v = check(ops);
        assert!(!v.ok, "expected NOT linearizable, got: {v}");
        assert!(
            v.failures().all(|(_, kv)| matches!(kv, KeyVerdict::NotLinearizable { .. })),
            "expected a definite no, got: {v}"
        );
        v
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_ok(&[]);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert_ok(&[
            get(0, "k", None, 0, 10),
            put(0, "k", "a", 20, 30),
            get(1, "k", Some("a"), 40, 50),
            put(1, "k", "b", 60, 70),
            get(0, "k", Some("b"), 80, 90),
            put(2, "k", "a", 100, 110),
            get(2, "k", Some("a"), 120, 130),
        ]);
    }

    #[test]
    fn read_concurrent_with_write_may_see_either_value() {
        for seen in [None, Some("a")] {
            assert_ok(&[put(0, "k", "a", 0, 100), get(1, "k", seen, 10, 20)]);
        }
        // Also when the read overlaps only the end, or only the start, of the write.
        assert_ok(&[put(0, "k", "a", 0, 100), get(1, "k", None, 90, 200)]);
        assert_ok(&[put(0, "k", "a", 50, 100), get(1, "k", Some("a"), 0, 60)]);
    }

    #[test]
    fn concurrent_writes_may_take_effect_in_either_order() {
        for (first, second) in [("a", "b"), ("b", "a")] {
            assert_ok(&[
                put(0, "k", "a", 0, 100),
                put(1, "k", "b", 10, 90),
                get(2, "k", Some(first), 20, 30),
                get(2, "k", Some(second), 40, 50),
                get(3, "k", Some(second), 200, 210),
            ]);
            // Once both completed, the register no longer changes.
            assert_bad(&[
                put(0, "k", "a", 0, 100),
                put(1, "k", "b", 10, 90),
                get(2, "k", Some(first), 110, 120),
                get(2, "k", Some(second), 130, 140),
            ]);
        }
    }

    #[test]
    fn stale_read_after_completed_write_is_rejected() {
        let v =
            assert_bad(&[put(0, "k", "a", 0, 10), put(0, "k", "b", 20, 30), get(1, "k", Some("a"), 40, 50)]);
        let text = v.to_string();
        assert!(text.contains("read(\"k\")"), "explanation should name the read: {text}");
        eprintln!("{text}");
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let v = assert_bad(&[put(0, "k", "a", 0, 10), get(1, "k", Some("zzz"), 20, 30)]);
        assert!(v.to_string().contains("zzz"), "{v}");
        assert_bad(&[get(1, "k", Some("a"), 0, 30)]);
    }

    #[test]
    fn read_your_write_violation_is_rejected() {
        // The client's own acknowledged put is not visible to its next read.
        assert_bad(&[put(0, "k", "a", 0, 10), get(0, "k", None, 20, 30)]);
        assert_bad(&[
            put(0, "k", "a", 0, 10),
            put(0, "k", "b", 20, 30),
            get(0, "k", Some("a"), 40, 50),
            put(1, "k", "a", 0, 15), // another writer of "a", but it ended before "b" started
        ]);
    }

    #[test]
    fn reads_must_not_go_back_in_time() {
        // "b" is being written for a long time; once a read saw "b", a later read cannot see
        // "a" again (nobody writes "a" after it).
        let base = [put(0, "k", "a", 0, 5), put(1, "k", "b", 10, 1000)];
        let mut bad = base.to_vec();
        bad.extend([get(2, "k", Some("b"), 20, 30), get(3, "k", Some("a"), 40, 50)]);
        assert_bad(&bad);
        // The other order is fine: the put of "b" took effect between the two reads.
        let mut good = base.to_vec();
        good.extend([get(2, "k", Some("a"), 20, 30), get(3, "k", Some("b"), 40, 50)]);
        assert_ok(&good);
        // Overlapping reads may see them in either order.
        let mut overlap = base.to_vec();
        overlap.extend([get(2, "k", Some("b"), 20, 45), get(3, "k", Some("a"), 40, 50)]);
        assert_ok(&overlap);
    }

    #[test]
    fn unknown_write_later_observed_is_linearizable() {
        assert_ok(&[
            put(0, "k", "a", 0, 10),
            put_unknown(1, "k", "b", 20),
            get(2, "k", Some("a"), 30, 40),
            // Took effect long after the client gave up.
            get(2, "k", Some("b"), 5000, 5010),
            get(3, "k", Some("b"), 6000, 6010),
        ]);
    }

    #[test]
    fn unknown_write_never_observed_is_linearizable() {
        assert_ok(&[
            put(0, "k", "a", 0, 10),
            put_unknown(1, "k", "b", 20),
            get(2, "k", Some("a"), 30, 40),
            get(2, "k", Some("a"), 5000, 5010),
        ]);
        // Even when its value is read elsewhere, it may still never take effect.
        assert_ok(&[
            put_unknown(1, "k", "b", 20),
            put(0, "k", "b", 100, 110),
            get(2, "k", None, 30, 40),
            get(2, "k", None, 50, 60),
            get(2, "k", Some("b"), 200, 210),
        ]);
    }

    #[test]
    fn unknown_write_is_still_bounded_by_its_invocation_and_by_later_writes() {
        // Observed before it was invoked.
        let v = assert_bad(&[get(0, "k", Some("b"), 0, 10), put_unknown(1, "k", "b", 20)]);
        eprintln!("{v}");
        // It took effect (it was observed), then a later acknowledged put overwrote it; it cannot
        // reappear afterwards.
        assert_bad(&[
            put_unknown(1, "k", "b", 0),
            get(0, "k", Some("b"), 10, 20),
            put(0, "k", "c", 30, 40),
            get(0, "k", Some("b"), 50, 60),
        ]);
    }

    #[test]
    fn unknown_reads_are_ignored() {
        let mut unknown_read = get(0, "k", Some("nonsense"), 0, 10);
        unknown_read.result = OpResult::Unknown;
        unknown_read.complete = None;
        assert_ok(&[unknown_read, put(1, "k", "a", 20, 30), get(1, "k", Some("a"), 40, 50)]);
    }

    #[test]
    fn failed_write_observed_by_a_read_is_rejected() {
        assert_bad(&[
            put(0, "k", "a", 0, 10),
            put_failed(1, "k", "b", 20, 30),
            get(2, "k", Some("b"), 40, 50),
        ]);
        // A failed put that nobody observed is fine.
        assert_ok(&[
            put(0, "k", "a", 0, 10),
            put_failed(1, "k", "b", 20, 30),
            get(2, "k", Some("a"), 40, 50),
        ]);
        // A failed put of a value some other put also wrote: the read must be explained by that
        // other put, which here had been overwritten already.
        assert_bad(&[
            put(0, "k", "b", 0, 10),
            put(0, "k", "a", 20, 30),
            put_failed(1, "k", "b", 40, 50),
            get(2, "k", Some("b"), 60, 70),
        ]);
    }

    #[test]
    fn deletes() {
        assert_ok(&[put(0, "k", "a", 0, 10), del(0, "k", 20, 30), get(1, "k", None, 40, 50)]);
        let v = assert_bad(&[put(0, "k", "a", 0, 10), del(0, "k", 20, 30), get(1, "k", Some("a"), 40, 50)]);
        assert!(v.to_string().contains("delete(\"k\")"), "{v}");
        // A read concurrent with the delete may see either.
        for seen in [None, Some("a")] {
            assert_ok(&[put(0, "k", "a", 0, 10), del(0, "k", 20, 100), get(1, "k", seen, 40, 50)]);
        }
        // Put again after delete.
        assert_ok(&[
            del(0, "k", 0, 10),
            put(0, "k", "a", 20, 30),
            del(1, "k", 40, 50),
            get(1, "k", None, 60, 70),
            put(2, "k", "a", 80, 90),
            get(0, "k", Some("a"), 100, 110),
        ]);
    }

    #[test]
    fn keys_are_checked_independently() {
        let v = assert_bad(&[
            put(0, "x", "1", 0, 10),
            put(0, "y", "1", 0, 10),
            get(1, "x", Some("1"), 20, 30),
            get(1, "y", None, 20, 30), // stale on y
            get(2, "z", None, 0, 5),
        ]);
        assert_eq!(v.per_key.len(), 3);
        assert!(v.per_key["x"].is_linearizable());
        assert!(v.per_key["z"].is_linearizable());
        assert!(matches!(v.per_key["y"], KeyVerdict::NotLinearizable { .. }), "{v}");
        // The same values on different keys do not interact.
        assert_ok(&[put(0, "x", "1", 0, 10), get(1, "y", None, 20, 30)]);
    }

    #[test]
    fn malformed_operations_are_rejected() {
        let mut backwards = put(0, "k", "a", 50, 10);
        assert_bad(std::slice::from_ref(&backwards));
        backwards.result = OpResult::ReadOk(None);
        backwards.complete = Some(60);
        assert_bad(&[backwards]);
    }

    /// Many mutually concurrent puts followed by a contradiction: without memoization the search
    /// would explore every one of 12! (479 million) orders; with it, at most 12 * 2^11.
    #[test]
    fn memoization_keeps_a_hard_violation_cheap() {
        let k = 12;
        let mut ops: Vec<Op> = (0..k).map(|i| put(i, "k", &format!("v{i}"), i as u64, 1000)).collect();
        // After every put completed, two sequential reads see different values.
        ops.push(get(100, "k", Some("v0"), 2000, 2010));
        ops.push(get(100, "k", Some("v1"), 2020, 2030));
        let started = Instant::now();
        let v = assert_bad(&ops);
        let states = v.per_key["k"].states();
        eprintln!("{v}");
        assert!(states <= ((k as u64) << (k - 1)) + 10, "explored {states} states");
        assert!(states > 0);
        eprintln!("12 concurrent puts + contradiction: {states} states in {:?}", started.elapsed());

        // The same shape, consistent: a single read seeing any one of them.
        ops.pop();
        assert_ok(&ops);
    }

    #[test]
    fn inconclusive_is_a_failure() {
        let k = 12;
        let mut ops: Vec<Op> = (0..k).map(|i| put(i, "k", &format!("v{i}"), i as u64, 1000)).collect();
        ops.push(get(100, "k", Some("v0"), 2000, 2010));
        ops.push(get(100, "k", Some("v1"), 2020, 2030));
        let v = check_with_limit(&ops, 100);
        assert!(!v.ok);
        assert!(matches!(v.per_key["k"], KeyVerdict::Inconclusive { .. }), "{v}");
        assert!(v.to_string().contains("INCONCLUSIVE"), "{v}");
    }

    /// A real linearizable register: every op takes effect atomically at a random instant inside
    /// its interval. Some puts fail (and do not take effect) or end unknown (and take effect or
    /// not); some reads fail or end unknown.
    fn simulate(
        rng: &mut StdRng,
        clients: usize,
        ops_per_client: usize,
        keys: usize,
        faults: bool,
    ) -> Vec<Op> {
        struct Planned {
            op: Op,
            at: u64,
            applies: bool,
        }
        let mut planned = Vec::new();
        let mut counter = 0;
        for client in 0..clients {
            let mut t: u64 = rng.gen_range(0..50);
            for _ in 0..ops_per_client {
                let key = format!("key{}", rng.gen_range(0..keys));
                let invoke = t;
                let complete = invoke + rng.gen_range(1..=200);
                let at = rng.gen_range(invoke..=complete);
                t = complete + rng.gen_range(1..=50);
                let roll = rng.gen_range(0..100);
                let kind = if roll < 50 {
                    OpKind::Read
                } else if roll < 90 {
                    counter += 1;
                    OpKind::Write(Some(format!("c{client}-{counter}")))
                } else {
                    OpKind::Write(None)
                };
                let outcome = if faults { rng.gen_range(0..100) } else { 99 };
                let (result, applies, complete) = match (&kind, outcome) {
                    (OpKind::Write(_), 0..=3) => (OpResult::Unknown, true, None),
                    (OpKind::Write(_), 4..=7) => (OpResult::Unknown, false, None),
                    (OpKind::Write(_), 8..=13) => (OpResult::Failed, false, Some(complete)),
                    (OpKind::Write(_), _) => (OpResult::WriteOk, true, Some(complete)),
                    (OpKind::Read, 0..=2) => (OpResult::Unknown, false, None),
                    (OpKind::Read, 3..=4) => (OpResult::Failed, false, Some(complete)),
                    (OpKind::Read, _) => (OpResult::ReadOk(None), true, Some(complete)),
                };
                planned.push(Planned { op: Op { client, key, kind, invoke, complete, result }, at, applies });
            }
        }
        planned.sort_by_key(|p| p.at);
        let mut register: HashMap<String, Option<String>> = HashMap::new();
        for p in &mut planned {
            if !p.applies {
                continue;
            }
            match &p.op.kind {
                OpKind::Write(v) => {
                    register.insert(p.op.key.clone(), v.clone());
                }
                OpKind::Read => p.op.result = OpResult::ReadOk(register.get(&p.op.key).cloned().flatten()),
            }
        }
        planned.into_iter().map(|p| p.op).collect()
    }

    fn is_ok_read(op: &Op) -> bool {
        matches!(op.result, OpResult::ReadOk(_))
    }

    fn is_ok_write(op: &Op) -> bool {
        op.result == OpResult::WriteOk
    }

    /// A read that returns a value overwritten before it started: some acknowledged put `w` of
    /// that (unique) value completed before another acknowledged write `w2` started, and `w2`
    /// completed before the read started.
    fn corrupt_stale(ops: &mut [Op], rng: &mut StdRng) -> bool {
        let reads: Vec<usize> = (0..ops.len()).filter(|&i| is_ok_read(&ops[i])).collect();
        let start = rng.gen_range(0..reads.len().max(1));
        for &r in reads.iter().cycle().skip(start).take(reads.len()) {
            let read = &ops[r];
            let stale = ops.iter().find(|w| {
                w.key == read.key
                    && is_ok_write(w)
                    && matches!(w.kind, OpKind::Write(Some(_)))
                    && ops.iter().any(|w2| {
                        w2.key == read.key
                            && is_ok_write(w2)
                            && w2.invoke > w.complete.unwrap()
                            && w2.complete.unwrap() < read.invoke
                    })
            });
            if let Some(OpKind::Write(v)) = stale.map(|w| w.kind.clone()) {
                ops[r].result = OpResult::ReadOk(v);
                return true;
            }
        }
        false
    }

    /// A read that returns the value of a put invoked only after the read completed.
    fn corrupt_future(ops: &mut [Op], rng: &mut StdRng) -> bool {
        let reads: Vec<usize> = (0..ops.len()).filter(|&i| is_ok_read(&ops[i])).collect();
        let start = rng.gen_range(0..reads.len().max(1));
        for &r in reads.iter().cycle().skip(start).take(reads.len()) {
            let read = &ops[r];
            let future = ops.iter().find(|w| {
                w.key == read.key
                    && w.result != OpResult::Failed
                    && matches!(w.kind, OpKind::Write(Some(_)))
                    && w.invoke > read.complete.unwrap()
            });
            if let Some(OpKind::Write(v)) = future.map(|w| w.kind.clone()) {
                ops[r].result = OpResult::ReadOk(v);
                return true;
            }
        }
        false
    }

    #[test]
    fn random_linearizable_histories_pass_and_corrupted_ones_fail() {
        let (mut stale, mut future) = (0, 0);
        let started = Instant::now();
        for seed in 0..60 {
            let mut rng = StdRng::seed_from_u64(seed);
            // From 3 clients on 3 keys to 10 clients on one key.
            let ops = simulate(&mut rng, 3 + seed as usize % 8, 30, 1 + seed as usize % 3, true);
            let v = check(&ops);
            assert!(v.ok, "seed {seed}: simulated register judged not linearizable: {v}");

            // A never-written value: always caught.
            let mut bad = ops.clone();
            let reads: Vec<usize> = (0..bad.len()).filter(|&i| is_ok_read(&bad[i])).collect();
            let r = reads[rng.gen_range(0..reads.len())];
            bad[r].result = OpResult::ReadOk(s("never-written"));
            let v = check(&bad);
            assert!(!v.ok, "seed {seed}: corrupted read of a never-written value accepted: {v}");

            // A stale value (the search must catch it), and a value from the future (a pre-check
            // catches it).
            let mut bad = ops.clone();
            if corrupt_stale(&mut bad, &mut rng) {
                stale += 1;
                let v = check(&bad);
                assert!(
                    matches!(v.failures().next(), Some((_, KeyVerdict::NotLinearizable { .. }))),
                    "seed {seed}: stale read accepted: {v}"
                );
            }
            let mut bad = ops.clone();
            if corrupt_future(&mut bad, &mut rng) {
                future += 1;
                let v = check(&bad);
                assert!(
                    matches!(v.failures().next(), Some((_, KeyVerdict::NotLinearizable { .. }))),
                    "seed {seed}: read from the future accepted: {v}"
                );
            }
        }
        assert!(stale >= 40 && future >= 40, "too few corruptions exercised: {stale} stale, {future} future");
        eprintln!("60 random histories x 4 checks: {:?}", started.elapsed());
    }

    #[test]
    fn large_history_checks_quickly() {
        let mut rng = StdRng::seed_from_u64(7);
        let ops = simulate(&mut rng, 20, 100, 20, true);
        assert_eq!(ops.len(), 2000);
        let started = Instant::now();
        let v = check(&ops);
        let took = started.elapsed();
        assert!(v.ok, "{v}");
        eprintln!("2000 ops / 20 keys: {v} in {took:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");

        // Same size, all on one key (20 clients contending).
        let ops = simulate(&mut rng, 20, 100, 1, true);
        let started = Instant::now();
        let v = check(&ops);
        let took = started.elapsed();
        assert!(v.ok, "{v}");
        eprintln!("2000 ops / 1 key: {v} in {took:?}");
    }

    /// A long history on one key: the search is a loop, not recursion, so depth is no problem.
    #[test]
    fn ten_thousand_ops_on_one_key() {
        let mut rng = StdRng::seed_from_u64(11);
        let ops = simulate(&mut rng, 5, 2000, 1, true);
        let started = Instant::now();
        let v = check(&ops);
        eprintln!("10000 ops / 1 key / 5 clients: {v} in {:?}", started.elapsed());
        assert!(v.ok, "{v}");
        let mut bad = ops.clone();
        assert!(corrupt_stale(&mut bad, &mut rng));
        let started = Instant::now();
        let v = check(&bad);
        eprintln!("... with one stale read: {} states in {:?}", v.states(), started.elapsed());
        assert!(matches!(v.per_key["key0"], KeyVerdict::NotLinearizable { .. }), "{v}");
    }

    /// Real threads on a mutex-protected map, recorded with [`History`]: linearizable by
    /// construction (each op takes effect while holding the lock, inside its recorded interval).
    #[test]
    fn recorder_with_real_threads() {
        let history = History::new();
        let store = Arc::new(Mutex::new(HashMap::<String, String>::new()));
        let threads: Vec<_> = (0..4)
            .map(|client| {
                let history = history.clone();
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(client as u64);
                    for n in 0..200 {
                        let key = format!("k{}", rng.gen_range(0..3));
                        match rng.gen_range(0..4) {
                            0 | 1 => {
                                let op = history.invoke(client, key.clone(), OpKind::Read);
                                let seen = store.lock().unwrap().get(&key).cloned();
                                op.complete(OpResult::ReadOk(seen));
                            }
                            2 => {
                                let value = format!("{client}-{n}");
                                let op =
                                    history.invoke(client, key.clone(), OpKind::Write(Some(value.clone())));
                                store.lock().unwrap().insert(key, value);
                                if n % 10 == 0 {
                                    drop(op); // outcome unknown to the client
                                } else {
                                    op.complete(OpResult::WriteOk);
                                }
                            }
                            _ => {
                                let op = history.invoke(client, key.clone(), OpKind::Write(None));
                                store.lock().unwrap().remove(&key);
                                op.complete(OpResult::WriteOk);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let ops = history.ops();
        assert_eq!(ops.len(), 800);
        assert!(ops.iter().any(|op| op.result == OpResult::Unknown && op.complete.is_none()));
        assert!(ops.iter().all(|op| op.result == OpResult::Unknown || op.complete >= Some(op.invoke)));
        let v = history.check();
        assert!(v.ok, "{v}");

        // And a forged stale read on top of it is caught.
        let mut forged = ops.clone();
        let end = history.now();
        forged.push(put(9, "k0", "x", end + 10, end + 20));
        forged.push(del(9, "k0", end + 30, end + 40));
        forged.push(get(9, "k0", Some("x"), end + 50, end + 60));
        assert_bad(&forged);
    }
}
