//! `st2kv-bench`: a closed-loop HTTP load generator for an st2kv cluster.
//!
//! It finds the leader through `GET /v1/cluster/status` on every node, then runs each selected
//! workload for `--duration` seconds (after `--warmup` seconds that are not measured):
//!
//! | workload          | conns | target                 | request                                |
//! |-------------------|-------|------------------------|----------------------------------------|
//! | `seq-put`         | 1     | leader                 | `PUT /v1/keys/{k}`                     |
//! | `put-16/64/256`   | N     | all nodes, by task     | `PUT /v1/keys/{k}`                     |
//! | `put-leader-64`   | 64    | leader                 | `PUT /v1/keys/{k}`                     |
//! | `put-follower-64` | 64    | one follower           | `PUT /v1/keys/{k}`                     |
//! | `read-lin-64`     | 64    | all nodes, by task     | `GET /v1/keys/{k}` (linearizable)      |
//! | `read-stale-64`   | 64    | all nodes, by task     | `GET /v1/keys/{k}?consistency=stale`   |
//!
//! Every task owns one HTTP client and so one keep-alive connection, and sends its next request
//! as soon as the previous one is answered. Task `t` talks to node `t % nodes` when a workload
//! spreads over all nodes. Puts write distinct keys `bench-{workload}-{task}-{n}`; reads pick
//! random keys among `--read-keys` keys written before the first read workload.
//!
//! Throughput counts successful requests that completed inside the measured window; latencies
//! are of those same requests. Any non-2xx answer or transport failure is an error, counted
//! separately (warm-up included), with the first error's body printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const ALL_WORKLOADS: &[&str] = &[
    "seq-put",
    "put-16",
    "put-64",
    "put-256",
    "put-leader-64",
    "put-follower-64",
    "read-lin-64",
    "read-stale-64",
];

/// Closed-loop load generator for a st2kv cluster. Progress goes to stderr; the results table
/// goes to stdout (to stderr with --json, which then prints one JSON document on stdout).
#[derive(Debug, Parser)]
#[command(name = "st2kv-bench", version, args_override_self = true)]
struct Args {
    /// API base URLs of every node, comma separated, e.g.
    /// http://127.0.1.1:9101,http://127.0.1.2:9101,http://127.0.1.3:9101
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,

    /// Measured seconds per workload.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Unmeasured seconds at the start of each workload (connections open, caches fill).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,

    /// Workloads to run, comma separated, in the given order; `all` for every one:
    /// seq-put, put-16, put-64, put-256, put-leader-64, put-follower-64, read-lin-64,
    /// read-stale-64.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    workloads: Vec<String>,

    /// Size of every written value, in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,

    /// Keys written before the read workloads, which read them at random.
    #[arg(long, default_value_t = 1000)]
    read_keys: usize,

    /// Per-request timeout in seconds; a timed-out request is an error.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,

    /// Print the results as one JSON document on stdout (the table then goes to stderr).
    #[arg(long)]
    json: bool,

    /// Authenticate every request with this token (header `X-Auth-Token`).
    #[arg(long, env = "ST2_AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Authenticate every request with this API key (header `St2-Api-Key`).
    #[arg(long, env = "ST2_API_KEY", hide_env_values = true, conflicts_with = "token")]
    api_key: Option<String>,

    /// Log in as this user (`POST /auth/v1/tokens` with HTTP Basic) and use the token. The user
    /// must be an admin: `/v1/cluster/status` is admin-only.
    #[arg(long, env = "ST2KV_BENCH_USER", conflicts_with_all = ["token", "api_key"], requires = "password")]
    user: Option<String>,

    /// Password for --user (prefer the environment variable).
    #[arg(long, env = "ST2KV_BENCH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

/// Credential headers sent with every request; empty for a cluster run with --insecure-no-auth.
static AUTH_HEADERS: std::sync::OnceLock<reqwest::header::HeaderMap> = std::sync::OnceLock::new();

/// One node of the cluster as its status reports it.
#[derive(Debug, Clone)]
struct NodeInfo {
    id: u64,
    url: String,
}

/// The cluster as seen at one moment.
#[derive(Debug, Clone)]
struct Topology {
    nodes: Vec<NodeInfo>,
    leader: u64,
    term: u64,
}

impl Topology {
    fn leader_url(&self) -> &str {
        &self.nodes.iter().find(|n| n.id == self.leader).expect("leader is a known node").url
    }

    fn first_follower(&self) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id != self.leader)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Put,
    Read { stale: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Leader,
    Follower,
    All,
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    name: &'static str,
    conns: usize,
    op: Op,
    target: Target,
}

fn spec(name: &str) -> Option<Spec> {
    let (name, conns, op, target) = match name {
        "seq-put" => ("seq-put", 1, Op::Put, Target::Leader),
        "put-16" => ("put-16", 16, Op::Put, Target::All),
        "put-64" => ("put-64", 64, Op::Put, Target::All),
        "put-256" => ("put-256", 256, Op::Put, Target::All),
        "put-leader-64" => ("put-leader-64", 64, Op::Put, Target::Leader),
        "put-follower-64" => ("put-follower-64", 64, Op::Put, Target::Follower),
        "read-lin-64" => ("read-lin-64", 64, Op::Read { stale: false }, Target::All),
        "read-stale-64" => ("read-stale-64", 64, Op::Read { stale: true }, Target::All),
        _ => return None,
    };
    Some(Spec { name, conns, op, target })
}

/// What one workload measured.
#[derive(Debug)]
struct Report {
    name: &'static str,
    conns: usize,
    target: String,
    ok: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    max_ms: f64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    first_error: Option<String>,
    leader_changed: Option<String>,
}

impl Report {
    fn ops_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "workload": self.name,
            "connections": self.conns,
            "target": self.target,
            "ok": self.ok,
            "seconds": self.secs,
            "ops_per_s": round2(self.ops_per_s()),
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "mean_ms": round3(self.mean_ms),
            "max_ms": round3(self.max_ms),
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "first_error": self.first_error,
            "leader_changed": self.leader_changed,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What one task brings back.
#[derive(Default)]
struct TaskResult {
    lat_us: Vec<u32>,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
}

/// Shared by all tasks of a workload: the first error's description.
#[derive(Default)]
struct FirstError(Mutex<Option<String>>);

impl FirstError {
    fn offer(&self, f: impl FnOnce() -> String) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(f());
        }
    }
}

fn client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(timeout)
        .default_headers(AUTH_HEADERS.get().cloned().unwrap_or_default())
        .build()
        .context("building the HTTP client")
}

/// `GET {url}/v1/cluster/status`.
async fn status(http: &reqwest::Client, url: &str) -> Result<Value> {
    let r = http
        .get(format!("{url}/v1/cluster/status"))
        .send()
        .await
        .with_context(|| format!("GET {url}/v1/cluster/status"))?;
    let code = r.status();
    let body = r.text().await.with_context(|| format!("reading {url}/v1/cluster/status"))?;
    if code == reqwest::StatusCode::UNAUTHORIZED || code == reqwest::StatusCode::FORBIDDEN {
        bail!(
            "GET {url}/v1/cluster/status answered {code}: {body} \
             (the cluster wants an admin's credentials: --user/--password, --token or --api-key)"
        );
    }
    if !code.is_success() {
        bail!("GET {url}/v1/cluster/status answered {code}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{url}/v1/cluster/status is not JSON: {body}"))
}

/// Map every URL to its node id and find the leader that they agree on.
async fn topology(http: &reqwest::Client, urls: &[String]) -> Result<Topology> {
    let mut nodes = Vec::new();
    let mut leaders = Vec::new();
    let mut term = 0;
    for url in urls {
        let s = status(http, url).await?;
        let id = s["id"].as_u64().ok_or_else(|| anyhow!("{url}: status has no numeric \"id\": {s}"))?;
        if let Some(l) = s["leader"].as_u64() {
            leaders.push(l);
        }
        term = term.max(s["term"].as_u64().unwrap_or(0));
        nodes.push(NodeInfo { id, url: url.clone() });
    }
    let Some(&leader) = leaders.first() else { bail!("no node knows a leader yet") };
    if leaders.len() != urls.len() || leaders.iter().any(|&l| l != leader) {
        bail!("the nodes do not agree on a leader yet: {leaders:?}");
    }
    if !nodes.iter().any(|n| n.id == leader) {
        bail!(
            "leader {leader} is not among --nodes (ids {:?})",
            nodes.iter().map(|n| n.id).collect::<Vec<_>>()
        );
    }
    Ok(Topology { nodes, leader, term })
}

/// [`topology`], retried for up to `wait`.
async fn wait_topology(http: &reqwest::Client, urls: &[String], wait: Duration) -> Result<Topology> {
    let until = Instant::now() + wait;
    loop {
        match topology(http, urls).await {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() >= until => return Err(e.context("finding the cluster's leader")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// How the tasks of a workload reach the cluster.
struct Plan {
    op: Op,
    /// Base URL of each task, by task index.
    task_urls: Vec<Arc<str>>,
    /// For reads: the full URL of every read key, per base URL.
    read_urls: BTreeMap<Arc<str>, Arc<Vec<String>>>,
    key_prefix: String,
    value: Arc<str>,
}

/// Run `plan` with one task per entry of `plan.task_urls`: `warmup`, then `duration` measured.
async fn run_tasks(
    plan: Plan,
    warmup: Duration,
    duration: Duration,
    timeout: Duration,
) -> Result<(Vec<TaskResult>, Option<String>)> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let deadline = measure_from + duration;
    let first_error = Arc::new(FirstError::default());
    let expected_per_task = (duration.as_secs_f64() * 2000.0).min(2_000_000.0) as usize;
    let mut handles = Vec::with_capacity(plan.task_urls.len());
    for (task, base) in plan.task_urls.iter().enumerate() {
        let http = client(timeout)?;
        let base = base.clone();
        let op = plan.op;
        let read_urls = plan.read_urls.get(&base).cloned().unwrap_or_default();
        let key_prefix = format!("{}-{task}-", plan.key_prefix);
        let value = plan.value.clone();
        let first_error = first_error.clone();
        handles.push(tokio::spawn(async move {
            let mut out = TaskResult {
                lat_us: Vec::with_capacity(expected_per_task.min(1 << 16)),
                ..Default::default()
            };
            let mut rng = rand::rngs::StdRng::seed_from_u64(task as u64);
            let mut key = String::with_capacity(key_prefix.len() + 12);
            let mut n: u64 = 0;
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let req = match op {
                    Op::Put => {
                        key.clear();
                        key.push_str(&key_prefix);
                        let _ = write!(key, "{n}");
                        let mut body = String::with_capacity(key.len() + value.len() + 24);
                        let _ = write!(body, r#"{{"name":"{key}","value":"{value}"}}"#);
                        http.put(format!("{base}/v1/keys/{key}"))
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(body)
                    }
                    Op::Read { .. } => http.get(read_urls[rng.gen_range(0..read_urls.len())].as_str()),
                };
                n += 1;
                let failure = match req.send().await {
                    Ok(resp) => {
                        let code = resp.status();
                        match resp.bytes().await {
                            Ok(_) if code.is_success() => None,
                            Ok(body) => Some((
                                format!("HTTP {}", code.as_u16()),
                                format!("HTTP {code}: {}", String::from_utf8_lossy(&body)),
                            )),
                            Err(e) => Some((error_kind(&e), format!("reading the body: {}", chain(&e)))),
                        }
                    }
                    Err(e) => Some((error_kind(&e), chain(&e))),
                };
                let t1 = Instant::now();
                match failure {
                    None => {
                        if t0 >= measure_from && t1 <= deadline {
                            let us = t1.duration_since(t0).as_micros().min(u32::MAX as u128) as u32;
                            out.lat_us.push(us);
                        }
                    }
                    Some((kind, text)) => {
                        out.errors += 1;
                        *out.error_kinds.entry(kind).or_default() += 1;
                        first_error.offer(|| format!("{base}: {text}"));
                        // Do not spin on a node that refuses connections.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            out
        }));
    }
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        results.push(h.await.context("a load task panicked")?);
    }
    let first = first_error.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok((results, first))
}

/// An error with its causes, `outer: inner: ...`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else {
        "transport".into()
    }
}

/// The `q` quantile of sorted latencies, in ms.
fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

fn random_value(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect()
}

/// Log in as `user` and return the token. The bootstrap admin is created shortly after the
/// cluster elects a leader, so early 401s are retried; attempts rotate over the nodes because
/// each node limits failed logins per user on its own.
async fn login(urls: &[String], user: &str, password: &str) -> Result<String> {
    let http = client(Duration::from_secs(10))?;
    let mut last = String::new();
    for attempt in 0..12 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let url = format!("{}/auth/v1/tokens", urls[attempt % urls.len()]);
        let r = match http.post(&url).basic_auth(user, Some(password)).send().await {
            Ok(r) => r,
            Err(e) => {
                last = format!("POST {url}: {}", chain(&e));
                continue;
            }
        };
        let code = r.status();
        let body = r.text().await.unwrap_or_default();
        if code.is_success() {
            let doc: Value =
                serde_json::from_str(&body).with_context(|| format!("POST {url}: not JSON: {body}"))?;
            return doc["token"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("POST {url}: the answer has no token: {body}"));
        }
        last = format!("POST {url} answered {code}: {body}");
        if code.is_client_error()
            && code != reqwest::StatusCode::UNAUTHORIZED
            && code != reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            break;
        }
    }
    bail!("cannot log in as {user}: {last}")
}

fn auth_headers(args: &Args, token: Option<&str>) -> Result<reqwest::header::HeaderMap> {
    use reqwest::header::{HeaderMap, HeaderValue};
    let mut h = HeaderMap::new();
    let (name, value) = match (token.or(args.token.as_deref()), &args.api_key) {
        (Some(t), _) => ("x-auth-token", t),
        (None, Some(k)) => ("st2-api-key", k.as_str()),
        (None, None) => return Ok(h),
    };
    let mut v = HeaderValue::from_str(value).context("the credential is not a valid header value")?;
    v.set_sensitive(true);
    h.insert(name, v);
    Ok(h)
}

const READ_PREFIX: &str = "bench-read";

/// Write the keys the read workloads read, 32 at a time, to the leader.
async fn populate(topo: &Topology, keys: usize, value: &str, timeout: Duration) -> Result<()> {
    let http = client(timeout)?;
    let leader = topo.leader_url().to_string();
    let value: Arc<str> = Arc::from(value);
    let mut set = tokio::task::JoinSet::new();
    let workers = 32.min(keys.max(1));
    for w in 0..workers {
        let http = http.clone();
        let leader = leader.clone();
        let value = value.clone();
        set.spawn(async move {
            let mut i = w;
            while i < keys {
                let key = format!("{READ_PREFIX}-{i}");
                let body = format!(r#"{{"name":"{key}","value":"{value}"}}"#);
                let r = http
                    .put(format!("{leader}/v1/keys/{key}"))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("PUT {key}"))?;
                let code = r.status();
                let text = r.text().await.unwrap_or_default();
                if !code.is_success() {
                    bail!("PUT {leader}/v1/keys/{key} answered {code}: {text}");
                }
                i += workers;
            }
            Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("a populate task panicked")??;
    }
    Ok(())
}

async fn run_workload(
    args: &Args,
    spec: Spec,
    urls: &[String],
    value: &Arc<str>,
    populated: &mut bool,
) -> Result<Report> {
    let http = client(Duration::from_secs(5))?;
    let topo = wait_topology(&http, urls, Duration::from_secs(15)).await?;
    let timeout = Duration::from_secs_f64(args.timeout);
    if matches!(spec.op, Op::Read { .. }) && !*populated {
        eprintln!("  writing {} keys for the read workloads...", args.read_keys);
        populate(&topo, args.read_keys, value, timeout).await?;
        *populated = true;
    }
    let (bases, target): (Vec<&str>, String) = match spec.target {
        Target::Leader => (vec![topo.leader_url()], format!("leader {}", topo.leader)),
        Target::Follower => {
            let f =
                topo.first_follower().ok_or_else(|| anyhow!("{}: the cluster has no follower", spec.name))?;
            (vec![f.url.as_str()], format!("follower {}", f.id))
        }
        Target::All => (topo.nodes.iter().map(|n| n.url.as_str()).collect(), "all".to_string()),
    };
    let bases: Vec<Arc<str>> = bases.into_iter().map(Arc::from).collect();
    let task_urls: Vec<Arc<str>> = (0..spec.conns).map(|t| bases[t % bases.len()].clone()).collect();
    let mut read_urls = BTreeMap::new();
    if let Op::Read { stale } = spec.op {
        if args.read_keys == 0 {
            bail!("{}: --read-keys must be at least 1", spec.name);
        }
        let suffix = if stale { "?consistency=stale" } else { "" };
        for b in &bases {
            let list: Vec<String> =
                (0..args.read_keys).map(|i| format!("{b}/v1/keys/{READ_PREFIX}-{i}{suffix}")).collect();
            read_urls.insert(b.clone(), Arc::new(list));
        }
    }
    let plan = Plan {
        op: spec.op,
        task_urls,
        read_urls,
        key_prefix: format!("bench-{}", spec.name),
        value: value.clone(),
    };
    let duration = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64(args.warmup);
    let (results, first_error) = run_tasks(plan, warmup, duration, timeout).await?;

    let mut lat: Vec<u32> = Vec::with_capacity(results.iter().map(|r| r.lat_us.len()).sum());
    let mut errors = 0;
    let mut error_kinds = BTreeMap::new();
    for r in results {
        lat.extend_from_slice(&r.lat_us);
        errors += r.errors;
        for (k, v) in r.error_kinds {
            *error_kinds.entry(k).or_insert(0) += v;
        }
    }
    lat.sort_unstable();
    let mean_ms = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&u| u as f64).sum::<f64>() / lat.len() as f64 / 1000.0
    };

    let leader_changed = match wait_topology(&http, urls, Duration::from_secs(5)).await {
        Ok(after) if after.leader == topo.leader && after.term == topo.term => None,
        Ok(after) => Some(format!(
            "leader {} (term {}) before, leader {} (term {}) after",
            topo.leader, topo.term, after.leader, after.term
        )),
        Err(e) => Some(format!("no agreed leader after the workload: {e:#}")),
    };

    Ok(Report {
        name: spec.name,
        conns: spec.conns,
        target,
        ok: lat.len() as u64,
        secs: duration.as_secs_f64(),
        p50_ms: quantile_ms(&lat, 0.50),
        p99_ms: quantile_ms(&lat, 0.99),
        mean_ms,
        max_ms: lat.last().map(|&u| u as f64 / 1000.0).unwrap_or(0.0),
        errors,
        error_kinds,
        first_error,
        leader_changed,
    })
}

fn table(reports: &[Report]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:>5}  {:<11} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "workload", "conns", "target", "ops/s", "p50 ms", "p99 ms", "mean ms", "max ms", "errors"
    );
    let _ = writeln!(s, "{}", "-".repeat(91));
    for r in reports {
        let _ = writeln!(
            s,
            "{:<16} {:>5}  {:<11} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>7}",
            r.name,
            r.conns,
            r.target,
            r.ops_per_s(),
            r.p50_ms,
            r.p99_ms,
            r.mean_ms,
            r.max_ms,
            r.errors
        );
    }
    let find = |n: &str| reports.iter().find(|r| r.name == n);
    let mut ratios = Vec::new();
    if let (Some(f), Some(l)) = (find("put-follower-64"), find("put-leader-64")) {
        ratios.push(("follower/leader puts (64 conns)", f, l));
    }
    if let (Some(lin), Some(stale)) = (find("read-lin-64"), find("read-stale-64")) {
        ratios.push(("linearizable/stale reads (64 conns)", lin, stale));
    }
    if !ratios.is_empty() {
        let _ = writeln!(s);
    }
    for (what, a, b) in ratios {
        let _ = writeln!(
            s,
            "{what}: throughput {}, p50 latency {}",
            ratio(a.ops_per_s(), b.ops_per_s()),
            ratio(a.p50_ms, b.p50_ms)
        );
    }
    let mut notes = String::new();
    for r in reports {
        if r.errors > 0 {
            let kinds: Vec<String> = r.error_kinds.iter().map(|(k, v)| format!("{k} x{v}")).collect();
            let _ = writeln!(notes, "{}: {} errors ({})", r.name, r.errors, kinds.join(", "));
            if let Some(e) = &r.first_error {
                let _ = writeln!(notes, "  first error: {}", truncate(e, 400));
            }
        }
        if let Some(c) = &r.leader_changed {
            let _ = writeln!(notes, "{}: WARNING the leader changed during the run: {c}", r.name);
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(s);
        s.push_str(&notes);
    }
    s
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

fn truncate(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn selected(list: &[String]) -> Result<Vec<Spec>> {
    let mut out = Vec::new();
    for w in list.iter().map(|w| w.trim()).filter(|w| !w.is_empty()) {
        if w == "all" {
            out.extend(ALL_WORKLOADS.iter().map(|n| spec(n).expect("known workload")));
        } else {
            out.push(spec(w).ok_or_else(|| {
                anyhow!("unknown workload {w:?}; known: all, {}", ALL_WORKLOADS.join(", "))
            })?);
        }
    }
    if out.is_empty() {
        bail!("no workload selected");
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("st2kv-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let urls: Vec<String> = args
        .nodes
        .iter()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        bail!("--nodes lists no URL");
    }
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(args.warmup >= 0.0 && args.warmup.is_finite()) {
        bail!("--warmup must be zero or a positive number of seconds");
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let specs = selected(&args.workloads)?;

    let login_token = match (&args.user, &args.password) {
        (Some(user), Some(password)) => Some(login(&urls, user, password).await?),
        _ => None,
    };
    let auth = match (&args.user, &args.token, &args.api_key) {
        (Some(u), _, _) => format!("token of {u}"),
        (None, Some(_), _) => "token".to_string(),
        (None, None, Some(_)) => "API key".to_string(),
        (None, None, None) => "none".to_string(),
    };
    AUTH_HEADERS.set(auth_headers(&args, login_token.as_deref())?).expect("set once");

    let http = client(Duration::from_secs(5))?;
    let topo = wait_topology(&http, &urls, Duration::from_secs(15)).await?;
    eprintln!(
        "st2kv-bench: {} nodes ({}), leader {} (term {}); {} workload(s) of {}s + {}s warm-up, \
         {}-byte values, auth: {auth}",
        topo.nodes.len(),
        topo.nodes.iter().map(|n| format!("{}={}", n.id, n.url)).collect::<Vec<_>>().join(", "),
        topo.leader,
        topo.term,
        specs.len(),
        args.duration,
        args.warmup,
        args.value_bytes
    );

    let value: Arc<str> = Arc::from(random_value(args.value_bytes));
    let mut populated = false;
    let mut reports = Vec::new();
    for spec in specs {
        eprintln!("running {} ({} conns)...", spec.name, spec.conns);
        let r = run_workload(&args, spec, &urls, &value, &mut populated).await?;
        eprintln!(
            "  {:.1} ops/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            r.ops_per_s(),
            r.p50_ms,
            r.p99_ms,
            r.errors
        );
        reports.push(r);
    }

    let text = table(&reports);
    if args.json {
        eprint!("\n{text}");
        let find = |n: &str| reports.iter().find(|r| r.name == n);
        let follower_leader = match (find("put-follower-64"), find("put-leader-64")) {
            (Some(f), Some(l)) if l.ops_per_s() > 0.0 => json!(f.ops_per_s() / l.ops_per_s()),
            _ => Value::Null,
        };
        let doc = json!({
            "nodes": topo.nodes.iter().map(|n| json!({"id": n.id, "url": n.url})).collect::<Vec<_>>(),
            "leader": topo.leader,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "value_bytes": args.value_bytes,
            "auth": auth,
            "results": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
            "follower_leader_put_ratio": follower_leader,
        });
        println!("{doc}");
    } else {
        print!("{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.5), 50.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
        assert_eq!(quantile_ms(&[7000], 0.99), 7.0);
    }

    #[test]
    fn workload_selection() {
        assert_eq!(selected(&["all".into()]).unwrap().len(), ALL_WORKLOADS.len());
        let s = selected(&["put-16".into(), "read-stale-64".into()]).unwrap();
        assert_eq!(s[1].op, Op::Read { stale: true });
        assert!(selected(&["nope".into()]).is_err());
    }
}
