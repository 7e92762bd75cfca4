//! A node started without `--initial-cluster` is a one-node cluster (the embedded default): it
//! forms by itself, serves writes, and keeps its data across a graceful restart.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use st2kv_api::{Client, GetOptions, KeyValuePairRequest};
use st2kv_tests::bin;

fn start(dir: &std::path::Path, ip: &str, ports: (u16, u16, u16)) -> Child {
    Command::new(bin("st2kv-node"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--api-bind", &format!("{ip}:{}", ports.0)])
        .args(["--auth-bind", &format!("{ip}:{}", ports.1)])
        .args(["--peer-bind", &format!("{ip}:{}", ports.2)])
        .arg("--insecure-no-auth")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn st2kv-node")
}

async fn wait_ready(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.keys().list(&Default::default()).await {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("single node never became ready: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_forms_a_cluster_by_itself_and_keeps_its_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let ip = "127.0.0.1";
    let ports = (free_port(ip), free_port(ip), free_port(ip));
    let client = Client::new(&[format!("http://{ip}:{}", ports.0)]).unwrap();

    let mut node = start(dir.path(), ip, ports);
    wait_ready(&client).await;
    client.keys().set(&KeyValuePairRequest::new("embedded", "yes")).await.unwrap();
    unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    let status = node.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean exit: {status}");

    let mut node = start(dir.path(), ip, ports);
    wait_ready(&client).await;
    assert_eq!(client.keys().get("embedded", &GetOptions::default()).await.unwrap().value, "yes");
    client.keys().set(&KeyValuePairRequest::new("after-restart", "also")).await.unwrap();
    let _ = node.kill();
    let _ = node.wait();
}
