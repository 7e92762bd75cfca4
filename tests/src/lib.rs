//! # st2kv-tests: cluster scenarios against real node processes
//!
//! [`TestCluster`] starts `st2kv-node` child processes on loopback (each node on its own
//! 127.0.0.x address with free ports), and offers the verbs the scenarios are written in:
//! `leader()`, `kill(i)` (SIGKILL), `stop(i)` (SIGTERM), `restart(i)`, `status(i)`,
//! `wait_converged()`. The binaries are the ones `cargo build --workspace --bins` puts next to
//! the test executables; `scripts/test.sh` builds them first.
//!
//! What this crate does not do: unit-test anything. Each crate tests its own units; these tests
//! check what only a running cluster can show (replication, failover, durability, snapshots,
//! and the real clients).

pub mod linearizability;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of a workspace binary built next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, or run scripts/test.sh)",
        path.display()
    );
    path
}

/// A free TCP port on `ip`.
/// Three distinct free ports on `ip` (held open together while chosen, so they differ).
fn free_ports(ip: &str) -> [u16; 3] {
    let l: Vec<TcpListener> = (0..3).map(|_| TcpListener::bind((ip, 0)).expect("a free port")).collect();
    [0, 1, 2].map(|i| l[i].local_addr().expect("a bound port").port())
}

/// A loopback /24 for the next node: clusters started concurrently by one test binary never
/// share an address (a shared address could hand one node's port to another's connection).
fn next_subnet() -> u8 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        rand::random::<u32>() % 200,
        std::sync::atomic::Ordering::Relaxed,
        std::sync::atomic::Ordering::Relaxed,
    );
    (NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 200 + 20) as u8
}

/// One node's addresses and process.
pub struct TestNode {
    pub id: u64,
    pub ip: String,
    pub api: SocketAddr,
    pub auth: SocketAddr,
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    pub extra_args: Vec<String>,
    /// For a node added after formation: the peer address it joins through.
    pub join: Option<String>,
    child: Option<Child>,
}

impl TestNode {
    /// Base URL of the API listener, e.g. `http://127.0.0.2:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Options for [`TestCluster::start_with`].
#[derive(Clone, Default)]
pub struct ClusterOptions {
    /// Extra flags for every node, e.g. `--snapshot-every 100`.
    pub node_args: Vec<String>,
    /// Run without authentication (`--insecure-no-auth`) instead of the secure default.
    pub insecure: bool,
    /// A keyring every node loads (`--crypto-key-path`).
    pub keyring: Option<PathBuf>,
    /// Route all peer traffic through recording proxies (see [`TestCluster::peer_traffic`]).
    pub record_peers: bool,
}

/// The bootstrap admin every secure test cluster is created with.
pub const ADMIN_USER: &str = "st2admin";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// A cluster of node processes that are killed when it is dropped.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    /// Every byte that crossed a recording peer proxy, both directions.
    traffic: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// Peer links cut by [`TestCluster::partition`]: (source IP, destination node id).
    cut: Cut,
    initial: String,
    secure: bool,
    dir: tempfile::TempDir,
    /// Authenticated as the admin (a default `X-Auth-Token` header), once the cluster is up.
    http: reqwest::Client,
    /// Without credentials.
    anon: reqwest::Client,
    /// The admin's token (empty on an insecure cluster).
    pub admin_token: String,
}

impl TestCluster {
    /// Start `n` nodes and wait until they agree on a leader.
    pub async fn start(n: usize) -> TestCluster {
        Self::start_with(n, ClusterOptions::default()).await
    }

    pub async fn start_with(n: usize, opts: ClusterOptions) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for i in 1..=n {
            // Each node gets its own loopback address, like the README's 127.0.0.1-3 layout.
            let ip = format!("127.0.{}.{}", next_subnet(), i);
            let ip = if TcpListener::bind((ip.as_str(), 0)).is_ok() { ip } else { "127.0.0.1".to_string() };
            let [api, auth, peer] = free_ports(&ip).map(|p| SocketAddr::new(ip.parse().unwrap(), p));
            nodes.push(TestNode {
                id: i as u64,
                api,
                auth,
                peer,
                ip,
                data_dir: dir.path().join(format!("n{i}")),
                extra_args: opts.node_args.clone(),
                join: None,
                child: None,
            });
        }
        let traffic = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let cut: Cut = Default::default();
        let mut advertised = Vec::new();
        for n in nodes.iter_mut() {
            if let Some(k) = &opts.keyring {
                n.extra_args.extend(["--crypto-key-path".to_string(), k.display().to_string()]);
            }
            if opts.record_peers {
                let proxy = start_recording_proxy(&n.ip, n.peer, traffic.clone(), n.id, cut.clone()).await;
                n.extra_args.extend(["--peer-advertise".to_string(), proxy.to_string()]);
                advertised.push(format!("{}={}", n.id, proxy));
            } else {
                advertised.push(format!("{}={}", n.id, n.peer));
            }
        }
        let initial = advertised.join(",");
        if !opts.insecure {
            std::fs::write(dir.path().join("admin-password"), format!("{ADMIN_PASSWORD}\n")).unwrap();
            std::fs::write(dir.path().join("cluster-secret"), format!("{:032x}\n", rand::random::<u128>()))
                .unwrap();
        }
        let anon = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
        let mut c = TestCluster {
            cut,
            traffic,
            nodes,
            initial,
            secure: !opts.insecure,
            dir,
            http: anon.clone(),
            anon,
            admin_token: String::new(),
        };
        for i in 1..=n {
            c.spawn(i);
        }
        if c.secure {
            // The admin exists once a leader has applied the bootstrap: log in until it works.
            let deadline = Instant::now() + Duration::from_secs(30);
            c.admin_token = loop {
                match c.login(1, ADMIN_USER, ADMIN_PASSWORD, None).await {
                    Ok(t) => break t,
                    Err(e) if Instant::now() > deadline => {
                        panic!("admin login never worked: {e}\n{}", c.log(1))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert("x-auth-token", c.admin_token.parse().unwrap());
            c.http = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .default_headers(headers)
                .build()
                .unwrap();
        }
        c.wait_for_leader(Duration::from_secs(20)).await;
        c
    }

    /// Log in on node `i`'s auth listener with HTTP Basic; the token, or the status and body.
    pub async fn login(
        &self,
        i: usize,
        user: &str,
        password: &str,
        ttl: Option<i64>,
    ) -> Result<String, String> {
        let body = match ttl {
            Some(t) => serde_json::json!({ "ttl": t }),
            None => serde_json::json!({}),
        };
        let resp = self
            .anon
            .post(format!("http://{}/tokens", self.node(i).auth))
            .basic_auth(user, Some(password))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status == 201 {
            Ok(body["token"].as_str().unwrap_or_default().to_string())
        } else {
            Err(format!("{status} {body}"))
        }
    }

    /// Cut the peer links between the groups (node indexes); links inside a group stay. Needs
    /// `record_peers` (peer traffic goes through the proxies) and distinct node IPs.
    pub fn partition(&self, groups: &[&[usize]]) {
        let mut cut = self.cut.lock().unwrap();
        cut.clear();
        for (gi, g) in groups.iter().enumerate() {
            for (hi, h) in groups.iter().enumerate() {
                if gi == hi {
                    continue;
                }
                for a in g.iter() {
                    for b in h.iter() {
                        cut.insert((self.node(*a).ip.parse().unwrap(), *b as u64));
                    }
                }
            }
        }
    }

    /// Restore every peer link.
    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }

    /// SIGSTOP node `i` (a pause: it keeps its sockets but does nothing).
    pub fn pause(&self, i: usize) {
        if let Some(c) = &self.nodes[i - 1].child {
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
    }

    /// SIGCONT node `i`.
    pub fn resume(&self, i: usize) {
        if let Some(c) = &self.nodes[i - 1].child {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
    }

    /// Every byte that crossed the recording peer proxies so far.
    pub fn peer_traffic(&self) -> Vec<u8> {
        self.traffic.lock().unwrap().clone()
    }

    /// A client without credentials.
    pub fn anon(&self) -> &reqwest::Client {
        &self.anon
    }

    /// A Rust client for node `i` authenticated with `token`.
    pub fn client_as(&self, i: usize, token: &str) -> st2kv_api::Client {
        st2kv_api::Client::new(&[self.url(i)]).unwrap().with_token(Some(token.to_string()))
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial.clone();
        let secure = self.secure;
        let secret_args: Vec<String> = if secure {
            vec![
                "--admin-password-file".into(),
                self.dir.path().join("admin-password").display().to_string(),
                "--cluster-secret-file".into(),
                self.dir.path().join("cluster-secret").display().to_string(),
            ]
        } else {
            vec!["--insecure-no-auth".into()]
        };
        let node = &mut self.nodes[i - 1];
        assert!(node.child.is_none(), "node {i} is already running");
        std::fs::create_dir_all(&node.data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.join("node.log"))
            .unwrap();
        let child = Command::new(bin("st2kv-node"))
            .args(["--id", &node.id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--api-bind", &node.api.to_string()])
            .args(["--auth-bind", &node.auth.to_string()])
            .args(["--peer-bind", &node.peer.to_string()])
            .args(match &node.join {
                Some(addr) => vec!["--join".to_string(), addr.clone()],
                None => vec!["--initial-cluster".to_string(), initial],
            })
            .args(&secret_args)
            .args(&node.extra_args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn st2kv-node");
        node.child = Some(child);
    }

    /// Start a new node that joins the running cluster through node `via`'s peer listener, and
    /// return its index once its API answers (it becomes a voter once it has caught up).
    pub async fn add_joining_node(&mut self, via: usize) -> usize {
        let i = self.nodes.len() + 1;
        let ip = self.nodes[0].ip.rsplit_once('.').map(|(net, _)| format!("{net}.{i}")).unwrap();
        let ip = if TcpListener::bind((ip.as_str(), 0)).is_ok() { ip } else { "127.0.0.1".to_string() };
        let [api, auth, peer] = free_ports(&ip).map(|p| SocketAddr::new(ip.parse().unwrap(), p));
        let template = self.nodes[0].extra_args.clone();
        // The founding nodes' per-node flags (peer advertise for proxies) do not apply here.
        let mut extra = Vec::new();
        let mut it = template.into_iter();
        while let Some(a) = it.next() {
            if a == "--peer-advertise" {
                it.next();
            } else {
                extra.push(a);
            }
        }
        let via_addr = self.nodes[via - 1].peer.to_string();
        self.nodes.push(TestNode {
            id: i as u64,
            api,
            auth,
            peer,
            ip,
            data_dir: self.dir.path().join(format!("n{i}")),
            extra_args: extra,
            join: Some(via_addr),
            child: None,
        });
        self.spawn(i);
        self.wait_api(i, Duration::from_secs(20)).await;
        i
    }

    /// The voters of the current membership, as node `i` sees them.
    pub async fn voters(&self, i: usize) -> Vec<u64> {
        let s = self.status(i).await.unwrap_or_default();
        s["members"]
            .as_array()
            .map(|m| m.iter().filter(|n| n["voter"] == true).filter_map(|n| n["id"].as_u64()).collect())
            .unwrap_or_default()
    }

    pub fn node(&self, i: usize) -> &TestNode {
        &self.nodes[i - 1]
    }

    pub fn url(&self, i: usize) -> String {
        self.node(i).url()
    }

    /// Every node's URL, comma-separated, as `st2kv --url` takes them.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// A Rust client talking to node `i` only.
    pub fn client(&self, i: usize) -> st2kv_api::Client {
        st2kv_api::Client::new(&[self.url(i)]).unwrap().with_token(self.token())
    }

    fn token(&self) -> Option<String> {
        (!self.admin_token.is_empty()).then(|| self.admin_token.clone())
    }

    /// A Rust client that knows every node and fails over between them.
    pub fn client_all(&self) -> st2kv_api::Client {
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        st2kv_api::Client::new(&urls).unwrap().with_token(self.token())
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// SIGKILL node `i`: no chance to flush or say goodbye.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i - 1].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL several nodes as close together as possible.
    pub fn kill_all(&mut self) {
        let pids: Vec<i32> =
            self.nodes.iter().filter_map(|n| n.child.as_ref().map(|c| c.id() as i32)).collect();
        for pid in pids {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.wait();
            }
        }
    }

    /// SIGTERM node `i` and wait for it to exit; returns whether it exited cleanly.
    pub fn stop(&mut self, i: usize) -> bool {
        match self.nodes[i - 1].child.take() {
            Some(mut c) => {
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    if let Ok(Some(st)) = c.try_wait() {
                        return st.success();
                    }
                    if Instant::now() > deadline {
                        let _ = c.kill();
                        let _ = c.wait();
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            None => true,
        }
    }

    /// Start node `i` again on the same data dir and addresses.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_api(i, Duration::from_secs(20)).await;
    }

    async fn wait_api(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.status(i).await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {i} did not come up within {within:?}; log:\n{}", self.log(i));
    }

    /// The node's `/v1/cluster/status`, or `None` if it does not answer.
    pub async fn status(&self, i: usize) -> Option<Value> {
        let url = format!("{}/v1/cluster/status", self.url(i));
        let resp = self.http.get(url).timeout(Duration::from_secs(2)).send().await.ok()?;
        resp.json().await.ok()
    }

    /// Node `i`'s status with a digest of its whole key space.
    pub async fn status_with_hash(&self, i: usize) -> Option<Value> {
        let url = format!("{}/v1/cluster/status?hash=true", self.url(i));
        let resp = self.http.get(url).timeout(Duration::from_secs(5)).send().await.ok()?;
        resp.json().await.ok()
    }

    /// The node index (1-based) all running nodes agree is leader, if they agree.
    pub async fn leader(&self) -> Option<usize> {
        let mut seen = None;
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            let s = self.status(n.id as usize).await?;
            let l = s["leader"].as_u64()? as usize;
            if seen.is_some_and(|x| x != l) {
                return None;
            }
            seen = Some(l);
        }
        seen.filter(|l| self.nodes[l - 1].is_running())
    }

    pub async fn wait_for_leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.leader().await {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut logs = String::new();
        for i in 1..=self.nodes.len() {
            let exited = match self.nodes[i - 1].child.as_ref().map(|c| c.id() as i32) {
                // An exited child stays a zombie (state Z) until it is waited for.
                Some(pid) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|st| st.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with('Z')))
                    .unwrap_or(true),
                None => true,
            };
            let state = if exited { "not running" } else { "running" };
            logs.push_str(&format!("\n--- node {i} ({state}), last lines of its log:\n{}\n", self.log(i)));
        }
        panic!("no leader within {within:?}{logs}");
    }

    /// A running node that is not the leader.
    pub async fn follower(&self) -> usize {
        let l = self.wait_for_leader(Duration::from_secs(20)).await;
        self.nodes
            .iter()
            .find(|n| n.is_running() && n.id as usize != l)
            .map(|n| n.id as usize)
            .expect("a follower")
    }

    /// Wait until every running node has applied the same index and holds the same keys.
    pub async fn wait_converged(&self, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = Vec::new();
            for n in self.nodes.iter().filter(|n| n.is_running()) {
                if let Some(s) = self.status_with_hash(n.id as usize).await {
                    all.push(s);
                }
            }
            let running = self.nodes.iter().filter(|n| n.is_running()).count();
            if all.len() == running
                && all.windows(2).all(|w| {
                    w[0]["applied_index"] == w[1]["applied_index"] && w[0]["state_hash"] == w[1]["state_hash"]
                })
            {
                return all;
            }
            if Instant::now() > deadline {
                panic!("nodes did not converge within {within:?}: {all:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The tail of node `i`'s log, for failure messages.
    pub fn log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.node(i).data_dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A key name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The real StackStorm CLI (`st2` from PyPI st2client 3.9.0): `$ST2_BIN`, else the virtualenv
/// `scripts/test.sh` creates at `/opt/st2venv`. Missing is a failure, not a skip: set
/// `ST2KV_SKIP_ST2=1` to opt out explicitly (the returned `None` then skips the test).
pub fn st2_cli() -> Option<PathBuf> {
    if std::env::var_os("ST2KV_SKIP_ST2").is_some() {
        eprintln!("ST2KV_SKIP_ST2 is set: skipping the real st2 CLI scenario");
        return None;
    }
    let path = std::env::var_os("ST2_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/st2venv/bin/st2"));
    assert!(
        path.exists(),
        "the real st2 CLI is not at {} (run scripts/test.sh, which installs st2client==3.9.0 there, or set ST2_BIN)",
        path.display()
    );
    Some(path)
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run the real `st2` CLI against node `i` of `cluster`, with a private HOME.
pub fn st2(cli: &Path, cluster: &TestCluster, i: usize, home: &Path, args: &[&str]) -> CliOutput {
    st2_env(cli, cluster, i, home, args, &[("ST2_AUTH_TOKEN", cluster.admin_token.as_str())])
}

/// Run the real `st2` CLI with extra environment variables (an empty value removes one).
pub fn st2_env(
    cli: &Path,
    cluster: &TestCluster,
    i: usize,
    home: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> CliOutput {
    let node = cluster.node(i);
    let mut cmd = Command::new(cli);
    cmd.args(args)
        .env("ST2_API_URL", format!("http://{}/v1", node.api))
        .env("ST2_AUTH_URL", format!("http://{}", node.auth))
        .env("ST2_CLI_SKIP_CONFIG", "1")
        .env("HOME", home)
        .env("COLUMNS", "160")
        .current_dir(home)
        .stdin(Stdio::null());
    // The caller's variables come last, so they can override (or, empty, remove) the defaults.
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().expect("run st2");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run our `st2kv` CLI with a private HOME and the given environment (no inherited ST2_* vars).
pub fn st2kv(home: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut cmd = Command::new(bin("st2kv"));
    cmd.args(args).env("HOME", home).current_dir(home).stdin(Stdio::null());
    for var in [
        "ST2_BASE_URL",
        "ST2_API_URL",
        "ST2_AUTH_URL",
        "ST2_AUTH_TOKEN",
        "ST2_API_KEY",
        "ST2_CONFIG_FILE",
        "ST2_CLI_SKIP_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run st2kv");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Cut peer links: (source IP, destination node id).
type Cut = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(std::net::IpAddr, u64)>>>;

/// A TCP proxy on `ip` forwarding to `target` (node `node`'s peer listener), appending every byte
/// it carries to `record`, and dropping connections from sources cut off from `node`.
async fn start_recording_proxy(
    ip: &str,
    target: SocketAddr,
    record: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    node: u64,
    cut: Cut,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("proxy listener");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, from)) = listener.accept().await {
            let record = record.clone();
            let is_cut = {
                let cut = cut.clone();
                move || cut.lock().unwrap().contains(&(from.ip(), node))
            };
            if is_cut() {
                continue; // dropped: the connection closes at once
            }
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                let rec = record.clone();
                let up_cut = is_cut.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = ri.read(&mut buf).await {
                        if n == 0 || up_cut() || wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = wo.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = ro.read(&mut buf).await {
                    if n == 0 || is_cut() || wi.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = wi.shutdown().await;
                let _ = up.await;
            });
        }
    });
    addr
}

/// Every byte of every file under `dir`.
pub fn all_bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.extend_from_slice(&bytes);
            }
        }
    }
    out
}
