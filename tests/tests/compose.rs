//! The Docker deployment (README: "HA deployment with Docker"): `docker compose up` of the
//! `FROM scratch` image with the repo's `docker-compose.yml`, our CLI and the real `st2` CLI
//! through every published API and auth port, a node stopped and restarted on its volume, and
//! `docker compose down -v` leaving nothing behind.
//!
//! Needs the image and `deploy/secrets/` from `scripts/docker-build.sh`. `scripts/test.sh` runs it
//! and sets `ST2KV_COMPOSE=1` whenever Docker answers. Without `ST2KV_COMPOSE` the test is skipped
//! (loudly) on a developer machine, but under CI (`CI` set) it runs, so a CI machine without
//! Docker fails rather than passing silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use st2kv_tests::{st2_cli, st2kv, CliOutput};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// How long a fresh `up` may take to answer on every node (the issue promises a minute).
const READY_WITHIN: Duration = Duration::from_secs(90);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn output(cmd: &mut Command) -> CliOutput {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A compose project started from the repo's docker-compose.yml; `down -v` when dropped.
struct Compose {
    /// `docker compose` (v2) or `docker-compose` (v1).
    program: Vec<String>,
    project: String,
    env: Vec<(String, String)>,
    up: bool,
}

impl Compose {
    fn new(project: String, env: Vec<(String, String)>) -> Compose {
        let v2 = output(Command::new("docker").args(["compose", "version"])).code == 0;
        let program = if v2 {
            vec!["docker".to_string(), "compose".to_string()]
        } else {
            let v1 = output(Command::new("docker-compose").arg("version"));
            assert_eq!(v1.code, 0, "neither `docker compose` nor `docker-compose` works: {v1:?}");
            vec!["docker-compose".to_string()]
        };
        Compose { program, project, env, up: false }
    }

    fn run(&self, args: &[&str]) -> CliOutput {
        let root = repo_root();
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .arg("-f")
            .arg(root.join("docker-compose.yml"))
            .args(["-p", &self.project])
            .args(args)
            .current_dir(&root);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        output(&mut cmd)
    }

    fn ok(&self, args: &[&str]) -> CliOutput {
        let out = self.run(args);
        assert_eq!(out.code, 0, "compose {args:?} failed: {out:?}");
        out
    }

    /// The container id of a service.
    fn container(&self, service: &str) -> String {
        let id = self.ok(&["ps", "-q", service]).stdout.trim().to_string();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    /// Everything docker still holds for this project: containers, volumes, networks.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        for what in [&["ps", "-aq"][..], &["volume", "ls", "-q"], &["network", "ls", "-q"]] {
            let out = output(Command::new("docker").args(what).args(["--filter", &label]));
            assert_eq!(out.code, 0, "{out:?}");
            left.extend(out.stdout.split_whitespace().map(|s| format!("{} {s}", what[0])));
        }
        left
    }

    fn down(&mut self) {
        let out = self.run(&["down", "-v", "--remove-orphans", "-t", "10"]);
        if out.code != 0 {
            eprintln!("compose down failed: {out:?}");
        }
        self.up = false;
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if !self.up {
            return;
        }
        if std::thread::panicking() {
            let logs = self.run(&["logs", "--no-color", "--tail", "60"]);
            eprintln!("== compose logs\n{}{}", logs.stdout, logs.stderr);
        }
        self.down();
    }
}

/// Distinct free TCP ports on 127.0.0.1 (all held at once, so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

async fn ready(http: &reqwest::Client, api_port: u16) -> bool {
    let url = format!("http://127.0.0.1:{api_port}/v1/health/ready");
    matches!(http.get(url).send().await, Ok(r) if r.status() == 200)
}

async fn wait_ready(http: &reqwest::Client, ports: &[u16], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for &p in ports {
            all &= ready(http, p).await;
        }
        if all {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "nodes on ports {ports:?} not ready within {within:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wait until docker's own HEALTHCHECK (`st2kv-node healthcheck`) calls the container healthy.
async fn wait_healthy(compose: &Compose, service: &str, within: Duration) {
    let id = compose.container(service);
    let start = Instant::now();
    loop {
        let out = output(Command::new("docker").args(["inspect", "-f", "{{.State.Health.Status}}", &id]));
        assert_eq!(out.code, 0, "{out:?}");
        if out.stdout.trim() == "healthy" {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{service} is {:?}, not healthy, after {within:?}",
            out.stdout.trim()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn json(out: &CliOutput) -> Value {
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_serves_our_cli_and_the_real_st2_cli_on_every_published_port() {
    let wanted = std::env::var_os("ST2KV_COMPOSE").is_some_and(|v| !v.is_empty());
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if !wanted && !ci {
        // Straight to stderr, past the test harness's capture: a skip must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the Docker compose scenario. Run scripts/docker-build.sh, then \
             ST2KV_COMPOSE=1 cargo test -p st2kv-tests --test compose (scripts/test.sh does both \
             when Docker answers). ***\n"
        );
        return;
    }
    let root = repo_root();
    let docker = output(Command::new("docker").arg("info"));
    assert_eq!(docker.code, 0, "Docker does not answer (the compose scenario needs it): {docker:?}");
    let tag = std::env::var("ST2KV_IMAGE_TAG").unwrap_or_else(|_| "local".into());
    let image = output(Command::new("docker").args(["image", "inspect", &format!("st2kv:{tag}")]));
    assert_eq!(image.code, 0, "no image st2kv:{tag}: run scripts/docker-build.sh first: {image:?}");
    let password = std::fs::read_to_string(root.join("deploy/secrets/admin-password"))
        .expect("deploy/secrets/admin-password (made by scripts/docker-build.sh)")
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_string();
    let st2 = st2_cli();

    // Free host ports for the six published ones, so a developer's own stack (9101...) is untouched.
    let ports = free_ports(6);
    let (api, auth): (Vec<u16>, Vec<u16>) =
        ((0..3).map(|i| ports[2 * i]).collect(), (0..3).map(|i| ports[2 * i + 1]).collect());
    let mut env = vec![("ST2KV_PUBLISH_ADDR".to_string(), "127.0.0.1".to_string())];
    for i in 0..3 {
        env.push((format!("ST2KV_N{}_API_PORT", i + 1), api[i].to_string()));
        env.push((format!("ST2KV_N{}_AUTH_PORT", i + 1), auth[i].to_string()));
    }
    let mut compose = Compose::new(format!("st2kvtest-{}", std::process::id()), env);

    let start = Instant::now();
    compose.up = true; // from here on, Drop cleans up whatever `up` managed to create
    compose.ok(&["up", "-d", "--no-build"]);
    let up_took = start.elapsed();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    wait_ready(&http, &api, READY_WITHIN).await;
    eprintln!("compose up: {up_took:?}; every node ready after {:?}", start.elapsed());
    for n in NODES {
        wait_healthy(&compose, n, READY_WITHIN.saturating_sub(start.elapsed()) + Duration::from_secs(20))
            .await;
    }
    eprintln!("every container healthy after {:?}", start.elapsed());

    // Our CLI: log in through each node's auth port, write through each node, read through another.
    let home = tempfile::tempdir().unwrap();
    let url = |i: usize| format!("http://127.0.0.1:{}", api[i]);
    let all_urls = (0..3).map(url).collect::<Vec<_>>().join(",");
    let cli = |node_url: &str, args: &[&str]| {
        let mut a = vec!["--url", node_url];
        a.extend_from_slice(args);
        st2kv(home.path(), &a, &[])
    };
    for (i, auth_port) in auth.iter().enumerate() {
        let auth_url = format!("http://127.0.0.1:{auth_port}");
        let out = cli(&url(i), &["--auth-url", &auth_url, "login", "st2admin", "-p", &password]);
        assert_eq!(out.code, 0, "login through n{}: {out:?}", i + 1);
    }
    let out = cli(&all_urls, &["login", "st2admin", "-p", &password]);
    assert_eq!(out.code, 0, "login through the API ports: {out:?}");
    for i in 0..3 {
        let (name, value) = (format!("compose-key-{}", i + 1), format!("written through n{}", i + 1));
        let out = cli(&url(i), &["key", "set", &name, &value]);
        assert_eq!(out.code, 0, "{out:?}");
        let got = json(&cli(&url((i + 1) % 3), &["-j", "key", "get", &name]));
        assert_eq!(got["value"], value.as_str(), "read through n{}", (i + 1) % 3 + 1);
    }
    // A secret: encrypted with the mounted keyring on the node that takes it, decrypted by another.
    let plaintext = "compose-S3CRET-value";
    let out = cli(&url(1), &["key", "set", "compose-secret", plaintext, "--encrypt"]);
    assert_eq!(out.code, 0, "{out:?}");
    let got = json(&cli(&url(2), &["-j", "key", "get", "compose-secret"]));
    assert_eq!((got["encrypted"].as_bool(), got["secret"].as_bool()), (Some(true), Some(true)), "{got}");
    assert_ne!(got["value"], plaintext);
    let got = json(&cli(&url(0), &["-j", "key", "get", "compose-secret", "--decrypt"]));
    assert_eq!(got["value"], plaintext);

    // The real st2 CLI, unchanged, through each node's published API and auth ports.
    if let Some(st2) = &st2 {
        for i in 0..3 {
            let st2_home = tempfile::tempdir().unwrap();
            let run = |args: &[&str]| {
                let mut cmd = Command::new(st2);
                cmd.args(args)
                    .env("ST2_API_URL", format!("http://127.0.0.1:{}/v1", api[i]))
                    .env("ST2_AUTH_URL", format!("http://127.0.0.1:{}", auth[i]))
                    .env("HOME", st2_home.path())
                    .env("COLUMNS", "160")
                    .current_dir(st2_home.path());
                for var in [
                    "ST2_BASE_URL",
                    "ST2_AUTH_TOKEN",
                    "ST2_API_KEY",
                    "ST2_CONFIG_FILE",
                    "ST2_CLI_SKIP_CONFIG",
                ] {
                    cmd.env_remove(var);
                }
                output(&mut cmd)
            };
            let out = run(&["login", "st2admin", "-p", &password]);
            assert_eq!(out.code, 0, "st2 login through n{}: {out:?}", i + 1);
            assert!(out.stdout.contains("Logged in as st2admin"), "{out:?}");
            let listed = json(&run(&["key", "list", "-j"]));
            let names: Vec<&str> =
                listed.as_array().unwrap().iter().filter_map(|k| k["name"].as_str()).collect();
            for want in ["compose-key-1", "compose-key-2", "compose-key-3", "compose-secret"] {
                assert!(names.contains(&want), "st2 key list through n{} lacks {want}: {names:?}", i + 1);
            }
            let name = format!("st2-key-{}", i + 1);
            let out = run(&["key", "set", &name, "from the real st2"]);
            assert_eq!(out.code, 0, "{out:?}");
            let got = json(&run(&["key", "get", "compose-secret", "--decrypt", "-j"]));
            assert_eq!(got["value"], plaintext);
        }
    }

    // High availability: with n1 stopped the other two keep serving (the CLI moves past n1's URL),
    // and n1 comes back on its volume and catches up.
    compose.ok(&["stop", "-t", "10", "n1"]);
    let out = cli(&all_urls, &["key", "set", "while-n1-was-down", "still writable"]);
    assert_eq!(out.code, 0, "write with n1 stopped: {out:?}");
    compose.ok(&["start", "n1"]);
    wait_ready(&http, &api[..1], READY_WITHIN).await;
    let got = json(&cli(&url(0), &["-j", "key", "get", "while-n1-was-down"]));
    assert_eq!(got["value"], "still writable");
    let got = json(&cli(&url(0), &["-j", "key", "get", "compose-key-2"]));
    assert_eq!(got["value"], "written through n2", "n1 kept its data across the restart");

    // `down -v` removes the cluster, its network and its volumes.
    compose.down();
    let left = compose.leftovers();
    assert!(left.is_empty(), "compose down -v left {left:?}");
    eprintln!("compose scenario done in {:?}", start.elapsed());
}
