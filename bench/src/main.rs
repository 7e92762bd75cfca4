//! `st2kv-bench`: a closed-loop HTTP load generator for an st2kv cluster, and optionally for an
//! etcd cluster (through etcd's v3 HTTP/JSON gateway) side by side.
//!
//! It finds the leader (st2kv: `GET /v1/cluster/status` on every node; etcd:
//! `POST /v3/maintenance/status` on every member), then runs each selected workload for
//! `--duration` seconds (after `--warmup` seconds that are not measured):
//!
//! | workload          | conns | target             | st2kv request                        | etcd request                        |
//! |-------------------|-------|--------------------|--------------------------------------|-------------------------------------|
//! | `seq-put`         | 1     | leader             | `PUT /v1/keys/{k}`                   | `POST /v3/kv/put`                   |
//! | `put-16/64/256`   | N     | all nodes, by task | `PUT /v1/keys/{k}`                   | `POST /v3/kv/put`                   |
//! | `put-leader-64`   | 64    | leader             | `PUT /v1/keys/{k}`                   | `POST /v3/kv/put`                   |
//! | `put-follower-64` | 64    | one follower       | `PUT /v1/keys/{k}`                   | `POST /v3/kv/put`                   |
//! | `read-lin-64`     | 64    | all nodes, by task | `GET /v1/keys/{k}` (linearizable)    | `POST /v3/kv/range`                 |
//! | `read-stale-64`   | 64    | all nodes, by task | `GET /v1/keys/{k}?consistency=stale` | `POST /v3/kv/range` (serializable)  |
//! | `list-100`        | 16    | all nodes, by task | `GET /v1/keys?prefix={p}&limit=100`  | `POST /v3/kv/range` (prefix, 100)   |
//!
//! `list-100` pages through `--scale-keys` keys named `scale-0000000`, `scale-0000001`, ...: each
//! request lists one random prefix `scale-NNNNN`, which names exactly 100 of them, whatever the
//! total. Those keys are written first (128 at a time, to the leader, with the rate printed),
//! except the `--scale-from` ones an earlier run already wrote; `bench/run.sh --scale N` uses that
//! to compare a prefix list at 1k keys with one at N.
//!
//! Every task owns one HTTP client and so one keep-alive connection, and sends its next request
//! as soon as the previous one is answered. Task `t` talks to node `t % nodes` when a workload
//! spreads over all nodes. Puts write distinct keys `bench-{workload}-r{round}-{task}-{n}`;
//! reads pick random keys among `--read-keys` keys written before the first read workload.
//!
//! With `--target both` every workload runs on st2kv and on etcd, alternately, `--rounds` times
//! (the order flips every round), and the bench prints the median and min-max of each system,
//! the st2kv/etcd ratios, the machine's floors (fdatasync, loopback HTTP round trip) and the
//! load generator's ceiling (the same load against a trivial HTTP server inside this process).
//!
//! Throughput counts successful requests that completed inside the measured window; latencies
//! are of those same requests. Any non-2xx answer or transport failure is an error, counted
//! separately (warm-up included), with the first error's body printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Workloads that run only when asked for by name (they need `--scale-keys`).
const EXTRA_WORKLOADS: &[&str] = &["list-100"];
const SCALE_PREFIX: &str = "scale-";

/// Connection counts of the load generator's ceiling (the no-op server).
const NOOP_CONNS: &[usize] = &[1, 16, 64, 256];

/// Closed-loop load generator for a st2kv cluster (and etcd, for comparison). Progress goes to
/// stderr; the results go to stdout (to stderr with --json, which then prints one JSON document
/// on stdout).
#[derive(Debug, Parser)]
#[command(name = "st2kv-bench", version, args_override_self = true)]
struct Args {
    /// API base URLs of every st2kv node, comma separated, e.g.
    /// http://127.0.1.1:9101,http://127.0.1.2:9101,http://127.0.1.3:9101
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,

    /// Client URLs of every etcd member (v3 HTTP/JSON gateway), comma separated, e.g.
    /// http://127.0.2.1:2379,http://127.0.2.2:2379,http://127.0.2.3:2379
    #[arg(long, value_delimiter = ',')]
    etcd_nodes: Vec<String>,

    /// What to measure: st2kv (--nodes), etcd (--etcd-nodes), or both, alternating workload by
    /// workload, with floors, the generator's ceiling and st2kv/etcd ratios.
    #[arg(long, value_enum, default_value = "st2kv")]
    target: TargetArg,

    /// How many times to run every workload on every system; default 3 with --target both,
    /// else 1. Results are the median and the min-max over the rounds.
    #[arg(long)]
    rounds: Option<usize>,

    /// Also measure the machine's floors (fdatasync, loopback HTTP round trip) and the load
    /// generator's ceiling; always on with --target both.
    #[arg(long)]
    floors: bool,

    /// Directory for the fdatasync floor's scratch file; use one on the disk the clusters
    /// write to (default: the system's temporary directory).
    #[arg(long)]
    floor_dir: Option<PathBuf>,

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

    /// Keys `scale-0000000`... that the `list-100` workload lists 100 at a time (multiple of 100,
    /// at most 10 000 000).
    #[arg(long, default_value_t = 1000)]
    scale_keys: usize,

    /// The scale keys below this index were written by an earlier run: do not write them again.
    #[arg(long, default_value_t = 0)]
    scale_from: usize,

    /// Per-request timeout in seconds; a timed-out request is an error.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,

    /// Print the results as one JSON document on stdout (the table then goes to stderr).
    #[arg(long)]
    json: bool,

    /// Authenticate every st2kv request with this token (header `X-Auth-Token`).
    #[arg(long, env = "ST2_AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Authenticate every st2kv request with this API key (header `St2-Api-Key`).
    #[arg(long, env = "ST2_API_KEY", hide_env_values = true, conflicts_with = "token")]
    api_key: Option<String>,

    /// Log in to st2kv as this user (`POST /auth/v1/tokens` with HTTP Basic) and use the token.
    /// The user must be an admin: `/v1/cluster/status` is admin-only.
    #[arg(long, env = "ST2KV_BENCH_USER", conflicts_with_all = ["token", "api_key"], requires = "password")]
    user: Option<String>,

    /// Password for --user (prefer the environment variable).
    #[arg(long, env = "ST2KV_BENCH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TargetArg {
    St2kv,
    Etcd,
    Both,
}

/// The system a workload runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    St2kv,
    Etcd,
    /// The trivial HTTP server inside this process: the load generator's ceiling.
    Noop,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::St2kv => "st2kv",
            System::Etcd => "etcd",
            System::Noop => "noop",
        }
    }
}

/// Credential headers sent with every st2kv request; empty for a cluster run with
/// --insecure-no-auth. Never sent to etcd or the no-op server.
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
    Read {
        stale: bool,
    },
    /// A prefix list of 100 keys (linearizable).
    List,
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
        "list-100" => ("list-100", 16, Op::List, Target::All),
        _ => return None,
    };
    Some(Spec { name, conns, op, target })
}

/// The no-op server's workload at `conns` connections: st2kv-shaped puts.
fn noop_spec(conns: usize) -> Spec {
    let name = match conns {
        1 => "noop-1",
        16 => "noop-16",
        64 => "noop-64",
        256 => "noop-256",
        _ => "noop",
    };
    Spec { name, conns, op: Op::Put, target: Target::All }
}

/// What one workload measured.
#[derive(Debug)]
struct Report {
    system: System,
    round: usize,
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
            "system": self.system.name(),
            "round": self.round,
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

/// One HTTP client (one keep-alive connection per host); `auth` adds st2kv's credentials.
fn client(timeout: Duration, auth: bool) -> Result<reqwest::Client> {
    let headers = if auth { AUTH_HEADERS.get().cloned().unwrap_or_default() } else { Default::default() };
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(timeout)
        .default_headers(headers)
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

/// `POST {url}/v3/maintenance/status` on an etcd member.
async fn etcd_status(http: &reqwest::Client, url: &str) -> Result<Value> {
    let r = http
        .post(format!("{url}/v3/maintenance/status"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("{}")
        .send()
        .await
        .with_context(|| format!("POST {url}/v3/maintenance/status"))?;
    let code = r.status();
    let body = r.text().await.with_context(|| format!("reading {url}/v3/maintenance/status"))?;
    if !code.is_success() {
        bail!("POST {url}/v3/maintenance/status answered {code}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{url}/v3/maintenance/status is not JSON: {body}"))
}

/// A uint64 in JSON: etcd's gateway writes them as strings.
fn json_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Map every URL to its node id and find the leader that they agree on.
async fn topology(http: &reqwest::Client, system: System, urls: &[String]) -> Result<Topology> {
    let mut nodes = Vec::new();
    let mut leaders = Vec::new();
    let mut term = 0;
    for url in urls {
        let (id, leader, t) = match system {
            System::St2kv => {
                let s = status(http, url).await?;
                let id =
                    s["id"].as_u64().ok_or_else(|| anyhow!("{url}: status has no numeric \"id\": {s}"))?;
                (id, s["leader"].as_u64(), s["term"].as_u64().unwrap_or(0))
            }
            System::Etcd => {
                let s = etcd_status(http, url).await?;
                let id = json_u64(&s["header"]["member_id"])
                    .ok_or_else(|| anyhow!("{url}: status has no header.member_id: {s}"))?;
                let term = json_u64(&s["raft_term"])
                    .or_else(|| json_u64(&s["raftTerm"]))
                    .or_else(|| json_u64(&s["header"]["raft_term"]))
                    .unwrap_or(0);
                (id, json_u64(&s["leader"]).filter(|&l| l != 0), term)
            }
            System::Noop => bail!("the no-op server has no topology"),
        };
        if let Some(l) = leader {
            leaders.push(l);
        }
        term = term.max(t);
        nodes.push(NodeInfo { id, url: url.clone() });
    }
    let Some(&leader) = leaders.first() else { bail!("no node knows a leader yet") };
    if leaders.len() != urls.len() || leaders.iter().any(|&l| l != leader) {
        bail!("the nodes do not agree on a leader yet: {leaders:?}");
    }
    if !nodes.iter().any(|n| n.id == leader) {
        bail!(
            "leader {leader} is not among the nodes (ids {:?})",
            nodes.iter().map(|n| n.id).collect::<Vec<_>>()
        );
    }
    Ok(Topology { nodes, leader, term })
}

/// [`topology`], retried for up to `wait`.
async fn wait_topology(
    http: &reqwest::Client,
    system: System,
    urls: &[String],
    wait: Duration,
) -> Result<Topology> {
    let until = Instant::now() + wait;
    loop {
        match topology(http, system, urls).await {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() >= until => {
                return Err(e.context(format!("finding the {} cluster's leader", system.name())))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Which keys a system already holds for the workloads that read.
#[derive(Debug, Default)]
struct Populated {
    reads: bool,
    scale: bool,
}

/// One read request: a GET of `url` (st2kv), or a POST of `body` to `url` (etcd).
struct ReadReq {
    url: String,
    body: Option<String>,
}

/// How the tasks of a workload reach the cluster.
struct Plan {
    /// Request shape: etcd's gateway, or st2kv's API (also used for the no-op server).
    etcd: bool,
    /// Send st2kv's credentials.
    auth: bool,
    op: Op,
    /// Base URL of each task, by task index.
    task_urls: Vec<Arc<str>>,
    /// For reads: every read request, per base URL.
    reads: BTreeMap<Arc<str>, Arc<Vec<ReadReq>>>,
    key_prefix: String,
    /// The value as it goes into the body (base64 for etcd).
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
        let http = client(timeout, plan.auth)?;
        let base = base.clone();
        let op = plan.op;
        let etcd = plan.etcd;
        let reads = plan.reads.get(&base).cloned().unwrap_or_default();
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
            let etcd_put_url = format!("{base}/v3/kv/put");
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
                        let mut body = String::with_capacity(2 * key.len() + value.len() + 24);
                        if etcd {
                            let _ = write!(body, r#"{{"key":"{}","value":"{value}"}}"#, b64(key.as_bytes()));
                            http.post(etcd_put_url.as_str())
                        } else {
                            let _ = write!(body, r#"{{"name":"{key}","value":"{value}"}}"#);
                            http.put(format!("{base}/v1/keys/{key}"))
                        }
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body)
                    }
                    Op::Read { .. } | Op::List => {
                        let r = &reads[rng.gen_range(0..reads.len())];
                        match &r.body {
                            None => http.get(r.url.as_str()),
                            Some(b) => http
                                .post(r.url.as_str())
                                .header(reqwest::header::CONTENT_TYPE, "application/json")
                                .body(b.clone()),
                        }
                    }
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

/// Standard base64 with padding (etcd's gateway takes keys and values as base64 `bytes`).
fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    out
}

/// Start the trivial HTTP/1.1 server of the generator's ceiling on 127.0.0.1 (any port), on its
/// own runtime and threads; it answers every request `200` with the body `{}`. Returns its URL.
fn spawn_noop_server() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the no-op server")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("noop-server")
        .enable_all()
        .build()
        .context("building the no-op server's runtime")?;
    std::thread::Builder::new().name("noop-server".into()).spawn(move || {
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("no-op server: {e}");
                    return;
                }
            };
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(serve_noop(s));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
    })?;
    Ok(format!("http://{addr}"))
}

/// One keep-alive connection of the no-op server: read a request (head and `Content-Length`
/// bytes of body), answer it, repeat.
async fn serve_noop(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let total = end + 4 + content_length(&buf[..end]);
            if buf.len() < total {
                break;
            }
            buf.drain(..total);
            s.write_all(RESPONSE).await?;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// The median time of a 100-byte append followed by fdatasync, over 200 of them, in a scratch
/// file in `dir`, in ms.
fn fdatasync_floor(dir: &Path) -> Result<f64> {
    use std::io::Write;
    let path = dir.join(format!("st2kv-bench-fdatasync-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let buf = [b'x'; 100];
    let mut us: Vec<u32> = Vec::with_capacity(200);
    let res = (|| -> Result<()> {
        for _ in 0..200 {
            let t = Instant::now();
            f.write_all(&buf)?;
            f.sync_data()?;
            us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    res.with_context(|| format!("writing and syncing {}", path.display()))?;
    us.sort_unstable();
    Ok(quantile_ms(&us, 0.5))
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
    let http = client(Duration::from_secs(10), false)?;
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
async fn populate(
    system: System,
    topo: &Topology,
    keys: usize,
    value: &str,
    timeout: Duration,
) -> Result<()> {
    fill(system, topo, 0..keys, 32, &|i| format!("{READ_PREFIX}-{i}"), value, timeout).await
}

/// The name of scale key `i`.
fn scale_key(i: usize) -> String {
    format!("{SCALE_PREFIX}{i:07}")
}

/// Write the keys `name(i)` for `i` in `range` with `workers` concurrent requests to the leader.
async fn fill(
    system: System,
    topo: &Topology,
    range: std::ops::Range<usize>,
    workers: usize,
    name: &(dyn Fn(usize) -> String + Sync),
    value: &str,
    timeout: Duration,
) -> Result<()> {
    let etcd = system == System::Etcd;
    let http = client(timeout, !etcd)?;
    let leader = topo.leader_url().to_string();
    let value: Arc<str> = Arc::from(if etcd { b64(value.as_bytes()) } else { value.to_string() });
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(range.start));
    let keys: Arc<Vec<String>> = Arc::new(range.clone().map(name).collect());
    let first_key = keys.first().cloned();
    let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.min(range.len()).max(1) {
        let (http, leader, value, next, keys, retries) =
            (http.clone(), leader.clone(), value.clone(), next.clone(), keys.clone(), retries.clone());
        let start = range.start;
        let end = range.end;
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= end {
                    return Ok(());
                }
                let key = &keys[i - start];
                let (req, url) = if etcd {
                    let url = format!("{leader}/v3/kv/put");
                    let body = format!(r#"{{"key":"{}","value":"{value}"}}"#, b64(key.as_bytes()));
                    (http.post(&url).body(body), url)
                } else {
                    let url = format!("{leader}/v1/keys/{key}");
                    let body = format!(r#"{{"name":"{key}","value":"{value}"}}"#);
                    (http.put(&url).body(body), url)
                };
                // A write that timed out or found no leader is retried (a put is idempotent);
                // each retry is counted and reported, since it means the cluster stalled.
                let mut attempt = 0;
                loop {
                    let r = req
                        .try_clone()
                        .expect("a buffered request")
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .send()
                        .await;
                    let failure = match r {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) => {
                            let code = r.status();
                            let text = r.text().await.unwrap_or_default();
                            if !matches!(code.as_u16(), 503 | 504) {
                                bail!("{url} ({key}) answered {code}: {text}");
                            }
                            format!("{url} ({key}) answered {code}: {text}")
                        }
                        Err(e) => format!("writing {key}: {}", chain(&e)),
                    };
                    attempt += 1;
                    retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if attempt >= 20 {
                        bail!("{failure} (gave up after {attempt} attempts)");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("a fill task panicked")??;
    }
    let retries = retries.load(std::sync::atomic::Ordering::Relaxed);
    if retries > 0 {
        eprintln!(
            "  {retries} writes were retried after a 503/504 or a transport error (the cluster stalled)"
        );
    }
    if let (true, Some(key)) = (etcd, first_key) {
        // etcd answers 200 for a missing key too; make sure the reads will find something.
        let body = format!(r#"{{"key":"{}"}}"#, b64(key.as_bytes()));
        let r = http
            .post(format!("{leader}/v3/kv/range"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .context("reading back a written key from etcd")?;
        let doc: Value = serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default();
        if !matches!(doc["kvs"].as_array(), Some(k) if !k.is_empty()) {
            bail!("etcd does not return {key} after writing it: {doc}");
        }
    }
    Ok(())
}

/// The end of etcd's range for a prefix: the prefix with its last byte incremented.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Run one workload (`spec`) on `system` (cluster `urls`, or the no-op server at `urls[0]`).
#[allow(clippy::too_many_arguments)]
async fn run_workload(
    args: &Args,
    spec: Spec,
    system: System,
    urls: &[String],
    value: &str,
    populated: &mut Populated,
    round: usize,
) -> Result<Report> {
    let etcd = system == System::Etcd;
    let http = client(Duration::from_secs(5), system == System::St2kv)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let topo = match system {
        System::Noop => None,
        _ => Some(wait_topology(&http, system, urls, Duration::from_secs(15)).await?),
    };
    if let Some(topo) = &topo {
        if matches!(spec.op, Op::Read { .. }) && !populated.reads {
            eprintln!("  writing {} keys to {} for the read workloads...", args.read_keys, system.name());
            populate(system, topo, args.read_keys, value, timeout).await?;
            populated.reads = true;
        }
        if spec.op == Op::List && !populated.scale {
            let range = args.scale_from.min(args.scale_keys)..args.scale_keys;
            eprintln!(
                "  writing scale keys {}..{} to {} (128 at a time)...",
                range.start,
                range.end,
                system.name()
            );
            let t0 = Instant::now();
            let n = range.len();
            fill(system, topo, range, 128, &scale_key, value, timeout).await?;
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "  {}: wrote {n} keys in {secs:.1} s: {:.0} keys/s",
                system.name(),
                n as f64 / secs.max(1e-9)
            );
            populated.scale = true;
        }
    }
    let (bases, target): (Vec<&str>, String) = match (&topo, spec.target) {
        (None, _) => (vec![urls[0].as_str()], "noop".to_string()),
        (Some(topo), Target::Leader) => {
            (vec![topo.leader_url()], format!("leader {}", short_id(topo.leader)))
        }
        (Some(topo), Target::Follower) => {
            let f =
                topo.first_follower().ok_or_else(|| anyhow!("{}: the cluster has no follower", spec.name))?;
            (vec![f.url.as_str()], format!("follower {}", short_id(f.id)))
        }
        (Some(topo), Target::All) => (topo.nodes.iter().map(|n| n.url.as_str()).collect(), "all".to_string()),
    };
    let bases: Vec<Arc<str>> = bases.into_iter().map(Arc::from).collect();
    let task_urls: Vec<Arc<str>> = (0..spec.conns).map(|t| bases[t % bases.len()].clone()).collect();
    let mut reads = BTreeMap::new();
    if let Op::Read { stale } = spec.op {
        if args.read_keys == 0 {
            bail!("{}: --read-keys must be at least 1", spec.name);
        }
        for b in &bases {
            let list: Vec<ReadReq> = (0..args.read_keys)
                .map(|i| {
                    let key = format!("{READ_PREFIX}-{i}");
                    if etcd {
                        let ser = if stale { r#","serializable":true"# } else { "" };
                        ReadReq {
                            url: format!("{b}/v3/kv/range"),
                            body: Some(format!(r#"{{"key":"{}"{ser}}}"#, b64(key.as_bytes()))),
                        }
                    } else {
                        let suffix = if stale { "?consistency=stale" } else { "" };
                        ReadReq { url: format!("{b}/v1/keys/{key}{suffix}"), body: None }
                    }
                })
                .collect();
            reads.insert(b.clone(), Arc::new(list));
        }
    }
    if spec.op == Op::List {
        if !(100..=10_000_000).contains(&args.scale_keys) || args.scale_keys / 100 * 100 != args.scale_keys {
            bail!("{}: --scale-keys must be a multiple of 100 between 100 and 10000000", spec.name);
        }
        for b in &bases {
            let list: Vec<ReadReq> = (0..args.scale_keys / 100)
                .map(|p| {
                    let prefix = format!("{SCALE_PREFIX}{p:05}");
                    if etcd {
                        ReadReq {
                            url: format!("{b}/v3/kv/range"),
                            body: Some(format!(
                                r#"{{"key":"{}","range_end":"{}","limit":100}}"#,
                                b64(prefix.as_bytes()),
                                b64(&prefix_end(&prefix))
                            )),
                        }
                    } else {
                        ReadReq { url: format!("{b}/v1/keys?prefix={prefix}&limit=100"), body: None }
                    }
                })
                .collect();
            reads.insert(b.clone(), Arc::new(list));
        }
    }
    let plan = Plan {
        etcd,
        auth: system == System::St2kv,
        op: spec.op,
        task_urls,
        reads,
        key_prefix: format!("bench-{}-r{}", spec.name, round + 1),
        value: Arc::from(if etcd { b64(value.as_bytes()) } else { value.to_string() }),
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

    let leader_changed = match &topo {
        None => None,
        Some(topo) => match wait_topology(&http, system, urls, Duration::from_secs(5)).await {
            Ok(after) if after.leader == topo.leader && after.term == topo.term => None,
            Ok(after) => Some(format!(
                "leader {} (term {}) before, leader {} (term {}) after",
                short_id(topo.leader),
                topo.term,
                short_id(after.leader),
                after.term
            )),
            Err(e) => Some(format!("no agreed leader after the workload: {e:#}")),
        },
    };

    Ok(Report {
        system,
        round: round + 1,
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

/// Node ids for display: st2kv's are small; etcd's member ids are 64-bit hashes, shown as
/// their last 4 hex digits.
fn short_id(id: u64) -> String {
    if id < 1000 {
        id.to_string()
    } else {
        format!("..{:04x}", id & 0xffff)
    }
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
    s.push_str(&notes(reports));
    s
}

/// Errors and leader changes, one line each (with a blank line before), or nothing.
fn notes(reports: &[Report]) -> String {
    let mut notes = String::new();
    for r in reports {
        let who = format!("{} {} (round {})", r.system.name(), r.name, r.round);
        if r.errors > 0 {
            let kinds: Vec<String> = r.error_kinds.iter().map(|(k, v)| format!("{k} x{v}")).collect();
            let _ = writeln!(notes, "{who}: {} errors ({})", r.errors, kinds.join(", "));
            if let Some(e) = &r.first_error {
                let _ = writeln!(notes, "  first error: {}", truncate(e, 400));
            }
        }
        if let Some(c) = &r.leader_changed {
            let _ = writeln!(notes, "{who}: WARNING the leader changed during the run: {c}");
        }
    }
    if notes.is_empty() {
        notes
    } else {
        format!("\n{notes}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

/// Median and range of one number over the rounds.
#[derive(Debug, Clone, Copy)]
struct Stat {
    med: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(xs: impl IntoIterator<Item = f64>) -> Stat {
        let mut v: Vec<f64> = xs.into_iter().collect();
        if v.is_empty() {
            return Stat { med: 0.0, min: 0.0, max: 0.0 };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Stat { med, min: v[0], max: v[n - 1] }
    }

    /// `median [min-max]`, or just the median for a single round.
    fn show(&self, prec: usize, rounds: usize) -> String {
        if rounds > 1 {
            format!("{:.p$} [{:.p$}-{:.p$}]", self.med, self.min, self.max, p = prec)
        } else {
            format!("{:.p$}", self.med, p = prec)
        }
    }

    fn to_json(self) -> Value {
        json!({"median": round3(self.med), "min": round3(self.min), "max": round3(self.max)})
    }
}

/// One workload on one system over all rounds.
#[derive(Debug)]
struct Summary {
    system: System,
    name: &'static str,
    conns: usize,
    target: String,
    rounds: usize,
    ops: Stat,
    p50: Stat,
    p99: Stat,
    errors: u64,
}

impl Summary {
    fn to_json(&self) -> Value {
        json!({
            "system": self.system.name(),
            "workload": self.name,
            "connections": self.conns,
            "target": self.target,
            "rounds": self.rounds,
            "ops_per_s": self.ops.to_json(),
            "p50_ms": self.p50.to_json(),
            "p99_ms": self.p99.to_json(),
            "errors": self.errors,
        })
    }
}

/// Group `reports` by (system, workload), in the order of first appearance.
fn summarize(reports: &[Report]) -> Vec<Summary> {
    let mut keys: Vec<(System, &'static str)> = Vec::new();
    for r in reports {
        if !keys.contains(&(r.system, r.name)) {
            keys.push((r.system, r.name));
        }
    }
    keys.into_iter()
        .map(|(system, name)| {
            let rs: Vec<&Report> = reports.iter().filter(|r| r.system == system && r.name == name).collect();
            let mut targets: Vec<&str> = rs.iter().map(|r| r.target.as_str()).collect();
            targets.dedup();
            Summary {
                system,
                name,
                conns: rs[0].conns,
                target: if targets.len() == 1 { targets[0].to_string() } else { "varies".into() },
                rounds: rs.len(),
                ops: Stat::of(rs.iter().map(|r| r.ops_per_s())),
                p50: Stat::of(rs.iter().map(|r| r.p50_ms)),
                p99: Stat::of(rs.iter().map(|r| r.p99_ms)),
                errors: rs.iter().map(|r| r.errors).sum(),
            }
        })
        .collect()
}

/// The machine's floors, in ms.
#[derive(Debug, Default, Clone, Copy)]
struct Floors {
    fdatasync_ms: Option<f64>,
    /// Median over the rounds of the no-op server's p50 at one connection.
    loopback_rtt_ms: Option<f64>,
}

impl Floors {
    /// One fdatasync plus two loopback round trips (client -> node -> quorum).
    fn seq_put_ms(&self) -> Option<f64> {
        Some(self.fdatasync_ms? + 2.0 * self.loopback_rtt_ms?)
    }
}

/// One target of the performance issue, checked against this run.
struct Check {
    what: &'static str,
    met: Option<bool>,
    detail: String,
}

fn checks(sums: &[Summary], floors: &Floors) -> Vec<Check> {
    let get = |sys: System, n: &str| sums.iter().find(|s| s.system == sys && s.name == n);
    let pair = |n: &str| Some((get(System::St2kv, n)?, get(System::Etcd, n)?));
    let mut out = Vec::new();
    let mut push = |what: &'static str, x: Option<(f64, String)>, ok: &dyn Fn(f64) -> bool| {
        out.push(match x {
            Some((v, detail)) if v.is_finite() => Check { what, met: Some(ok(v)), detail },
            _ => Check { what, met: None, detail: "not measured".into() },
        })
    };
    for (what, n) in [("puts at 64 conns >= 3x etcd", "put-64"), ("puts at 256 conns >= 3x etcd", "put-256")]
    {
        let x = pair(n).map(|(a, b)| {
            let r = a.ops.med / b.ops.med;
            (r, format!("{r:.2}x ({:.0} vs {:.0} ops/s)", a.ops.med, b.ops.med))
        });
        push(what, x, &|r| r >= 3.0);
    }
    let x = pair("seq-put").map(|(a, b)| {
        let r = a.p50.med / b.p50.med;
        (r, format!("{r:.2}x ({:.2} vs {:.2} ms)", a.p50.med, b.p50.med))
    });
    push("sequential put p50 <= 0.5x etcd's", x, &|r| r <= 0.5);
    let x = match (get(System::St2kv, "seq-put"), floors.seq_put_ms()) {
        (Some(a), Some(f)) => {
            let r = a.p50.med / f;
            Some((r, format!("{r:.2}x ({:.2} ms vs floor {f:.2} ms)", a.p50.med)))
        }
        _ => None,
    };
    push("sequential put p50 <= 2x floor (fdatasync + 2 RTT)", x, &|r| r <= 2.0);
    let x = pair("read-lin-64").map(|(a, b)| {
        let r = a.ops.med / b.ops.med;
        (r, format!("{r:.2}x ({:.0} vs {:.0} ops/s)", a.ops.med, b.ops.med))
    });
    push("linearizable reads at 64 conns >= 3x etcd", x, &|r| r >= 3.0);
    let x = match (get(System::St2kv, "read-stale-64"), get(System::Noop, "noop-64")) {
        (Some(a), Some(c)) => {
            let r = a.ops.med / c.ops.med;
            Some((r, format!("{:.0}% ({:.0} vs ceiling {:.0} ops/s)", 100.0 * r, a.ops.med, c.ops.med)))
        }
        _ => None,
    };
    push("stale reads at 64 conns >= 40% of the generator's ceiling", x, &|r| r >= 0.4);
    let x = match (get(System::St2kv, "put-follower-64"), get(System::St2kv, "put-leader-64")) {
        (Some(f), Some(l)) => {
            let r = f.ops.med / l.ops.med;
            Some((r, format!("{r:.2}x ({:.0} vs {:.0} ops/s)", f.ops.med, l.ops.med)))
        }
        _ => None,
    };
    push("st2kv puts to a follower >= 0.9x puts to the leader", x, &|r| r >= 0.9);
    let x = pair("put-64").map(|(a, b)| {
        let r = a.p99.med / b.p99.med;
        (r, format!("{r:.2}x ({:.1} vs {:.1} ms)", a.p99.med, b.p99.med))
    });
    push("put p99 at 64 conns <= etcd's", x, &|r| r <= 1.0);
    out
}

/// The multi-round / comparison report.
fn summary_text(reports: &[Report], floors: &Floors, rounds: usize) -> String {
    let sums = summarize(reports);
    let mut s = String::new();
    let what = if rounds > 1 { format!("median [min-max] of {rounds} rounds") } else { "1 round".into() };
    let _ = writeln!(s, "Per system ({what}):\n");
    let _ = writeln!(
        s,
        "{:<16} {:>5}  {:<6} {:<15} {:>26} {:>20} {:>24} {:>6}",
        "workload", "conns", "system", "target", "ops/s", "p50 ms", "p99 ms", "errors"
    );
    let _ = writeln!(s, "{}", "-".repeat(125));
    let mut last = "";
    for x in &sums {
        let name = if x.name == last { "" } else { x.name };
        last = x.name;
        let _ = writeln!(
            s,
            "{:<16} {:>5}  {:<6} {:<15} {:>26} {:>20} {:>24} {:>6}",
            name,
            x.conns,
            x.system.name(),
            x.target,
            x.ops.show(1, x.rounds),
            x.p50.show(2, x.rounds),
            x.p99.show(2, x.rounds),
            x.errors
        );
    }

    let get = |sys: System, n: &str| sums.iter().find(|x| x.system == sys && x.name == n);
    let compared: Vec<(&Summary, &Summary)> = sums
        .iter()
        .filter(|a| a.system == System::St2kv)
        .filter_map(|a| Some((a, get(System::Etcd, a.name)?)))
        .collect();
    if !compared.is_empty() {
        let _ = writeln!(
            s,
            "\nst2kv / etcd (ratio of medians; ops/s above 1x and latency below 1x favour st2kv):\n"
        );
        let _ = writeln!(s, "{:<16} {:>5}  {:>8} {:>8} {:>8}", "workload", "conns", "ops/s", "p50", "p99");
        let _ = writeln!(s, "{}", "-".repeat(50));
        for (a, b) in &compared {
            let _ = writeln!(
                s,
                "{:<16} {:>5}  {:>8} {:>8} {:>8}",
                a.name,
                a.conns,
                ratio(a.ops.med, b.ops.med),
                ratio(a.p50.med, b.p50.med),
                ratio(a.p99.med, b.p99.med)
            );
        }
    }

    let mut within = String::new();
    for sys in [System::St2kv, System::Etcd] {
        for (what, a, b) in [
            ("follower/leader puts (64 conns)", "put-follower-64", "put-leader-64"),
            ("linearizable/stale reads (64 conns)", "read-lin-64", "read-stale-64"),
        ] {
            if let (Some(a), Some(b)) = (get(sys, a), get(sys, b)) {
                let _ = writeln!(
                    within,
                    "{} {what}: throughput {}, p50 latency {}",
                    sys.name(),
                    ratio(a.ops.med, b.ops.med),
                    ratio(a.p50.med, b.p50.med)
                );
            }
        }
    }
    if !within.is_empty() {
        let _ = write!(s, "\n{within}");
    }

    if floors.fdatasync_ms.is_some() || floors.loopback_rtt_ms.is_some() {
        let _ = writeln!(s, "\nFloors and ceiling of this machine:");
        let ms = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.3} ms"));
        let _ = writeln!(s, "  fdatasync of a 100-byte append (median of 200): {}", ms(floors.fdatasync_ms));
        let _ = writeln!(
            s,
            "  loopback HTTP round trip (no-op server, 1 conn, median p50): {}",
            ms(floors.loopback_rtt_ms)
        );
        let _ =
            writeln!(s, "  sequential put floor (1 fdatasync + 2 round trips): {}", ms(floors.seq_put_ms()));
        let ceiling: Vec<String> = sums
            .iter()
            .filter(|x| x.system == System::Noop)
            .map(|x| format!("{} conns {:.0} ops/s", x.conns, x.ops.med))
            .collect();
        if !ceiling.is_empty() {
            let _ = writeln!(s, "  load generator's ceiling (no-op server): {}", ceiling.join(", "));
        }
    }

    let checks = checks(&sums, floors);
    if checks.iter().any(|c| c.met.is_some()) {
        let _ = writeln!(s, "\nTargets of the performance issue (medians of this run):");
        for c in &checks {
            let mark = match c.met {
                Some(true) => "met   ",
                Some(false) => "MISSED",
                None => "n/a   ",
            };
            let _ = writeln!(s, "  [{mark}] {}: {}", c.what, c.detail);
        }
    }
    s.push_str(&notes(reports));
    s
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
                anyhow!(
                    "unknown workload {w:?}; known: all, {}, {}",
                    ALL_WORKLOADS.join(", "),
                    EXTRA_WORKLOADS.join(", ")
                )
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

fn clean_urls(list: &[String]) -> Vec<String> {
    list.iter().map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect()
}

async fn run(args: Args) -> Result<()> {
    let st2kv_urls = clean_urls(&args.nodes);
    let etcd_urls = clean_urls(&args.etcd_nodes);
    let systems: Vec<System> = match args.target {
        TargetArg::St2kv => vec![System::St2kv],
        TargetArg::Etcd => vec![System::Etcd],
        TargetArg::Both => vec![System::St2kv, System::Etcd],
    };
    if systems.contains(&System::St2kv) && st2kv_urls.is_empty() {
        bail!("--nodes lists no URL (st2kv's API base URLs)");
    }
    if systems.contains(&System::Etcd) && etcd_urls.is_empty() {
        bail!("--etcd-nodes lists no URL (etcd's client URLs)");
    }
    let urls_of = |sys: System| if sys == System::Etcd { &etcd_urls } else { &st2kv_urls };
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(args.warmup >= 0.0 && args.warmup.is_finite()) {
        bail!("--warmup must be zero or a positive number of seconds");
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let rounds = args.rounds.unwrap_or(if systems.len() > 1 { 3 } else { 1 });
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let with_floors = args.floors || systems.len() > 1;
    let specs = selected(&args.workloads)?;

    let mut auth = "none".to_string();
    if systems.contains(&System::St2kv) {
        let login_token = match (&args.user, &args.password) {
            (Some(user), Some(password)) => Some(login(&st2kv_urls, user, password).await?),
            _ => None,
        };
        auth = match (&args.user, &args.token, &args.api_key) {
            (Some(u), _, _) => format!("token of {u}"),
            (None, Some(_), _) => "token".to_string(),
            (None, None, Some(_)) => "API key".to_string(),
            (None, None, None) => "none".to_string(),
        };
        AUTH_HEADERS.set(auth_headers(&args, login_token.as_deref())?).expect("set once");
    }

    let mut topos = Vec::new();
    for &sys in &systems {
        let http = client(Duration::from_secs(5), sys == System::St2kv)?;
        let topo = wait_topology(&http, sys, urls_of(sys), Duration::from_secs(15)).await?;
        eprintln!(
            "st2kv-bench: {} has {} nodes ({}), leader {} (term {})",
            sys.name(),
            topo.nodes.len(),
            topo.nodes.iter().map(|n| format!("{}={}", short_id(n.id), n.url)).collect::<Vec<_>>().join(", "),
            short_id(topo.leader),
            topo.term,
        );
        topos.push((sys, topo));
    }
    eprintln!(
        "st2kv-bench: {} workload(s) x {} system(s) x {rounds} round(s) of {}s + {}s warm-up, \
         {}-byte values, st2kv auth: {auth}{}",
        specs.len(),
        systems.len(),
        args.duration,
        args.warmup,
        args.value_bytes,
        if with_floors { ", with floors and the generator's ceiling" } else { "" }
    );

    let mut floors = Floors::default();
    let noop_urls = if with_floors {
        let dir = args.floor_dir.clone().unwrap_or_else(std::env::temp_dir);
        eprintln!("measuring fdatasync in {} ...", dir.display());
        let ms = tokio::task::spawn_blocking(move || fdatasync_floor(&dir))
            .await
            .context("the fdatasync task panicked")??;
        eprintln!("  fdatasync of a 100-byte append: median {ms:.3} ms");
        floors.fdatasync_ms = Some(ms);
        vec![spawn_noop_server()?]
    } else {
        Vec::new()
    };

    let value = random_value(args.value_bytes);
    let mut populated = [Populated::default(), Populated::default()];
    let mut reports = Vec::new();
    for round in 0..rounds {
        if rounds > 1 {
            eprintln!("== round {}/{rounds}", round + 1);
        }
        if !noop_urls.is_empty() {
            for &conns in NOOP_CONNS {
                let spec = noop_spec(conns);
                eprintln!("running {} against the no-op server...", spec.name);
                let r = run_workload(
                    &args,
                    spec,
                    System::Noop,
                    &noop_urls,
                    &value,
                    &mut Populated::default(),
                    round,
                )
                .await?;
                eprintln!(
                    "  {:.1} ops/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                    r.ops_per_s(),
                    r.p50_ms,
                    r.p99_ms,
                    r.errors
                );
                reports.push(r);
            }
        }
        for &spec in &specs {
            // Alternate which system goes first, so that neither always runs on a warmer machine.
            let mut order = systems.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for sys in order {
                eprintln!("running {} ({} conns) on {}...", spec.name, spec.conns, sys.name());
                let p = &mut populated[usize::from(sys == System::Etcd)];
                let r = run_workload(&args, spec, sys, urls_of(sys), &value, p, round).await?;
                eprintln!(
                    "  {:.1} ops/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                    r.ops_per_s(),
                    r.p50_ms,
                    r.p99_ms,
                    r.errors
                );
                reports.push(r);
            }
        }
    }
    if !noop_urls.is_empty() {
        floors.loopback_rtt_ms = Some(Stat::of(
            reports.iter().filter(|r| r.system == System::Noop && r.conns == 1).map(|r| r.p50_ms),
        ))
        .map(|s| s.med);
    }

    let text = if systems.len() == 1 && rounds == 1 && !with_floors {
        table(&reports)
    } else {
        summary_text(&reports, &floors, rounds)
    };
    if args.json {
        eprint!("\n{text}");
        let sums = summarize(&reports);
        let get = |sys: System, n: &str| sums.iter().find(|x| x.system == sys && x.name == n);
        let follower_leader =
            match (get(System::St2kv, "put-follower-64"), get(System::St2kv, "put-leader-64")) {
                (Some(f), Some(l)) if l.ops.med > 0.0 => json!(f.ops.med / l.ops.med),
                _ => Value::Null,
            };
        let clusters: serde_json::Map<String, Value> = topos
            .iter()
            .map(|(sys, t)| {
                (
                    sys.name().to_string(),
                    json!({
                        "nodes": t.nodes.iter().map(|n| json!({"id": n.id, "url": n.url})).collect::<Vec<_>>(),
                        "leader": t.leader,
                    }),
                )
            })
            .collect();
        let doc = json!({
            "clusters": clusters,
            "rounds": rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "value_bytes": args.value_bytes,
            "auth": auth,
            "results": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
            "summary": sums.iter().map(Summary::to_json).collect::<Vec<_>>(),
            "floors": {
                "fdatasync_ms": floors.fdatasync_ms,
                "loopback_rtt_ms": floors.loopback_rtt_ms,
                "seq_put_floor_ms": floors.seq_put_ms(),
            },
            "targets": checks(&sums, &floors)
                .iter()
                .map(|c| json!({"target": c.what, "met": c.met, "detail": c.detail}))
                .collect::<Vec<_>>(),
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

    #[test]
    fn base64() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"a"), "YQ==");
        assert_eq!(b64(b"ab"), "YWI=");
        assert_eq!(b64(b"abc"), "YWJj");
        assert_eq!(b64(b"hello"), "aGVsbG8=");
        assert_eq!(b64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn stats() {
        let s = Stat::of([3.0, 1.0, 2.0]);
        assert_eq!((s.med, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of([1.0, 2.0]).med, 1.5);
        assert_eq!(content_length(b"PUT / HTTP/1.1\r\nContent-Length: 12\r\nhost: x"), 12);
        assert_eq!(content_length(b"GET / HTTP/1.1\r\nhost: x"), 0);
    }
}
