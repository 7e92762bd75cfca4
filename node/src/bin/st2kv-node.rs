//! `st2kv-node`: parse flags, start tracing, run the node until SIGTERM or Ctrl-C.
//!
//! `st2kv-node healthcheck` is the container health probe (a `FROM scratch` image has no shell
//! and no curl): one plain HTTP/1.0 GET of this node's readiness, exit status 0 or 1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use st2kv_node::{init_tracing, run, Config};

/// The write path allocates and frees many small buffers per request on many threads (HTTP
/// bodies, batches, bincode frames, sled pages); mimalloc's thread-local free lists serve
/// that pattern with less time in the allocator than glibc's malloc (see bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

const HEALTHCHECK_HELP: &str = "\
Usage: st2kv-node healthcheck [--url URL] [--live] [--timeout-ms MS]

Probe a node's health endpoint (the container HEALTHCHECK): exit 0 when it answers 200, else 1.

Options:
  --url URL         Base URL of the node's API [default: http://<ST2KV_API_BIND>, an unspecified
                    bind address such as 0.0.0.0 probed on 127.0.0.1; env ST2KV_HEALTHCHECK_URL]
  --live            Probe /v1/health/live (the process answers) instead of /v1/health/ready
                    (a leader is known and this node has applied what it had committed)
  --timeout-ms MS   Connect/read deadline [default: 2000]";

/// The default probe target: this node's own API listener, from the same env var the node reads.
fn default_health_url() -> String {
    if let Ok(url) = std::env::var("ST2KV_HEALTHCHECK_URL") {
        return url;
    }
    let bind = std::env::var("ST2KV_API_BIND").unwrap_or_else(|_| "127.0.0.1:9101".into());
    match bind.parse::<SocketAddr>() {
        Ok(mut a) => {
            if a.ip().is_unspecified() {
                a.set_ip(if a.is_ipv4() {
                    [127, 0, 0, 1].into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!("http://{a}")
        }
        Err(_) => format!("http://{bind}"),
    }
}

/// `st2kv-node healthcheck ...`: GET `<url>/v1/health/{ready,live}`, std only.
fn healthcheck(args: &[String]) -> Result<String, String> {
    let (mut url, mut path, mut timeout_ms) = (default_health_url(), "/v1/health/ready", 2000u64);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value =
            || inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{flag} needs a value"));
        match flag {
            "--url" => url = value()?,
            "--timeout-ms" => timeout_ms = value()?.parse().map_err(|_| "--timeout-ms is not a number")?,
            "--live" => path = "/v1/health/live",
            "--ready" => path = "/v1/health/ready",
            "-h" | "--help" => {
                println!("{HEALTHCHECK_HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument {other:?}\n\n{HEALTHCHECK_HELP}")),
        }
    }
    let rest = url.strip_prefix("http://").ok_or(format!("{url}: only http:// URLs are probed"))?;
    let hostport = rest.split('/').next().unwrap_or_default().trim_end_matches('/');
    let hostport = if hostport.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        hostport.to_string()
    } else {
        format!("{hostport}:9101")
    };
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let addrs: Vec<SocketAddr> =
        hostport.to_socket_addrs().map_err(|e| format!("cannot resolve {hostport}: {e}"))?.collect();
    let mut last_err = format!("{hostport} resolves to no address");
    for addr in addrs {
        let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => s,
            Err(e) => {
                last_err = format!("connect {addr}: {e}");
                continue;
            }
        };
        stream.set_read_timeout(Some(timeout)).and_then(|_| stream.set_write_timeout(Some(timeout))).ok();
        let req = format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: st2kv-healthcheck\r\n\r\n");
        stream.write_all(req.as_bytes()).map_err(|e| format!("send to {addr}: {e}"))?;
        let mut resp = Vec::new();
        // HTTP/1.0: the server closes the connection after the response.
        stream.take(64 * 1024).read_to_end(&mut resp).map_err(|e| format!("read from {addr}: {e}"))?;
        let resp = String::from_utf8_lossy(&resp);
        let status = resp.lines().next().unwrap_or_default().to_string();
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or_default();
        return match status.split_whitespace().nth(1) {
            Some("200") => Ok(format!("{addr}{path}: {body}")),
            _ => Err(format!("{addr}{path}: {status} {body}")),
        };
    }
    Err(last_err)
}

/// `st2kv-node restore FILE --data-dir DIR` (DIR also from ST2KV_DATA_DIR).
fn restore_command(args: &[String]) -> std::process::ExitCode {
    let usage = "usage: st2kv-node restore FILE --data-dir DIR";
    let mut file = None;
    let mut dir = std::env::var("ST2KV_DATA_DIR").ok();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data-dir" => dir = it.next().cloned(),
            s if s.starts_with("--data-dir=") => dir = Some(s["--data-dir=".len()..].to_string()),
            "-h" | "--help" => {
                println!("{usage}\n\nSeed an empty data dir from a backup made by `st2kv snapshot save`.");
                return std::process::ExitCode::SUCCESS;
            }
            s if file.is_none() && !s.starts_with('-') => file = Some(s.to_string()),
            other => {
                eprintln!("st2kv-node restore: unexpected argument {other:?}; {usage}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let (Some(file), Some(dir)) = (file, dir) else {
        eprintln!("st2kv-node restore: {usage}");
        return std::process::ExitCode::from(2);
    };
    match st2kv_node::restore(std::path::Path::new(&file), std::path::Path::new(&dir)) {
        Ok(msg) => {
            println!("{msg}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("st2kv-node restore: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("healthcheck") {
        return match healthcheck(&args[2..]) {
            Ok(msg) => {
                println!("healthy: {msg}");
                std::process::ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("unhealthy: {msg}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if args.get(1).map(String::as_str) == Some("restore") {
        return restore_command(&args[2..]);
    }
    let matches = Config::command()
        .after_help(
            "Health probe (containers): `st2kv-node healthcheck [--url URL] [--live]`, see its --help\n\
             Restore a backup into an empty data dir: `st2kv-node restore FILE --data-dir DIR`",
        )
        .get_matches();
    let config = Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_tracing(&config.log_format);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        rt.worker_threads(config.worker_threads);
    }
    let rt = rt.enable_all().build().expect("tokio runtime");
    match rt.block_on(run(config, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("st2kv-node: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
