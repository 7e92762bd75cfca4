//! `/metrics`: the node's health in Prometheus' text format (OpenMetrics), from the
//! `prometheus-client` crate. Raft gauges are read from openraft's metrics at scrape time;
//! counters and histograms are updated where things happen.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub proposals: Counter,
    pub proposed_ops: Counter,
    pub proposal_seconds: Histogram,
    pub forwarded: Counter,
    pub auth_failures: Counter,
    pub login_failures: Counter,
    state: Family<StateLabels, Gauge>,
    term: Gauge,
    leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    purged_index: Gauge,
    log_entries: Gauge,
    millis_since_quorum_ack: Gauge,
    snapshot_age: Gauge,
    /// The snapshot index last seen, and when it changed.
    snapshot_seen: std::sync::Mutex<(Option<u64>, std::time::Instant)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("st2kv");
        let m = Metrics {
            http_requests: Family::default(),
            proposals: Counter::default(),
            proposed_ops: Counter::default(),
            proposal_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            forwarded: Counter::default(),
            auth_failures: Counter::default(),
            login_failures: Counter::default(),
            state: Family::default(),
            term: Gauge::default(),
            leader: Gauge::default(),
            last_log_index: Gauge::default(),
            applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
            log_entries: Gauge::default(),
            millis_since_quorum_ack: Gauge::default(),
            snapshot_age: Gauge::default(),
            snapshot_seen: std::sync::Mutex::new((None, std::time::Instant::now())),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "proposals",
            "Raft entries proposed by this node (group-committed batches)",
            m.proposals.clone(),
        );
        registry.register("proposed_ops", "Client commands proposed by this node", m.proposed_ops.clone());
        registry.register(
            "proposal_seconds",
            "Time from batch submission to apply",
            m.proposal_seconds.clone(),
        );
        registry.register("forwarded_batches", "Batches forwarded to the leader", m.forwarded.clone());
        registry.register(
            "auth_failures",
            "Requests refused for missing or bad credentials",
            m.auth_failures.clone(),
        );
        registry.register("login_failures", "Failed logins", m.login_failures.clone());
        registry.register("raft_state", "1 for this node's current Raft role", m.state.clone());
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register("raft_leader", "Id of the leader this node knows (0: none)", m.leader.clone());
        registry.register("raft_last_log_index", "Last log index", m.last_log_index.clone());
        registry.register("raft_applied_index", "Last applied log index", m.applied_index.clone());
        registry.register("raft_snapshot_index", "Log index of the last snapshot", m.snapshot_index.clone());
        registry.register(
            "raft_purged_index",
            "Log index up to which the log is purged",
            m.purged_index.clone(),
        );
        registry.register("raft_log_entries", "Entries kept in the log", m.log_entries.clone());
        registry.register(
            "raft_millis_since_quorum_ack",
            "Leader only: ms since a quorum last acknowledged it (-1 elsewhere)",
            m.millis_since_quorum_ack.clone(),
        );
        registry.register(
            "raft_snapshot_age_seconds",
            "Seconds since this node's snapshot index last changed (-1: no snapshot yet)",
            m.snapshot_age.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn observe_proposal(&self, ops: usize, took: Duration) {
        self.proposals.inc();
        self.proposed_ops.inc_by(ops as u64);
        self.proposal_seconds.observe(took.as_secs_f64());
    }

    /// Render everything, refreshing the Raft gauges from `raft` first.
    pub fn render(&self, raft: &st2kv_raft::Raft) -> String {
        let m = raft.metrics().borrow().clone();
        self.state.clear();
        self.state.get_or_create(&StateLabels { state: format!("{:?}", m.state) }).set(1);
        self.term.set(m.current_term as i64);
        self.leader.set(m.current_leader.unwrap_or(0) as i64);
        let idx = |l: Option<u64>| l.map(|i| i as i64).unwrap_or(0);
        self.last_log_index.set(idx(m.last_log_index));
        self.applied_index.set(idx(m.last_applied.map(|l| l.index)));
        self.snapshot_index.set(idx(m.snapshot.map(|l| l.index)));
        self.purged_index.set(idx(m.purged.map(|l| l.index)));
        self.log_entries.set(idx(m.last_log_index) - idx(m.purged.map(|l| l.index)));
        self.millis_since_quorum_ack.set(m.millis_since_quorum_ack.map(|v| v as i64).unwrap_or(-1));
        {
            let mut seen = self.snapshot_seen.lock().expect("metrics lock");
            let now_index = m.snapshot.map(|l| l.index);
            if seen.0 != now_index {
                *seen = (now_index, std::time::Instant::now());
            }
            self.snapshot_age.set(if now_index.is_some() { seen.1.elapsed().as_secs() as i64 } else { -1 });
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        out
    }
}
