//! The rules engine: triggers in, executions out, each trigger instance firing each matching
//! rule exactly once, across leader changes.
//!
//! **Trigger instances.** Every event becomes a trigger instance *committed through Raft* in
//! table [`TI_PENDING`] before anything acts on it: a webhook post is acknowledged only once its
//! instance is committed (so it is never lost), timers and key-change events are recorded by the
//! leader with ids derived from what fired them (`timer-<rule>-<instant>`,
//! `kv-<log index>-<op>-<event>`), so a second leader recording the same event writes nothing new.
//!
//! **Evaluation** runs on the leader only. For a pending instance it evaluates every enabled rule
//! on that trigger (criteria with templated patterns, rendered against system-scope keys after a
//! read barrier), and records one execution per match under an id derived from (instance, rule)
//! with create-if-absent: however often an instance is evaluated (a leader dying between
//! recording executions and retiring the instance, two leaders for a moment), each rule fires
//! once. The instance then moves to [`TRIGGER_INSTANCES`] (kept 7 days).
//!
//! **Executions.** Built-in runners (`core.noop`, `core.local`, `core.http`) run on the leader
//! that won the execution's claim (`scheduled` → `running`, compare-and-set), so a recovered
//! execution never runs twice; any other action is recorded as `requested` for an external
//! worker, which claims and completes it through the API. Parameters and results are stored with
//! every value that came through `decrypt_kv` masked; the plaintext exists only in the memory
//! of the runner that needs it.
//!
//! **Key-change events** come from the state machine's change feed, which every node keeps in
//! memory: a new leader replays the changes after the last one the previous leader recorded
//! (a replicated cursor). A change older than the new leader's buffer is not replayed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use st2kv_raft::{Command, Cond, KeyChange, Outcome};
use st2kv_rules::{KvEvent, Rule, Trigger};
use tokio::sync::Notify;

use crate::auth::{authenticate, authenticate_write, decode_rec, encode_rec, new_id};
use crate::cluster::now_ms;
use crate::error::ApiError;
use crate::keys::format_timestamp;
use crate::rules::StoredRule;
use crate::App;

pub const TI_PENDING: &str = "ti_pending";
pub const TRIGGER_INSTANCES: &str = "trigger_instances";
pub const EXECUTIONS: &str = "executions";
pub const TIMERS: &str = "timers";
const ENGINE: &str = "engine";
const KV_CURSOR: &str = "kv_cursor";

const TI_KEEP_MS: i64 = 7 * 86_400_000;
const EX_KEEP_MS: i64 = 30 * 86_400_000;
/// Key changes each node keeps for a future leader to replay: at most this many, and at most
/// [`KV_BUFFER_BYTES`] of them (values can be large).
const KV_BUFFER: usize = 10_000;
const KV_BUFFER_BYTES: usize = 32 << 20;
/// Pending instances evaluated per engine round.
const ROUND: usize = 64;

pub const STATUS_SCHEDULED: &str = "scheduled";
pub const STATUS_REQUESTED: &str = "requested";
pub const STATUS_RUNNING: &str = "running";
pub const STATUS_SUCCEEDED: &str = "succeeded";
pub const STATUS_FAILED: &str = "failed";
pub const STATUS_ABANDONED: &str = "abandoned";

/// What the engine shares with request handlers.
pub struct Shared {
    /// Wakes the engine (a webhook was just recorded here).
    pub wake: Notify,
    /// This node's recent key changes, oldest first, and their approximate size in bytes.
    kv: Mutex<(VecDeque<KeyChange>, usize)>,
    /// The period of `st2.timer.daily` (a day; tests shorten it).
    pub daily_period_ms: i64,
}

impl Shared {
    pub fn new(daily_period_ms: i64) -> Self {
        Shared { wake: Notify::new(), kv: Mutex::new((VecDeque::new(), 0)), daily_period_ms }
    }
}

/// A recorded event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriggerInstance {
    pub id: String,
    /// The trigger type, e.g. `core.st2.webhook`.
    pub trigger: String,
    /// Webhook url, for matching rules; empty otherwise.
    #[serde(default)]
    pub url: String,
    /// Set for timer instances: the one rule whose timer fired.
    #[serde(default)]
    pub rule: Option<String>,
    pub payload: Value,
    pub occurrence_ms: i64,
    /// Filled when evaluated: the rules that matched, and criteria errors.
    #[serde(default)]
    pub matched: Vec<String>,
    #[serde(default)]
    pub errors: Vec<String>,
}

/// One rule match and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Execution {
    pub id: String,
    pub rule: String,
    pub rule_id: String,
    pub trigger_instance: String,
    pub trigger: String,
    pub action: String,
    /// Rendered parameters, with every decrypted value masked.
    pub parameters: Value,
    pub status: String,
    pub result: Value,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// The node that ran (or is running) it.
    pub node: Option<u64>,
    /// The external worker that claimed it.
    pub claimed_by: Option<String>,
    /// Who asked for a manual run (`POST /v1/executions`): `st2kv.user` resolves to their keys.
    /// Rule executions have none.
    #[serde(default)]
    pub user: Option<String>,
    /// What the parameters were rendered from, so they can be rendered again for a recovered
    /// execution or a worker's claim without ever storing plaintext.
    pub templates: Value,
    pub payload: Value,
}

impl Execution {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "status": self.status,
            "action": {"ref": self.action},
            "parameters": self.parameters,
            "result": self.result,
            "rule": {"ref": self.rule, "id": self.rule_id},
            "trigger": {"type": self.trigger},
            "trigger_instance": {"id": self.trigger_instance, "payload": self.payload},
            "start_timestamp": format_timestamp(self.created_ms),
            "end_timestamp": self.end_ms.map(format_timestamp),
            "context": {"node": self.node, "claimed_by": self.claimed_by, "user": self.user},
        })
    }
}

fn is_builtin(action: &str) -> bool {
    matches!(action, "core.noop" | "core.local" | "core.http")
}

/// The execution id for (instance, rule): time-ordered, and the same on every leader.
fn execution_id(ti: &TriggerInstance, rule_ref: &str) -> String {
    let h = Sha256::digest(format!("{}\0{}", ti.id, rule_ref).as_bytes());
    format!("{:012x}{}", (ti.occurrence_ms.max(0) as u64) & 0xffff_ffff_ffff, &hex::encode(h)[..12])
}

/// The trigger type a rule listens on, with its classification.
fn trigger_of(rule: &Rule) -> Option<Trigger> {
    rule.trigger().ok()
}

fn trigger_type_name(t: &Trigger) -> String {
    match t {
        Trigger::Webhook { .. } => "core.st2.webhook".into(),
        Trigger::Interval { .. } => "core.st2.IntervalTimer".into(),
        Trigger::Cron(_) => "core.st2.CronTimer".into(),
        Trigger::Daily => "st2.timer.daily".into(),
        Trigger::KeyValue(e) => e.as_str().into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Background tasks

/// How often at most the feed reports changes it skipped.
const LAG_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Skipped key changes, reported at most once per period with the total since the last report.
/// A node catching up applies thousands of changes per batch of entries and would otherwise log
/// a warning per batch (dozens a second while a new member replays the log).
struct LagReport {
    every: Duration,
    last: Option<std::time::Instant>,
    missed: u64,
}

impl LagReport {
    fn new(every: Duration) -> Self {
        LagReport { every, last: None, missed: 0 }
    }

    /// Count `n` more skipped changes; the total to report, if a report is due at `now`.
    fn skipped(&mut self, n: u64, now: std::time::Instant) -> Option<u64> {
        self.missed += n;
        self.due(now)
    }

    /// The total skipped since the last report, if there is one and a report is due at `now`.
    fn due(&mut self, now: std::time::Instant) -> Option<u64> {
        if self.missed == 0 || self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.missed))
    }
}

/// Copy every key change this node applies into the replay buffer (on every node).
pub async fn feed(app: Arc<App>, mut changes: tokio::sync::broadcast::Receiver<KeyChange>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut lag = LagReport::new(LAG_REPORT_EVERY);
    let warn = |missed: u64| {
        tracing::warn!(
            missed,
            "the key-change feed fell behind this node's applies and skipped changes; rules on key events miss them if this node leads before they are recorded"
        )
    };
    loop {
        match changes.recv().await {
            Ok(c) => {
                if lag.missed > 0 {
                    if let Some(missed) = lag.due(std::time::Instant::now()) {
                        warn(missed);
                    }
                }
                let mut guard = app.engine.kv.lock().expect("kv buffer lock");
                let (kv, bytes) = &mut *guard;
                *bytes += change_size(&c);
                kv.push_back(c);
                while kv.len() > KV_BUFFER || (*bytes > KV_BUFFER_BYTES && kv.len() > 1) {
                    if let Some(old) = kv.pop_front() {
                        *bytes -= change_size(&old);
                    }
                }
            }
            Err(RecvError::Lagged(n)) => {
                if let Some(missed) = lag.skipped(n, std::time::Instant::now()) {
                    warn(missed);
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

fn change_size(c: &KeyChange) -> usize {
    let rec = |r: &Option<st2kv_raft::Record>| {
        r.as_ref().map_or(0, |r| r.value.len() + r.description.as_ref().map_or(0, String::len) + 64)
    };
    c.key.name.len() + c.key.user.len() + rec(&c.old) + rec(&c.new) + 64
}

/// The engine loop: idle on followers; on the leader, record key events and due timers, then
/// evaluate pending trigger instances.
pub async fn run(app: Arc<App>) {
    let mut leading = false;
    let mut kv_cursor = 0u64;
    let mut last_recovery = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = app.engine.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if !app.cluster.is_leader() {
            leading = false;
            continue;
        }
        if !leading {
            // Everything the previous leader committed must be applied here before we act on it.
            if app.cluster.linearize().await.is_err() {
                continue;
            }
            kv_cursor = match app.cluster.view.aux_get(ENGINE, KV_CURSOR, now_ms()) {
                Ok(Some(r)) => decode_rec(&r.value).unwrap_or(0),
                _ => 0,
            };
            recover(&app, true).await;
            last_recovery = std::time::Instant::now();
            leading = true;
        } else if last_recovery.elapsed() > Duration::from_secs(10) {
            recover(&app, false).await;
            last_recovery = std::time::Instant::now();
        }
        if let Err(e) = round(&app, &mut kv_cursor).await {
            tracing::debug!(error = %e, "rules engine round failed; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn round(app: &Arc<App>, kv_cursor: &mut u64) -> Result<(), ApiError> {
    let rules: Vec<StoredRule> = crate::rules::all(app)?.into_iter().filter(|r| r.rec.rule.enabled).collect();
    record_key_events(app, &rules, kv_cursor).await?;
    fire_timers(app, &rules).await?;
    let pending = app.cluster.view.aux_list(TI_PENDING, "", now_ms())?;
    if pending.is_empty() {
        return Ok(());
    }
    // Criteria and parameters read keys: see every write acknowledged before this round.
    app.cluster.linearize().await?;
    for (id, rec) in pending.into_iter().take(ROUND) {
        let ti: TriggerInstance = match decode_rec(&rec.value) {
            Ok(ti) => ti,
            Err(e) => {
                // Never let one unreadable record stop every later event.
                tracing::error!(trigger_instance = %id, error = %e, "dropping an unreadable trigger instance");
                let cmd = Command::DeleteAux {
                    table: TI_PENDING.into(),
                    key: id,
                    cond: Cond::Revision(rec.revision),
                };
                app.cluster.propose(cmd).await?;
                continue;
            }
        };
        evaluate(app, &rules, ti, rec.revision).await.map_err(|e| {
            tracing::warn!(trigger_instance = %id, error = %e, "evaluating a trigger instance failed");
            e
        })?;
    }
    Ok(())
}

fn pending_put(ti: &TriggerInstance) -> Command {
    Command::PutAux {
        table: TI_PENDING.into(),
        key: ti.id.clone(),
        value: encode_rec(ti),
        expire_at_ms: None,
        cond: Cond::Absent,
    }
}

/// Turn buffered key changes after the cursor into trigger instances (only for events some
/// enabled rule listens to, and only changes newer than that rule), then advance the cursor.
async fn record_key_events(app: &App, rules: &[StoredRule], kv_cursor: &mut u64) -> Result<(), ApiError> {
    let listeners: Vec<(KvEvent, u64)> = rules
        .iter()
        .filter_map(|r| match trigger_of(&r.rec.rule) {
            Some(Trigger::KeyValue(e)) => Some((e, r.revision)),
            _ => None,
        })
        .collect();
    let changes: Vec<KeyChange> = {
        let kv = app.engine.kv.lock().expect("kv buffer lock");
        if listeners.is_empty() {
            // Nobody listens: nothing to record, only move past what is buffered.
            *kv_cursor = kv.0.back().map_or(*kv_cursor, |c| c.index.max(*kv_cursor));
            return Ok(());
        }
        kv.0.iter().filter(|c| c.index > *kv_cursor).take(256).cloned().collect()
    };
    let Some(last) = changes.last().map(|c| c.index) else { return Ok(()) };
    let mut cmds = Vec::new();
    for c in &changes {
        for (event, payload) in key_events(c) {
            if listeners.iter().any(|(e, rev)| *e == event && c.index > *rev) {
                let ti = TriggerInstance {
                    id: format!("kv-{:016}-{:04}-{}", c.index, c.seq, event_short(event)),
                    trigger: event.as_str().into(),
                    url: String::new(),
                    rule: None,
                    payload,
                    occurrence_ms: c
                        .new
                        .as_ref()
                        .or(c.old.as_ref())
                        .map(|r| r.updated_ms)
                        .unwrap_or_else(now_ms),
                    matched: Vec::new(),
                    errors: Vec::new(),
                };
                cmds.push((pending_put(&ti), Vec::new()));
            }
        }
    }
    cmds.push((
        Command::PutAux {
            table: ENGINE.into(),
            key: KV_CURSOR.into(),
            value: encode_rec(&last),
            expire_at_ms: None,
            cond: Cond::Always,
        },
        Vec::new(),
    ));
    app.cluster.propose_all(cmds).await?;
    *kv_cursor = last;
    Ok(())
}

fn event_short(e: KvEvent) -> &'static str {
    match e {
        KvEvent::Create => "create",
        KvEvent::Update => "update",
        KvEvent::ValueChange => "value_change",
        KvEvent::Delete => "delete",
    }
}

/// StackStorm's key-value trigger payloads for one change, secret values masked.
fn key_events(c: &KeyChange) -> Vec<(KvEvent, Value)> {
    let obj = |r: &st2kv_raft::Record| {
        let mut kvp = crate::keys::render(&c.key, r, None);
        if kvp.secret {
            kvp.value = st2kv_rules::MASK.to_string();
        }
        serde_json::to_value(kvp).expect("a key is JSON")
    };
    match (&c.old, &c.new) {
        (None, Some(new)) => vec![(KvEvent::Create, json!({"object": obj(new)}))],
        (Some(old), Some(new)) => {
            let mut v = vec![(KvEvent::Update, json!({"object": obj(new)}))];
            if old.value != new.value {
                v.push((KvEvent::ValueChange, json!({"old_object": obj(old), "new_object": obj(new)})));
            }
            v
        }
        (Some(old), None) => vec![(KvEvent::Delete, json!({"object": obj(old)}))],
        (None, None) => Vec::new(),
    }
}

#[derive(Serialize, Deserialize)]
struct TimerState {
    last_ms: i64,
}

/// Record an instance for every timer rule that is due. The timer state and the instance are
/// written in one entry, under compare-and-set, so a fire time is recorded once.
async fn fire_timers(app: &App, rules: &[StoredRule]) -> Result<(), ApiError> {
    let now = now_ms();
    for r in rules {
        let Some(trigger) = trigger_of(&r.rec.rule) else { continue };
        if !matches!(trigger, Trigger::Interval { .. } | Trigger::Cron(_) | Trigger::Daily) {
            continue;
        }
        let r#ref = r.rec.rule.reference();
        let state = app.cluster.view.aux_get(TIMERS, &r#ref, now)?;
        let Some(state) = state else {
            // A new timer starts counting now.
            let cmd = Command::PutAux {
                table: TIMERS.into(),
                key: r#ref.clone(),
                value: encode_rec(&TimerState { last_ms: now }),
                expire_at_ms: None,
                cond: Cond::Absent,
            };
            app.cluster.propose(cmd).await?;
            continue;
        };
        let last = decode_rec::<TimerState>(&state.value)?.last_ms;
        let Some(due) = st2kv_rules::next_fire_ms(&trigger, last, app.engine.daily_period_ms) else {
            continue;
        };
        if due > now {
            continue;
        }
        // Missed several fire times (no leader for a while)? Fire once, then start over from now.
        let caught_up =
            st2kv_rules::next_fire_ms(&trigger, due, app.engine.daily_period_ms).is_none_or(|n| n > now);
        let ti = TriggerInstance {
            id: format!("timer-{}-{}", r#ref, due),
            trigger: trigger_type_name(&trigger),
            url: String::new(),
            rule: Some(r#ref.clone()),
            payload: json!({"executed_at": format_timestamp(due), "schedule": null}),
            occurrence_ms: due,
            matched: Vec::new(),
            errors: Vec::new(),
        };
        let cmds = vec![
            (
                Command::PutAux {
                    table: TIMERS.into(),
                    key: r#ref.clone(),
                    value: encode_rec(&TimerState { last_ms: if caught_up { due } else { now } }),
                    expire_at_ms: None,
                    cond: Cond::Revision(state.revision),
                },
                Vec::new(),
            ),
            (pending_put(&ti), Vec::new()),
        ];
        app.cluster.propose_all(cmds).await?;
    }
    Ok(())
}

/// Does `rule` listen to this instance?
fn listens(rule: &Rule, ti: &TriggerInstance) -> bool {
    if let Some(target) = &ti.rule {
        return *target == rule.reference();
    }
    match trigger_of(rule) {
        Some(Trigger::Webhook { url }) => ti.trigger == "core.st2.webhook" && url == ti.url,
        Some(Trigger::KeyValue(e)) => ti.trigger == e.as_str(),
        _ => false,
    }
}

/// Evaluate one pending instance against the rules, record the executions, retire it.
async fn evaluate(
    app: &Arc<App>,
    rules: &[StoredRule],
    mut ti: TriggerInstance,
    rev: u64,
) -> Result<(), ApiError> {
    let renderer = crate::templates::rule_renderer(app);
    let context = json!({"trigger": ti.payload});
    let mut to_run = Vec::new();
    let listening: Vec<&StoredRule> = rules.iter().filter(|r| listens(&r.rec.rule, &ti)).collect();
    for r in listening {
        let rule = &r.rec.rule;
        let r#ref = rule.reference();
        match st2kv_rules::matches(rule, &ti.payload, &renderer) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                ti.errors.push(format!("{}: {e}", r#ref));
                continue;
            }
        }
        ti.matched.push(r#ref.clone());
        let templates = Value::Object(rule.action.parameters.clone());
        let action = rule.action_ref().to_string();
        let (parameters, plain, secrets, status, result) = match renderer.render(&templates, &context) {
            Ok(out) => {
                let status = if is_builtin(&action) { STATUS_SCHEDULED } else { STATUS_REQUESTED };
                (out.masked, out.value, out.secrets, status, json!({}))
            }
            Err(e) => (Value::Null, Value::Null, Vec::new(), STATUS_FAILED, json!({"error": e.to_string()})),
        };
        let ex = Execution {
            id: execution_id(&ti, &r#ref),
            rule: r#ref,
            rule_id: r.rec.id.clone(),
            trigger_instance: ti.id.clone(),
            trigger: ti.trigger.clone(),
            action,
            parameters,
            status: status.into(),
            result,
            created_ms: now_ms(),
            started_ms: None,
            end_ms: (status == STATUS_FAILED).then(now_ms),
            node: None,
            claimed_by: None,
            user: None,
            templates,
            payload: ti.payload.clone(),
        };
        match put_execution(app, &ex, Cond::Absent).await? {
            Some(revision) => {
                tracing::info!(execution = %ex.id, rule = %ex.rule, action = %ex.action, status = %ex.status, "rule matched");
                if ex.status == STATUS_SCHEDULED {
                    to_run.push((ex, revision, plain, secrets));
                }
            }
            None => tracing::debug!(execution = %ex.id, "execution already recorded"),
        }
    }
    let id = ti.id.clone();
    let cmds = vec![
        (
            Command::PutAux {
                table: TRIGGER_INSTANCES.into(),
                key: id.clone(),
                value: encode_rec(&ti),
                expire_at_ms: Some(now_ms() + TI_KEEP_MS),
                cond: Cond::Always,
            },
            Vec::new(),
        ),
        (Command::DeleteAux { table: TI_PENDING.into(), key: id, cond: Cond::Revision(rev) }, Vec::new()),
    ];
    app.cluster.propose_all(cmds).await?;
    for (ex, revision, plain, secrets) in to_run {
        tokio::spawn(dispatch(app.clone(), ex, revision, plain, secrets));
    }
    Ok(())
}

/// Write an execution record; `None` when its condition did not hold.
async fn put_execution(app: &App, ex: &Execution, cond: Cond) -> Result<Option<u64>, ApiError> {
    let cmd = Command::PutAux {
        table: EXECUTIONS.into(),
        key: ex.id.clone(),
        value: encode_rec(ex),
        expire_at_ms: Some(ex.created_ms + EX_KEEP_MS),
        cond,
    };
    match app.cluster.propose(cmd).await? {
        Outcome::AuxPut { revision, .. } => Ok(Some(revision)),
        Outcome::CondFailed { .. } => Ok(None),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// Claim a scheduled execution, run it, record the result (masked).
async fn dispatch(app: Arc<App>, mut ex: Execution, rev: u64, params: Value, secrets: Vec<String>) {
    ex.status = STATUS_RUNNING.into();
    ex.started_ms = Some(now_ms());
    ex.node = Some(app.cluster.id);
    let rev = match put_execution(&app, &ex, Cond::Revision(rev)).await {
        Ok(Some(r)) => r,
        Ok(None) => return, // someone else claimed it
        Err(e) => {
            tracing::warn!(execution = %ex.id, error = %e, "could not claim an execution; it will be recovered");
            return;
        }
    };
    let params = match params {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let (ok, result) = crate::runners::run(&ex.action, &params).await;
    ex.status = if ok { STATUS_SUCCEEDED } else { STATUS_FAILED }.into();
    ex.result = st2kv_rules::mask(&result, &secrets);
    ex.end_ms = Some(now_ms());
    tracing::info!(execution = %ex.id, action = %ex.action, status = %ex.status, "execution finished");
    for attempt in 0..60 {
        match put_execution(&app, &ex, Cond::Revision(rev)).await {
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(execution = %ex.id, attempt, error = %e, "recording a result failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    tracing::error!(execution = %ex.id, "could not record an execution's result");
}

/// Render an execution's parameters again (plaintext), for recovery or a worker's claim. A
/// manual run's requester had their rights checked when it was created.
fn rerender(app: &Arc<App>, ex: &Execution) -> Result<(Value, Vec<String>), ApiError> {
    let renderer = match &ex.user {
        None => crate::templates::rule_renderer(app),
        Some(u) => crate::templates::user_renderer(app, u, true),
    };
    let out = renderer
        .render(&ex.templates, &json!({"trigger": ex.payload}))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((out.value, out.secrets))
}

/// After a leader change (and every few seconds): run scheduled executions nobody claimed, and
/// give up on built-in runs whose runner has been silent far longer than any timeout.
async fn recover(app: &Arc<App>, all: bool) {
    let now = now_ms();
    let Ok(list) = app.cluster.view.aux_list(EXECUTIONS, "", now) else { return };
    for (_, rec) in list {
        let Ok(ex) = decode_rec::<Execution>(&rec.value) else { continue };
        if ex.status == STATUS_SCHEDULED && (all || now - ex.created_ms > 5_000) {
            match rerender(app, &ex) {
                Ok((plain, secrets)) => {
                    tokio::spawn(dispatch(app.clone(), ex, rec.revision, plain, secrets));
                }
                Err(e) => {
                    let mut ex = ex;
                    ex.status = STATUS_FAILED.into();
                    ex.result = json!({"error": e.to_string()});
                    ex.end_ms = Some(now);
                    let _ = put_execution(app, &ex, Cond::Revision(rec.revision)).await;
                }
            }
        } else if ex.status == STATUS_RUNNING
            && ex.claimed_by.is_none()
            && ex.started_ms.is_some_and(|s| now - s > crate::runners::timeout_ms(&ex.parameters) + 60_000)
        {
            let mut ex = ex;
            ex.status = STATUS_ABANDONED.into();
            ex.end_ms = Some(now);
            let _ = put_execution(app, &ex, Cond::Revision(rec.revision)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// `POST /v1/webhooks/{url}`: record a `core.st2.webhook` instance (payload `{body, headers}`)
/// and answer 202 with the body once it is committed. 404 when no rule listens on `url`.
pub async fn webhook(
    State(app): State<Arc<App>>,
    Path(url): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = authenticate_write(&app, &headers, &q).await?;
    let url = url.trim_matches('/').to_string();
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("Failed to parse request body: {e}")))?
    };
    let known = |app: &App| -> Result<bool, ApiError> {
        Ok(crate::rules::all(app)?
            .iter()
            .any(|r| matches!(trigger_of(&r.rec.rule), Some(Trigger::Webhook { url: u }) if *u == url)))
    };
    // A rule created through another node a moment ago may not be applied here yet: before
    // answering 404, catch up with every acknowledged write.
    let known = known(&app)? || {
        app.cluster.linearize().await?;
        known(&app)?
    };
    if !known {
        return Err(ApiError::NotFound(format!("Webhook \"{url}\" is not registered by any rule.")));
    }
    let mut hdrs = Map::new();
    for (k, v) in &headers {
        let name = k.as_str();
        if matches!(name, "x-auth-token" | "st2-api-key" | "authorization" | "cookie") {
            continue;
        }
        if let Ok(v) = v.to_str() {
            hdrs.insert(name.to_string(), json!(v));
        }
    }
    let ti = TriggerInstance {
        id: format!("wh-{}", new_id()),
        trigger: "core.st2.webhook".into(),
        url,
        rule: None,
        payload: json!({"body": body, "headers": hdrs}),
        occurrence_ms: now_ms(),
        matched: Vec::new(),
        errors: Vec::new(),
    };
    match app.cluster.propose_guarded(pending_put(&ti), req.guards.clone()).await? {
        Outcome::AuxPut { .. } => {}
        Outcome::GuardFailed => return Err(ApiError::Unauthorized("Unauthorized".into())),
        other => return Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
    app.engine.wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(body)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    action: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// `POST /v1/executions` `{"action": REF, "parameters": {...}}`: run an action by hand, as the
/// caller. Parameters are rendered with the caller's `st2kv.user` keys and rights (a secret the
/// caller may not decrypt refuses the run, 403). Built-in runners that reach outside the cluster
/// (`core.local`, `core.http`) need an admin. 201 with the execution.
pub async fn run_execution(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = authenticate_write(&app, &headers, &q).await?;
    let run: RunRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("Failed to parse request body: {e}")))?;
    let action = run.action.trim().to_string();
    if action.is_empty() {
        return Err(ApiError::BadRequest("action: required (an action ref such as core.noop)".into()));
    }
    if matches!(action.as_str(), "core.local" | "core.http") {
        req.require_admin(&format!("run {action}"))?;
    }
    let templates = Value::Object(run.parameters);
    app.cluster.linearize().await?;
    let out = crate::templates::user_renderer(&app, &req.user, req.admin)
        .render(&templates, &json!({"trigger": {}}))
        .map_err(|e| match e.to_string() {
            m if m.contains("may not decrypt") => ApiError::Forbidden(format!("parameters.{m}")),
            m => ApiError::BadRequest(format!("parameters.{m}")),
        })?;
    let now = now_ms();
    let ex = Execution {
        id: format!("{:012x}{}", (now.max(0) as u64) & 0xffff_ffff_ffff, &new_id()[..12]),
        rule: String::new(),
        rule_id: String::new(),
        trigger_instance: String::new(),
        trigger: String::new(),
        status: if is_builtin(&action) { STATUS_SCHEDULED } else { STATUS_REQUESTED }.into(),
        action,
        parameters: out.masked,
        result: json!({}),
        created_ms: now,
        started_ms: None,
        end_ms: None,
        node: None,
        claimed_by: None,
        user: Some(req.user.clone()),
        templates,
        payload: json!({}),
    };
    let cmd = Command::PutAux {
        table: EXECUTIONS.into(),
        key: ex.id.clone(),
        value: encode_rec(&ex),
        expire_at_ms: Some(ex.created_ms + EX_KEEP_MS),
        cond: Cond::Absent,
    };
    let revision = match app.cluster.propose_guarded(cmd, req.guards.clone()).await? {
        Outcome::AuxPut { revision, .. } => revision,
        Outcome::GuardFailed => return Err(ApiError::Unauthorized("Unauthorized".into())),
        other => return Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    };
    tracing::info!(target: "audit", user = %req.user, execution = %ex.id, action = %ex.action, "execution requested");
    if ex.status == STATUS_SCHEDULED {
        tokio::spawn(dispatch(app.clone(), ex.clone(), revision, out.value, out.secrets));
    }
    Ok((StatusCode::CREATED, Json(ex.to_json())))
}

fn load_execution(app: &App, id: &str) -> Result<(Execution, u64), ApiError> {
    match app.cluster.view.aux_get(EXECUTIONS, id, now_ms())? {
        Some(r) => Ok((decode_rec(&r.value)?, r.revision)),
        None => Err(ApiError::NotFound(format!("Execution with id \"{id}\" is not found."))),
    }
}

/// `GET /v1/executions[?rule=R&status=S&action=A&limit=N]`: newest first (limit 100 by default).
pub async fn list_executions(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Vec<Value>>, ApiError> {
    authenticate(&app, &headers, &q, true).await?;
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest("Parameter \"limit\" is not of type integer".into()))?,
    };
    let mut out = Vec::new();
    for (_, rec) in app.cluster.view.aux_list(EXECUTIONS, "", now_ms())?.into_iter().rev() {
        let ex: Execution = decode_rec(&rec.value)?;
        let keep = q.get("rule").is_none_or(|r| *r == ex.rule)
            && q.get("status").is_none_or(|s| *s == ex.status)
            && q.get("action").is_none_or(|a| *a == ex.action)
            && q.get("trigger_instance").is_none_or(|t| *t == ex.trigger_instance);
        if keep {
            out.push(ex.to_json());
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(Json(out))
}

/// `GET /v1/executions/{id}`.
pub async fn get_execution(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, &q, true).await?;
    Ok(Json(load_execution(&app, &id)?.0.to_json()))
}

/// `POST /v1/executions/{id}/claim` (admin; an external worker): `requested` → `running`.
/// The answer carries the parameters in plaintext (rendered now), for the worker only.
pub async fn claim_execution(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let req = authenticate_write(&app, &headers, &q).await?;
    req.require_admin("claim executions")?;
    app.cluster.linearize().await?;
    let (mut ex, rev) = load_execution(&app, &id)?;
    if ex.status != STATUS_REQUESTED {
        return Err(ApiError::Conflict(format!(
            "Execution \"{id}\" is {}; only a requested execution can be claimed.",
            ex.status
        )));
    }
    let (plain, _) = rerender(&app, &ex)?;
    ex.status = STATUS_RUNNING.into();
    ex.started_ms = Some(now_ms());
    ex.claimed_by = Some(req.user.clone());
    if put_execution(&app, &ex, Cond::Revision(rev)).await?.is_none() {
        return Err(ApiError::Conflict(format!("Execution \"{id}\" was claimed by someone else.")));
    }
    tracing::info!(target: "audit", user = %req.user, execution = %id, "execution claimed");
    let mut v = ex.to_json();
    v["parameters"] = plain;
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Completion {
    status: String,
    #[serde(default)]
    result: Value,
}

/// `PUT /v1/executions/{id}` (admin; the worker that claimed it): `{"status":
/// "succeeded"|"failed", "result": ...}` completes a running, claimed execution.
pub async fn complete_execution(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = authenticate_write(&app, &headers, &q).await?;
    req.require_admin("complete executions")?;
    let done: Completion = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("Failed to parse request body: {e}")))?;
    if done.status != STATUS_SUCCEEDED && done.status != STATUS_FAILED {
        return Err(ApiError::BadRequest(format!(
            "status: \"{}\" is not one of: succeeded, failed",
            done.status
        )));
    }
    app.cluster.linearize().await?;
    let (mut ex, rev) = load_execution(&app, &id)?;
    if ex.status != STATUS_RUNNING || ex.claimed_by.is_none() {
        return Err(ApiError::Conflict(format!(
            "Execution \"{id}\" is {}; claim it before completing it.",
            ex.status
        )));
    }
    // A worker may echo secrets it was given: mask them in what is stored.
    let (_, secrets) = rerender(&app, &ex).unwrap_or((Value::Null, Vec::new()));
    ex.status = done.status;
    ex.result = st2kv_rules::mask(&done.result, &secrets);
    ex.end_ms = Some(now_ms());
    if put_execution(&app, &ex, Cond::Revision(rev)).await?.is_none() {
        return Err(ApiError::Conflict(format!("Execution \"{id}\" changed meanwhile; read it and retry.")));
    }
    Ok(Json(ex.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn skipped_changes_are_reported_at_once_then_summed_per_period() {
        let every = Duration::from_secs(10);
        let mut lag = LagReport::new(every);
        let t0 = Instant::now();
        assert_eq!(lag.due(t0), None, "nothing skipped, nothing to report");
        assert_eq!(lag.skipped(100, t0), Some(100), "the first skip is reported at once");
        assert_eq!(lag.skipped(30, t0 + Duration::from_secs(1)), None);
        assert_eq!(lag.skipped(12, t0 + Duration::from_secs(9)), None);
        assert_eq!(lag.due(t0 + Duration::from_secs(9)), None, "still within the period");
        assert_eq!(lag.due(t0 + every), Some(42), "the period's skips are reported as one total");
        assert_eq!(lag.due(t0 + every * 3), None, "and only once");
        assert_eq!(
            lag.skipped(5, t0 + every * 3),
            Some(5),
            "a skip after a quiet period is reported at once"
        );
    }
}
